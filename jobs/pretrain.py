"""Pretrain an NFNet on Ray Train + DeepSpeed ZeRO with AGC (SPEC §3-4).

    python jobs/pretrain.py --config configs/pretrain/nano.yaml [key=value ...]
    ray job submit --working-dir . -- python jobs/pretrain.py --config ... run.dir=/abs/or/gs/path
    python jobs/pretrain.py --config configs/pretrain/nfnet_f7plus.yaml --dry-run cluster.workers=64

Run as a plain script it starts a local Ray instance; under `ray job submit` it joins the
cluster. Re-running with the same run.dir resumes from the latest complete checkpoint.
"""

from __future__ import annotations

import sys

from pipeline.cli import job_parser, run_job
from pipeline.config import load_config
from pipeline.train.config import PretrainConfig
from pipeline.train.estimates.dryrun import dry_run, gpu_memory


def main(argv: list[str] | None = None) -> int:
    parser = job_parser(__doc__.splitlines()[0], "configs/pretrain/nano.yaml")
    parser.add_argument("--dry-run", action="store_true", help="validate and estimate; no training")
    parser.add_argument("--gpu-memory", type=gpu_memory, metavar="SIZE",
                        help="with --dry-run: the largest micro-batch per ZeRO stage that fits, e.g. 80GiB")  # fmt: skip
    args = parser.parse_args(argv)
    cfg = load_config(PretrainConfig, args.config, args.overrides)
    if args.dry_run:
        print(dry_run(cfg, gpu_memory=args.gpu_memory))
        return 0
    from pipeline.train.driver.launch import launch  # Ray and DeepSpeed load only for a real run

    summary = launch(cfg)
    print(f"pretrain: held-out loss {summary.heldout_loss:.4f} after {summary.steps} steps,"
          f" {summary.train_flops:.3g} FLOPs -> {summary.run_dir}/final")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))

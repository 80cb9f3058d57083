"""Fine-tune a pretrained NFNet with SAM at a higher resolution (SPEC §4-5).

    python jobs/finetune.py --config configs/finetune/nano.yaml [key=value ...]
    ray job submit --working-dir . -- python jobs/finetune.py --config ... init.from_run=gs://b/run

The pretraining loop with a pretrained start (init.from_run: a finished run's final/ weights,
a fresh head for the target classes), SAM with each worker ascending on its own gradient, and
held-out top-1 / top-5 at data.eval_resolution (higher than the training resolution). Same Ray
Train + DeepSpeed workers, checkpoints and resume: re-running with the same run.dir resumes.
"""

from __future__ import annotations

import sys

from pipeline.cli import job_parser, run_job
from pipeline.config import load_config
from pipeline.train.config import FinetuneConfig
from pipeline.train.estimates.dryrun import dry_run, gpu_memory


def main(argv: list[str] | None = None) -> int:
    parser = job_parser(__doc__.splitlines()[0], "configs/finetune/nano.yaml")
    parser.add_argument("--dry-run", action="store_true", help="validate and estimate; no training")
    parser.add_argument("--gpu-memory", type=gpu_memory, metavar="SIZE",
                        help="with --dry-run: the largest micro-batch per ZeRO stage that fits, e.g. 80GiB")  # fmt: skip
    args = parser.parse_args(argv)
    cfg = load_config(FinetuneConfig, args.config, args.overrides)
    if args.dry_run:
        print(dry_run(cfg, gpu_memory=args.gpu_memory))
        return 0
    from pipeline.train.driver.launch import launch  # Ray and DeepSpeed load only for a real run

    s = launch(cfg)
    ema = "" if s.heldout_top1_ema is None else f", EMA top-1 {s.heldout_top1_ema:.4f}"
    print(f"finetune: top-1 {s.heldout_top1:.4f}, top-5 {s.heldout_top5:.4f}, loss"
          f" {s.heldout_loss:.4f} at {s.eval_resolution} px{ema}; {s.steps} steps"
          f" at {s.resolution} px -> {s.run_dir}/final")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))

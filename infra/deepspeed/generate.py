"""Write infra/deepspeed/nfnet_f7plus_zero{1,2,3}.json from the code the training job runs.

    python infra/deepspeed/generate.py            # rewrite the three files
    python infra/deepspeed/generate.py --check    # exit 1 if a committed file differs

Each file is exactly `pipeline.train.worker.engine.deepspeed_config(...)` for
configs/pretrain/nfnet_f7plus.yaml: the batch layout from `solve_batch` (global 4096 = 64 workers
x 4 accumulation x 16 micro-batch), the precision from `resolved_precision` (bf16), and
`cluster.use_gpu`, with only the ZeRO stage varied. The job itself never reads these files (each
worker builds the same dict in memory); they are for reading, diffing and for launching DeepSpeed
by other means. tests/unit/test_infra.py fails when they drift from the code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pipeline.config import load_config  # noqa: E402
from pipeline.train.config import PretrainConfig, resolved_precision, solve_batch  # noqa: E402
from pipeline.train.worker.engine import deepspeed_config  # noqa: E402

CONFIG = ROOT / "configs" / "pretrain" / "nfnet_f7plus.yaml"
OUT = Path(__file__).resolve().parent
STAGES = (1, 2, 3)


def configs(config: Path = CONFIG) -> dict[str, dict]:
    """{file name: DeepSpeed config} for every ZeRO stage of the given pretraining config."""
    cfg = load_config(PretrainConfig, str(config))
    cl = cfg.cluster
    micro, accum = solve_batch(cfg.train, cl.workers)
    precision = resolved_precision(cfg.train, cl.use_gpu)
    return {
        f"{config.stem}_zero{stage}.json": deepspeed_config(
            micro, accum, cl.workers, stage, precision, cl.use_gpu
        )
        for stage in STAGES
    }


def render(ds_config: dict) -> str:
    return json.dumps(ds_config, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; write nothing")
    args = parser.parse_args(argv)
    stale = []
    for name, ds_config in configs().items():
        path = OUT / name
        text = render(ds_config)
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text)
    verb = "differ from the code" if args.check else "rewritten"
    print(
        f"deepspeed configs: {len(stale)} of {len(STAGES)} {verb}"
        + (f" ({', '.join(stale)})" if stale else "")
    )
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())

"""`make bench`: run every benchmark, print a Markdown summary, save JSON under runs/bench/.

python -m benchmarks.run [--only model_step,agc]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from benchmarks import (
    agc,
    data_plane,
    dedup_index,
    dedup_quality,
    dedup_scale,
    ema_update,
    loader,
    model_step,
    same_padding,
    scaling_fit,
    sweep_overhead,
    timm_nfnet,
    trainer_overhead,
    zero_step,
)

BENCHMARKS = {
    "model_step": model_step.run,
    "same_padding": same_padding.run,
    "agc": agc.run,
    "loader": loader.run,
    "data_plane": data_plane.run,
    "dedup_quality": dedup_quality.run,
    "dedup_index": dedup_index.run,
    "dedup_scale": dedup_scale.run,  # 1.33M references x 6 vectors: ~15 min, ~12 GB
    "zero_step": zero_step.run,
    "ema_update": ema_update.run,
    "trainer_overhead": trainer_overhead.run,
    "scaling_fit": scaling_fit.run,
    "sweep_overhead": sweep_overhead.run,
}
OPTIONAL = {"timm_nfnet": timm_nfnet.run}  # needs packages outside our dependencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset")
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    known = {**BENCHMARKS, **OPTIONAL}
    for name in args.only.split(","):
        if name not in known:
            raise SystemExit(f"error: unknown benchmark {name!r}; expected one of {sorted(known)}")
        result = {"benchmark": name, **known[name](), "env": env}
        (out / f"{name}.json").write_text(json.dumps(result, indent=2))
        print(f"## {name}")
        for k, v in result.items():
            if k not in ("benchmark", "env"):
                print(f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}")
    print(f"environment: {env}")


if __name__ == "__main__":
    main()

"""Parameter and multiply-accumulate counts of a registered model.

    python -m pipeline.models.summary nfnet_f7plus --res 224

Models are built on the meta device, so even F7+ is sized in a second without allocating memory.
MACs count convolutions and linear layers (torch's FLOP counter / 2), the convention of the
NFNet paper and timm; elementwise ops are excluded.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.models import create_model, list_models


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: torch.nn.Module, res: int, batch: int = 1) -> int:
    """Forward MACs of one batch at ``res`` x ``res``, on whatever device the model lives."""
    device = next(model.parameters()).device
    x = torch.empty(batch, 3, res, res, device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2


def summarize(name: str, res: int | None = None, num_classes: int = 1000) -> dict:
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes)
    cfg = getattr(model, "cfg", None)
    res = res or getattr(cfg, "test_res", 224)
    return {
        "model": name,
        "num_classes": num_classes,
        "params": count_parameters(model),
        "res": res,
        "macs": count_macs(model, res),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="registered model name (see --list)", nargs="?")
    parser.add_argument(
        "--res", type=int, default=None, help="input side in px (default: test res)"
    )
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--list", action="store_true", help="list registered models")
    args = parser.parse_args(argv)
    if args.list or args.name is None:
        print("\n".join(list_models()))
        return 0
    if args.res is not None and args.res < 8:
        print(f"error: --res must be >= 8 px, got {args.res}", file=sys.stderr)
        return 2
    try:
        s = summarize(args.name, args.res, args.num_classes)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{s['model']}: {s['params'] / 1e6:.2f}M params ({s['params']:,}), "
        f"{s['macs'] / 1e9:.2f} GMACs at {s['res']}px, {s['num_classes']} classes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Convert DeepMind's published NFNet weights, as timm ships them, into a file our runs start from.

    python jobs/convert_weights.py --source dm_nfnet_f0.safetensors --out weights/nfnet_f0.safetensors
    python jobs/finetune.py init.from_run=weights/nfnet_f0.safetensors model.name=nfnet_f0 \\
        model.padding=same data.train=... data.resolution=384

--source: timm's `dm_nfnet_f0`..`dm_nfnet_f6` state dict, a .safetensors file (the Hugging Face
hub's timm/dm_nfnet_f0.dm_in1k/model.safetensors) or a torch.save file (read weights-only), or
DeepMind's own release, F0_haiku.npz .. F6_haiku.npz (a pickle of numpy arrays, read with an
unpickler that admits nothing else); any fsspec URL. The output's header names the model, its
classes and padding=same: a run that starts from it must set model.padding=same (DeepMind
trained with TensorFlow's SAME padding).
"""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import run_job
from pipeline.config import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", required=True, help="timm dm_nfnet state dict or DeepMind *_haiku.npz"
    )
    parser.add_argument("--out", required=True, help="our .safetensors file")
    args = parser.parse_args(argv)
    from pipeline.models.timm_weights import convert_file

    try:
        meta = convert_file(args.source, args.out)
    except ValueError as e:
        raise UserError(f"--source {args.source}: {e}") from None
    print(f"{meta['model']} ({meta['classes']} classes, padding=same) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))

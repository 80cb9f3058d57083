"""Rival loaders that are not project dependencies, installed beside the run outputs.

mosaicml-streaming 0.13 declares torch, torchvision, transformers, numpy<2.2 and every cloud SDK
as dependencies; a plain install would pull a CUDA torch and downgrade numpy. So it goes into a
side folder with --no-deps, with only the small packages its reader imports (hashing and
compression codecs, a registry), and is imported with that folder at the end of sys.path:

    .venv/bin/python -m pip install -q --no-deps --target runs/bench/streaming-pkg \\
        -c infra/constraints-cpu.txt mosaicml-streaming==0.13.0 'xxhash<4' 'zstd<2' Brotli \\
        'python-snappy<1' cramjam 'catalogue<3'

numpy, torch, PIL, google-cloud-storage and boto3 come from the venv (newer than streaming pins;
the MDS write/read paths used here work with them). ``import streaming`` also imports its
ready-made vision/text/multimodal datasets and StreamingDataLoader, which need torchvision (PyPI
has only a CUDA build for Linux, unloadable beside the CPU torch) and transformers: none is used
by StreamingDataset or MDSWriter, so they are replaced by empty stand-in modules before import.
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STREAMING_DIR = ROOT / "runs" / "bench" / "streaming-pkg"
STREAMING_PACKAGES = [
    "mosaicml-streaming==0.13.0",
    "xxhash<4",
    "zstd<2",
    "Brotli",
    "python-snappy<1",
    "cramjam",
    "catalogue<3",
]
# Subpackages that ``streaming/__init__`` imports but a StreamingDataset over MDS never uses.
_UNUSED = (
    "streaming.vision",
    "streaming.text",
    "streaming.multimodal",
    "streaming.base.dataloader",
)


def install_streaming(target: Path = STREAMING_DIR) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
    cmd += ["-c", str(ROOT / "infra" / "constraints-cpu.txt"), *STREAMING_PACKAGES]
    subprocess.run(cmd, check=True)


class _NoDataLoader:
    def __init__(self, *args, **kwargs) -> None:
        raise RuntimeError("StreamingDataLoader needs transformers, not installed for the bench")


def ensure_streaming(target: Path = STREAMING_DIR) -> types.ModuleType:
    """Install mosaicml-streaming into ``target`` if missing, then import and return it."""
    if not (target / "streaming").is_dir():
        install_streaming(target)
    if str(target) not in sys.path:
        sys.path.append(str(target))  # last: never shadows a venv package
    if "streaming" not in sys.modules:
        for name in _UNUSED:
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules["streaming.base.dataloader"].StreamingDataLoader = _NoDataLoader
    import streaming

    return streaming

"""Build data/fashion-mnist/: real labelled photographs for the CPU configs.

Fashion-MNIST (Zalando, MIT): 70,000 product photos, 28x28 grey, 10 classes; 60,000 train and
10,000 test, which is our held-out split. Debian ships the four original IDX files in the
package `dataset-fashion-mnist`; `apt-get download` + `dpkg -x` fetch and unpack it with no root
and nothing installed system-wide. Where apt is missing, `idx_dir` names a folder with the four
files (from https://github.com/zalandoresearch/fashion-mnist).

deb/                          the package and its unpacked files (kept: a rebuild reuses them)
raw/{train,val}/<class>/*.jpg  the photos as an ImageNet-layout folder (RGB JPEG, q95)
shards/{train,val}/           WebDataset shards + manifests, written by the real ingest path
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import Field

from pipeline.config import Section, UserError
from pipeline.data.stamp import stamp_matches
from pipeline.ingest.run import IngestConfig, ingest

log = logging.getLogger(__name__)

PACKAGE = "dataset-fashion-mnist"
PACKAGE_DIR = "usr/share/datasets/fashion-mnist"
CLASSES = ("t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle_boot")  # fmt: skip
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}  # fmt: skip
FORMAT = 1  # bump when the folder layout or encoding changes: a rebuild then starts over


class FashionMnistConfig(Section):
    out: str = "data/fashion-mnist"
    # The first k photos of each class in file order; None: all (6,000 train, 1,000 val).
    train_per_class: int | None = Field(None, ge=1, le=6000)
    val_per_class: int | None = Field(None, ge=1, le=1000)
    idx_dir: str | None = None  # the four IDX .gz files, instead of Debian's package
    parallel_ingest: bool = True


def fetch_package(deb_dir: Path) -> Path:
    """The folder holding the IDX files of Debian's package, downloaded and unpacked once."""
    files = deb_dir / "x" / PACKAGE_DIR
    if all((files / f).exists() for pair in FILES.values() for f in pair):
        return files
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise UserError(
            f"apt-get/dpkg not found: Fashion-MNIST comes from Debian's {PACKAGE} package;"
            " expected a Debian-based machine, or idx_dir=<folder with the four IDX .gz files>"
        )
    deb_dir.mkdir(parents=True, exist_ok=True)
    got = subprocess.run(["apt-get", "download", PACKAGE], cwd=deb_dir, capture_output=True,
                         text=True)  # fmt: skip
    debs = sorted(deb_dir.glob(f"{PACKAGE}_*.deb"))
    if got.returncode != 0 or not debs:
        last = (got.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"apt-get download {PACKAGE} failed ({last}); expected the package from"
                        " Debian's registry (run `apt-get update` once), or idx_dir=<folder>")  # fmt: skip
    subprocess.run(["dpkg", "-x", str(debs[-1]), str(deb_dir / "x")], check=True)
    return files


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped): uint8 array of the shape its header gives."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\0\0" or data[2] != 0x08:
        raise UserError(f"{path} is not an IDX file of unsigned bytes")
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise UserError(f"{path}: {body.size} bytes of data for shape {shape}; the file is cut")
    return body.reshape(shape)


def _read_split(source: Path, image_file: str, label_file: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        images, labels = read_idx(source / image_file), read_idx(source / label_file)
    except FileNotFoundError as e:
        raise UserError(f"fashion-mnist: {e.filename} not found; expected the four IDX .gz"
                        f" files ({', '.join(f for p in FILES.values() for f in p)})") from None  # fmt: skip
    if images.ndim != 3 or images.shape[0] != labels.shape[0] or labels.max() >= len(CLASSES):
        raise UserError(f"fashion-mnist: {image_file} and {label_file} do not match;"
                        f" expected N images of HxW and N labels < {len(CLASSES)}")  # fmt: skip
    return images, labels


def _first_per_class(labels: np.ndarray, k: int | None) -> np.ndarray:
    if k is None:
        return np.arange(labels.size)
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:k] for c in range(len(CLASSES))]))


def _write_split(images: np.ndarray, labels: np.ndarray, keep: np.ndarray, folder: Path) -> None:
    for c in CLASSES:
        (folder / c).mkdir(parents=True, exist_ok=True)
    for i in keep.tolist():
        buf = io.BytesIO()
        Image.fromarray(images[i]).convert("RGB").save(buf, "JPEG", quality=95)
        (folder / CLASSES[labels[i]] / f"{i:05d}.jpg").write_bytes(buf.getvalue())


def fashion_mnist_identity(cfg: FashionMnistConfig) -> dict:
    return {"train_per_class": cfg.train_per_class, "val_per_class": cfg.val_per_class,
            "format": FORMAT}  # fmt: skip


def fashion_mnist_ready(cfg: FashionMnistConfig) -> bool:
    """True when cfg.out holds shards built with these settings."""
    return stamp_matches(Path(cfg.out) / "fashion_mnist.json", fashion_mnist_identity(cfg))


def build_fashion_mnist(cfg: FashionMnistConfig) -> Path:
    """data/fashion-mnist/shards/{train,val}; does nothing when built before with these settings."""
    root = Path(cfg.out)
    stamp = root / "fashion_mnist.json"
    if fashion_mnist_ready(cfg):
        log.info(f"fashion-mnist: up to date in {root}")
        return root
    start = time.perf_counter()
    source = Path(cfg.idx_dir) if cfg.idx_dir else fetch_package(root / "deb")
    splits = {split: _read_split(source, *names) for split, names in FILES.items()}
    stamp.unlink(missing_ok=True)  # read and checked: only now is an older build replaced
    for old in ("raw", "shards"):
        shutil.rmtree(root / old, ignore_errors=True)
    counts = {}
    for split, (images, labels) in splits.items():
        per_class = cfg.train_per_class if split == "train" else cfg.val_per_class
        _write_split(images, labels, _first_per_class(labels, per_class), root / "raw" / split)
        manifest = ingest(IngestConfig(input=str(root / "raw" / split),
                                       output=str(root / "shards" / split), prefix=split,
                                       shard_bytes=2**20, parallel=cfg.parallel_ingest))  # fmt: skip
        counts[split] = manifest.num_samples
    stamp.write_text(json.dumps({**fashion_mnist_identity(cfg), "samples": counts}, indent=1))
    log.info(f"fashion-mnist: {counts['train']} train, {counts['val']} held-out photos,"
             f" {len(CLASSES)} classes, {time.perf_counter() - start:.0f}s -> {root}")  # fmt: skip
    return root

"""Fashion-MNIST's IDX files (pipeline/data/fashion_mnist.py): read as the format says, and bad
or missing files refused in one line before anything is written."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from pipeline.config import UserError
from pipeline.data.fashion_mnist import FILES, FashionMnistConfig, build_fashion_mnist, read_idx


def _idx(path, array: np.ndarray, cut: int = 0) -> None:
    head = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    body = array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(head + body[: len(body) - cut]))


def test_idx_files_read_as_their_header_says_and_a_cut_one_is_refused(tmp_path):
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 251
    _idx(tmp_path / "ok.gz", images)
    assert (read_idx(tmp_path / "ok.gz") == images).all()
    _idx(tmp_path / "cut.gz", images, cut=10)
    with pytest.raises(UserError, match="the file is cut"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "text.gz").write_bytes(gzip.compress(b"hello world"))
    with pytest.raises(UserError, match="not an IDX file"):
        read_idx(tmp_path / "text.gz")


def test_a_folder_without_the_idx_files_is_one_line_and_writes_nothing(tmp_path):
    cfg = FashionMnistConfig(out=str(tmp_path / "fm"), idx_dir=str(tmp_path / "empty"))
    with pytest.raises(UserError) as info:
        build_fashion_mnist(cfg)
    assert f"{FILES['train'][0]} not found; expected the four IDX .gz files" in str(info.value)
    assert "\n" not in str(info.value) and not (tmp_path / "fm" / "shards").exists()

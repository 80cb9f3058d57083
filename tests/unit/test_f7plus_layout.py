"""The memory estimate refuses, in one line before Ray starts, an NFNet-F7+ layout that would
not fit (the F7+ run itself: tests/chaos/test_f7plus_smoke.py)."""

from __future__ import annotations

import pytest

from pipeline.config import UserError, load_config
from pipeline.train.config import PretrainConfig
from pipeline.train.driver.launch import preflight

CONFIG = "configs/pretrain/nfnet_f7plus_smoke.yaml"


def test_a_layout_that_would_not_fit_is_refused_in_one_line_before_ray_starts(tiny_data, tmp_path):
    """F7+ without ZeRO at 224 px and 1024 images per micro-batch: about 150 GiB per worker,
    more than any machine this runs on has."""
    cfg = load_config(PretrainConfig, CONFIG, [
        f"data.train={tiny_data / 'train'}", f"data.val={tiny_data / 'val'}",
        f"run.dir={tmp_path / 'run'}", "cluster.zero_stage=0", "data.resolution=224",
        "train.global_batch=2048", "train.micro_batch=1024"])  # fmt: skip
    with pytest.raises(UserError) as e:
        preflight(cfg)
    line = str(e.value)
    assert "\n" not in line and line.startswith(
        "nfnet_f7plus (ZeRO-0, fp32, 2 workers) needs about"
    )
    assert "GiB for the 2 worker(s) on this machine, which has" in line
    assert "expected a run that fits" in line
    assert not (tmp_path / "run").exists()  # refused before anything was written

"""The chain's fine-tune is built from the sweep's best point: its model, its checkpoint and its
padding (a checkpoint trained with padding=same is refused by a fine-tune without it)."""

from __future__ import annotations

import pytest

from pipeline.chain.config import ChainConfig
from pipeline.chain.run import Chain
from pipeline.sweep.results import PointResult


@pytest.mark.parametrize("padding", [None, "same"])
def test_the_fine_tune_takes_the_best_points_model_and_padding(padding, tmp_path):
    model = {} if padding is None else {"model": {"padding": padding}}
    cfg = ChainConfig(out=str(tmp_path / "demo"), data={"out": str(tmp_path / "data")},
                      sweep={"sweep": {"models": ["nfnet_nano0", "nfnet_nano1"]}, "pretrain": model})  # fmt: skip
    chain = Chain(cfg)
    best = PointResult(status="finished", point="nfnet_nano1-e1-lr1", model="nfnet_nano1",
                       run_dir=str(tmp_path / "demo/sweep/runs/nfnet_nano1-e1-lr1"))  # fmt: skip
    ft = chain.finetune_config(best, "", "")
    assert ft.model.name == "nfnet_nano1" and ft.model.padding == padding
    assert ft.init.from_run == best.run_dir
    assert ft.run.dir == str(tmp_path / "demo" / "finetune" / best.point)

"""Resuming never runs code from a checkpoint: DeepSpeed reads its own files with full pickle
(`torch.load(weights_only=False)`), and pipeline/train/worker/checkpoint.py forces torch's weights-only
unpickler on it. A file whose pickle would run a command is refused through DeepSpeed's own
loader; without the guard the same file runs it (so the test can fail). Genuine ZeRO checkpoints
load under the guard in every resume test (tests/e2e/test_pretrain.py,
tests/chaos/test_pretrain_faults.py)."""

import os
import pickle

import pytest
import torch

from pipeline.train.worker.checkpoint import weights_only_loads


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    marker, path = tmp_path / "ran", tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": {"w": torch.ones(2)}, "extra": _Payload(marker)}, path)
    loader = TorchCheckpointEngine()
    with weights_only_loads(), pytest.raises(pickle.UnpicklingError, match=r"GLOBAL posix\.system"):
        loader.load(str(path), map_location="cpu")
    assert not marker.exists(), "code from the checkpoint ran"
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") is None  # the guard is scoped

    loader.load(str(path), map_location="cpu")  # DeepSpeed's default: the pickle runs
    assert marker.exists()

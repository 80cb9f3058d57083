"""DeepMind's NFNets through timm (`dm_nfnet_f0`, `dm_nfnet_f1`) mapped onto ours compute the same
logits, to 1e-4 relative, with padding="same" and timm's epsilon convention; the symmetric
padding does not (DeepMind's strided convs pad after only). The converted file is what
init.from_run takes, and a run that would read it with the wrong padding is one line.

timm comes from `make timm` (runs/bench/timm-pkg, no dependencies); the weights are timm's
random init with every gain, bias and skip gain drawn away from its init value, so that each
layer and branch shows in the logits (published weights are not downloadable here)."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import UserError
from pipeline.models import create_model
from pipeline.models.timm_weights import convert_file, from_timm
from pipeline.testing.timm import TIMM_DIR, import_timm
from pipeline.train.config import InitSection
from pipeline.train.worker.warmstart import check_source, load_weights

TIMM_CONVENTION = {"padding": "same", "ws_eps": 1e-5, "ws_eps_per_variance": True}


@pytest.fixture(scope="module")
def timm():
    try:
        return import_timm()
    except ImportError:
        pytest.skip(f"timm is not installed in {TIMM_DIR}: run `make timm`")


def _reference(timm, variant: str, classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(variant, num_classes=classes).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("skipinit_gain"):  # 0 at init: the residual branches would vanish
                p.uniform_(0.3, 1.0, generator=g)
            elif name.endswith("gain"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.startswith("head"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("variant,ours", [("dm_nfnet_f0", "nfnet_f0"), ("dm_nfnet_f1", "nfnet_f1")])
def test_our_nfnet_computes_timms_logits_from_its_weights(timm, variant, ours):
    reference = _reference(timm, variant)
    name, state = from_timm(reference.state_dict())
    assert name == ours
    g = torch.Generator().manual_seed(2)
    for size in (64, 71):  # even and odd inputs: SAME pads each differently
        x = torch.randn(2, 3, size, size, generator=g)
        with torch.no_grad():
            want = reference(x)
            same = create_model(name, num_classes=10, **TIMM_CONVENTION).eval()
            same.load_state_dict(state)
            assert _relative(same(x), want) <= 1e-4, (variant, size)
            # The check can fail: the symmetric padding is 1e-2 or more away (measured 0.29, 0.62)
            symmetric = create_model(name, num_classes=10, ws_eps=1e-5, ws_eps_per_variance=True)
            symmetric.load_state_dict(state)
            assert _relative(symmetric.eval()(x), want) > 1e-2


def test_the_converted_file_starts_a_run_with_same_padding_only(timm, tmp_path):
    reference = _reference(timm, "dm_nfnet_f0", classes=7)
    source = tmp_path / "dm_nfnet_f0.pth"
    torch.save(reference.state_dict(), source)
    out = str(tmp_path / "weights" / "nfnet_f0.safetensors")
    meta = convert_file(str(source), out)
    assert meta["model"] == "nfnet_f0" and meta["classes"] == "7" and meta["padding"] == "same"

    init = InitSection(from_run=out, keep_head=True)
    assert check_source(init, "nfnet_f0", 7, "same") == out
    with pytest.raises(UserError, match=r"padding=same but model\.padding=symmetric; expected"):
        check_source(init, "nfnet_f0", 7, None)
    with pytest.raises(UserError, match=r"holds nfnet_f0 weights but model\.name=nfnet_f1"):
        check_source(init, "nfnet_f1", 7, "same")

    model = create_model("nfnet_f0", num_classes=7, padding="same").eval()
    assert load_weights(model, out, keep_head=True) == []
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # DeepMind's epsilon here, timm's in the reference: close, not equal
        assert _relative(model(x), reference(x)) < 0.1


def test_a_state_dict_that_is_not_a_dm_nfnet_is_one_line(timm, tmp_path):
    with pytest.raises(ValueError, match="not a timm dm_nfnet state dict"):
        from_timm(timm.create_model("resnet18").state_dict())
    state = _reference(timm, "dm_nfnet_f0").state_dict()
    state.pop("stages.2.3.conv2b.weight")
    with pytest.raises(
        ValueError, match=r"lacks 1 of nfnet_f0's tensors, e\.g\. blocks\.6\.conv2b"
    ):
        from_timm(state)
    with pytest.raises(ValueError, match=r"expected a \.safetensors path"):
        convert_file(str(tmp_path / "x.pth"), str(tmp_path / "out.pt"))

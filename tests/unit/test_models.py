"""Model registry, architecture numbers (SPEC §2) and the standard model API."""

import pytest
import torch

from pipeline.models import create_model, list_models
from pipeline.models.nfnet import VARIANTS, NFNet, bottleneck_width
from pipeline.models.summary import count_macs, count_parameters

# SPEC §2: (params with 1000 classes, MACs at the test resolution, rel. tolerance on params)
SPEC = {
    "nfnet_f0": (71.5e6, 12.38e9, 0.001),
    "nfnet_f1": (132.6e6, 35.54e9, 0.001),
    "nfnet_f2": (193.8e6, 62.59e9, 0.001),
    "nfnet_f3": (254.9e6, 114.76e9, 0.001),
    "nfnet_f4": (316.1e6, 215.24e9, 0.001),
    "nfnet_f5": (377.2e6, 289.76e9, 0.001),
    "nfnet_f6": (438.4e6, 377.28e9, 0.001),
    "nfnet_f7": (499.5e6, None, 0.01),
    "nfnet_f3plus": (423.4e6, None, 0.01),
    "nfnet_f7plus": (829.6e6, None, 0.01),
}


def test_registry_lists_every_family():
    names = list_models()
    for n in [f"nfnet_f{k}" for k in range(8)] + ["nfnet_f3plus", "nfnet_f7plus"]:
        assert n in names
    assert {"nfnet_nano0", "nfnet_nano1", "nfnet_nano3", "nfnet_nano7"} <= set(names)
    assert "resnet50" in names and "resnet_nano" in names
    assert list_models("resnet") == ["resnet50", "resnet_nano", "seresnet50"]


@pytest.mark.parametrize("name", sorted(SPEC))
def test_param_and_mac_counts_match_spec(name):
    want_params, want_macs, tol = SPEC[name]
    with torch.device("meta"):
        model = create_model(name, num_classes=1000)
    params = count_parameters(model)
    assert abs(params / want_params - 1) < tol, f"{name}: {params:,} params vs {want_params:,.0f}"
    if want_macs is not None:
        macs = count_macs(model, VARIANTS[name].test_res)
        assert abs(macs / want_macs - 1) < 0.01, f"{name}: {macs:,} MACs vs {want_macs:,.0f}"


def test_f_variant_table():
    assert VARIANTS["nfnet_f0"].depths == (1, 2, 6, 3)
    assert VARIANTS["nfnet_f7"].depths == (8, 16, 48, 24)
    assert VARIANTS["nfnet_f7plus"].widths == (384, 768, 2048, 2048)
    assert (VARIANTS["nfnet_f4"].train_res, VARIANTS["nfnet_f4"].test_res) == (384, 512)
    assert VARIANTS["nfnet_f2"].drop_rate == 0.4


def test_nano_depths_double_like_f_family():
    for nano, f in [("nano0", "f0"), ("nano1", "f1"), ("nano3", "f3"), ("nano7", "f7")]:
        assert VARIANTS[f"nfnet_{nano}"].depths == VARIANTS[f"nfnet_{f}"].depths
    sizes = [count_parameters(create_model(f"nfnet_nano{k}", num_classes=10)) for k in (0, 1, 3, 7)]
    assert sizes == sorted(sizes) and sizes[-1] > 4 * sizes[0]


def test_block_structure_f0():
    with torch.device("meta"):
        m = create_model("nfnet_f0")
    assert [c.out_channels for c in m.stem] == [16, 32, 64, 128]
    assert [c.stride[0] for c in m.stem] == [2, 1, 1, 2]
    first, last = m.blocks[0], m.blocks[-1]
    # mid = out/2 rounded to groups of 128; the grouped convs use group width 128.
    assert bottleneck_width(1536, 0.5, 128) == 768 and last.conv2.groups == 6
    assert first.conv2.groups == 1 and first.shortcut is not None and first.stride == 1
    assert m.blocks[1].shortcut is not None and m.blocks[1].stride == 2  # stage-2 transition
    assert m.blocks[2].shortcut is None
    assert last.se.fc1.out_features == 768
    assert m.final_conv.out_channels == 3072 and m.fc.in_features == 3072
    # Stochastic depth ramps linearly from 0 over the blocks.
    rates = [b.drop_path_rate for b in m.blocks]
    assert rates[0] == 0 and rates == sorted(rates) and rates[-1] < 0.25


def test_beta_bookkeeping_resets_after_transition_blocks():
    """Input variance of block k of a stage is 1 + k*a^2; a stage's first block sees what the
    previous stage grew to after its own reset: 1 + depth_prev*a^2 (the very first sees 1)."""
    m = create_model("nfnet_nano1", num_classes=10)
    a2 = m.cfg.alpha**2
    want, prev_depth = [], None
    for depth in m.cfg.depths:
        want.append(1.0 if prev_depth is None else 1 + prev_depth * a2)
        want.extend(1 + k * a2 for k in range(1, depth))
        prev_depth = depth
    assert m.expected_variances() == pytest.approx(want)
    assert [b.beta for b in m.blocks] == pytest.approx([v**-0.5 for v in want])


def _big(name: str) -> bool:
    return name.startswith("nfnet_f") and name not in ("nfnet_f0", "nfnet_f1", "nfnet_f2")


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if _big(n) else n for n in list_models()]
)
def test_forward_backward_every_model_gets_finite_gradients(name):
    """Every parameter is reached by the loss. SkipInit gains (NFNet) and the zero-initialised last
    BN gamma (ResNet) would zero every residual-branch gradient at init, so they start at 1 here;
    stochastic depth and dropout, which zero whole samples at random, are off."""
    big = name.startswith("nfnet_f")
    if name.startswith("nfnet"):
        kwargs = {"skipinit_init": 1.0, "stochdepth_rate": 0.0, "drop_rate": 0.0}
    else:
        kwargs = {"zero_init_last_bn": False}
    model = create_model(name, num_classes=7, **kwargs).train()
    res, batch = (32, 2) if big else (48, 3)
    x = torch.randn(batch, 3, res, res)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([1, 2, 3][:batch]))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}.{pname} gradient is identically zero"


def test_classifier_init_and_reset():
    m = create_model("nfnet_nano0", num_classes=1000)
    w = m.get_classifier().weight
    assert abs(w.std().item() - 0.01) < 0.001 and m.fc.bias.abs().max() == 0
    m.reset_classifier(5)
    assert m.get_classifier().out_features == 5 and m.num_classes == 5
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    feats = m.forward_features(torch.randn(2, 3, 32, 32))
    assert feats.shape[1] == m.num_features
    assert m.forward_head(feats, pre_logits=True).shape == (2, m.num_features)


def test_overrides_and_bad_names_fail_with_one_clear_line():
    m = create_model("nfnet_nano0", num_classes=3, drop_rate=0.0, stochdepth_rate=0.1)
    assert isinstance(m, NFNet) and m.cfg.drop_rate == 0.0
    with pytest.raises(ValueError, match="unknown model 'nfnet_f9'"):
        create_model("nfnet_f9")
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['dropout'\]"):
        create_model("nfnet_f0", dropout=0.1)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("nfnet_f0", num_classes=0)


def test_eval_mode_is_deterministic_and_train_mode_is_stochastic():
    m = create_model("nfnet_nano0", num_classes=4, skipinit_init=1.0, drop_rate=0.5)
    x = torch.randn(4, 3, 32, 32)
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(x), m(x))
    m.train()
    with torch.no_grad():
        assert not torch.equal(m(x), m(x))  # dropout + stochastic depth are active


def test_activation_checkpointing_gives_the_same_loss_and_gradients_bit_for_bit():
    """Recomputed blocks redraw the same stochastic-depth and dropout masks (the RNG state is
    replayed), so training with checkpointing is the same computation."""

    def run(checkpointing: bool, masks: int = 7) -> tuple[torch.Tensor, dict]:
        torch.manual_seed(0)
        model = create_model("nfnet_nano0", num_classes=5, stochdepth_rate=0.5, drop_rate=0.3)
        model.set_grad_checkpointing(checkpointing)
        x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(masks)
        loss = torch.nn.functional.cross_entropy(model.train()(x), torch.tensor([0, 1, 2, 3]))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    (plain_loss, plain), (ckpt_loss, ckpt) = run(False), run(True)
    assert torch.equal(plain_loss, ckpt_loss)
    assert plain.keys() == ckpt.keys()
    for name in plain:
        assert torch.equal(plain[name], ckpt[name]), name
    _, other = run(False, masks=8)  # other masks, other gradients: the comparison can fail
    assert any(not torch.equal(plain[n], other[n]) for n in plain)

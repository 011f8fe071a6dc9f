"""OFT behaviour beyond the conformance suite: block sizing, rotation conventions, dropout, convolutions, merging."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import peftkit
from peftkit.testing import make_inputs, make_model
from peftkit_oft.config import OFTConfig, nearest_divisor
from peftkit_oft.layer import OFTLayer
from peftkit_oft.rotation import cayley, cayley_neumann, project, skew


def _layers(model: nn.Module) -> list[OFTLayer]:
    return [m for m in model.modules() if isinstance(m, OFTLayer)]


def _run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


# --- config and block sizing --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "wanted", "expected"),
    [
        (16, 5, 4),
        (16, 6, 4),
        (16, 7, 8),
        (27, 4, 3),
        (27, 6, 3),
        (27, 7, 9),
        (30, 4, 3),
        (12, 40, 12),
        (13, 5, 1),
        (32, 32, 32),
    ],
)
def test_nearest_divisor(n: int, wanted: int, expected: int) -> None:
    assert nearest_divisor(n, wanted) == expected


def test_block_size_is_adjusted_per_layer_with_a_warning() -> None:
    with pytest.warns(UserWarning) as record:
        model = peftkit.get_peft_model(
            make_model("mlp"), peftkit.config("oft", target_modules=["lin0", "lin1"], oft_block_size=6)
        )
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert "oft_block_size=6 does not divide the 16 input features of lin0" in messages[0]
    assert "nearest divisor oft_block_size=4 (r=4)" in messages[0]
    assert "oft_block_size=6 does not divide the 32 input features of lin1" in messages[1]
    lin0, lin1 = _layers(model)
    assert (lin0.r["default"], lin0.oft_block_size["default"]) == (4, 4)
    # 6 does not divide lin1's 32 features either; 4 and 8 are equally near and the smaller wins.
    assert (lin1.r["default"], lin1.oft_block_size["default"]) == (8, 4)
    assert lin0.oft_R["default"].weight.shape == (4, 6)


def test_r_is_adjusted_with_a_warning() -> None:
    with pytest.warns(UserWarning, match=r"r=5 does not divide the 32 .*lin1.*r=4 \(oft_block_size=8\)"):
        model = peftkit.get_peft_model(
            make_model("mlp"), peftkit.config("oft", target_modules=["lin1"], r=5, oft_block_size=0)
        )
    (lin1,) = _layers(model)
    assert lin1.oft_R["default"].weight.shape == (4, 28)


def test_divisible_sizes_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        peftkit.get_peft_model(
            make_model("mlp"), peftkit.config("oft", target_modules=["lin0"], oft_block_size=8)
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"r": 0, "oft_block_size": 0}, "exactly one of r"),
        ({"r": 4, "oft_block_size": 8}, "exactly one of r"),
        ({"r": -2, "oft_block_size": 0}, "non-negative integer"),
        ({"module_dropout": 1.0}, r"module_dropout must be in \[0, 1\)"),
        ({"eps": 0.0}, "eps"),
        ({"num_cayley_neumann_terms": 0}, "num_cayley_neumann_terms"),
        ({"init_weights": "orthogonal"}, "init_weights"),
        ({"bias": "lora_only"}, "bias"),
    ],
)
def test_bad_config_is_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(peftkit.ConfigError, match=match):
        peftkit.config("oft", target_modules=["lin0"], **kwargs)


def test_block_size_one_is_refused_and_model_unchanged() -> None:
    model = make_model("mlp")
    with pytest.raises(peftkit.ConfigError, match="leaves no rotation to learn"):
        peftkit.get_peft_model(model, peftkit.config("oft", target_modules=["lin0"], r=16, oft_block_size=0))
    assert not _layers(model)


def test_grouped_conv_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(peftkit.ConfigError, match="grouped Conv2d"):
        peftkit.get_peft_model(model, peftkit.config("oft", target_modules=["0"], oft_block_size=6))


# --- the rotation ---------------------------------------------------------------------------------
def test_skew_fills_the_upper_triangle_row_major() -> None:
    q = skew(torch.tensor([[1.0, 2.0, 3.0]]), 3)[0]
    torch.testing.assert_close(q, torch.tensor([[0.0, 1.0, 2.0], [-1.0, 0.0, 3.0], [-2.0, -3.0, 0.0]]))


def test_cayley_is_orthogonal_and_neumann_approximates_its_transpose() -> None:
    gen = torch.Generator().manual_seed(0)
    q = skew(0.05 * torch.randn(3, 28, generator=gen, dtype=torch.float64), 8)
    exact = cayley(q)
    eye = torch.eye(8, dtype=torch.float64).expand(3, 8, 8)
    torch.testing.assert_close(exact @ exact.transpose(1, 2), eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(exact, (eye - q) @ torch.linalg.inv(eye + q))
    # Hugging Face PEFT's series is that of (I + Q)(I - Q)^-1, the transpose of the exact form.
    torch.testing.assert_close(cayley_neumann(q, 30), exact.transpose(1, 2), atol=1e-10, rtol=0)
    assert (cayley_neumann(q, 30) - exact).abs().max() > 1e-2


def test_neumann_terms_follow_peft() -> None:
    q = skew(torch.randn(2, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64), 4)
    eye = torch.eye(4, dtype=torch.float64)
    q2, q3, q4 = q @ q, q @ q @ q, q @ q @ q @ q
    torch.testing.assert_close(cayley_neumann(q, 1), eye.expand(2, 4, 4))
    torch.testing.assert_close(cayley_neumann(q, 2), eye + 2 * q)
    # Three and four terms give the same series there (I + 2Q + 2Q^2 + Q^3).
    torch.testing.assert_close(cayley_neumann(q, 3), eye + 2 * q + 2 * q2 + q3)
    torch.testing.assert_close(cayley_neumann(q, 4), eye + 2 * q + 2 * q2 + q3)
    torch.testing.assert_close(cayley_neumann(q, 5), eye + 2 * q + 2 * q2 + 2 * q3 + q4)


def test_coft_projection() -> None:
    q = skew(torch.randn(4, 6, generator=torch.Generator().manual_seed(2)), 4)
    radius = 0.1 / math.sqrt(4)
    out = project(q, 0.1)
    norms = torch.linalg.matrix_norm(out)
    torch.testing.assert_close(norms, torch.full((4,), radius))
    torch.testing.assert_close(out / norms[:, None, None], q / torch.linalg.matrix_norm(q)[:, None, None])
    small = q * (0.5 * radius / torch.linalg.matrix_norm(q)[:, None, None])
    assert torch.equal(project(small, 0.1), small), "a block inside the ball must be left as it is"


def test_coft_trains_from_identity_with_finite_gradients() -> None:
    model = peftkit.get_peft_model(
        make_model("mlp"),
        peftkit.config("oft", target_modules=["lin0"], oft_block_size=4, coft=True, eps=1e-3),
    )
    model.train()
    model(make_inputs("mlp")).pow(2).mean().backward()
    grad = _layers(model)[0].oft_R["default"].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 0


# --- module_dropout ---------------------------------------------------------------------------------
@pytest.mark.parametrize("block_share", [False, True])
def test_module_dropout_replaces_whole_blocks_by_identity_in_training_only(block_share: bool) -> None:
    config = peftkit.config(
        "oft",
        target_modules=["lin1"],
        oft_block_size=2,
        module_dropout=0.5,
        init_weights=False,
        block_share=block_share,
    )
    torch.manual_seed(0)
    model = peftkit.get_peft_model(make_model("mlp"), config)
    rotation = _layers(model)[0].oft_R["default"]
    full = rotation.blocks()
    eye = torch.eye(2)
    dropped = 0
    for _ in range(50):
        blocks = rotation.blocks(train_dropout=True)
        is_eye = torch.tensor([torch.equal(b, eye) for b in blocks])
        kept = torch.tensor([torch.equal(b, f) for b, f in zip(blocks, full, strict=True)])
        assert bool((is_eye | kept).all()), "a block is neither dropped to identity nor left as it is"
        dropped += int(is_eye.sum())
    assert 0.4 < dropped / (50 * 16) < 0.6

    x = make_inputs("mlp")
    model.eval()
    eval_out = _run(model, x)
    assert torch.equal(_run(model, x), eval_out), "dropout acted in eval mode"
    model.train()
    with torch.no_grad():
        train_outs = [model(x) for _ in range(3)]
    assert all(not torch.allclose(out, eval_out) for out in train_outs), "dropout did not act in training"
    assert not torch.allclose(train_outs[0], train_outs[1])


# --- layer kinds ------------------------------------------------------------------------------------
def test_gpt2_conv1d_rotates_like_the_equivalent_linear() -> None:
    """The view handles GPT-2's transposed weight: OFT on Conv1D equals OFT on a Linear holding the same weights."""
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv1d = Conv1D(nf=12, nx=16)
    linear = nn.Linear(16, 12)
    with torch.no_grad():
        linear.weight.copy_(conv1d.weight.T)
        linear.bias.copy_(conv1d.bias)
    config = peftkit.config("oft", target_modules=["0"], oft_block_size=4, init_weights=False)
    torch.manual_seed(1)
    a = peftkit.get_peft_model(nn.Sequential(conv1d), config)
    torch.manual_seed(1)
    b = peftkit.get_peft_model(nn.Sequential(linear), config)
    x = torch.randn(3, 16)
    _same = torch.testing.assert_close
    _same(_run(a, x), _run(b, x))
    _same(_run(a.merge_and_unload(), x), _run(b.merge_and_unload(), x), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "conv_kwargs",
    [
        {"kernel_size": 3},
        {"kernel_size": 3, "padding": 1, "stride": 2},
        {"kernel_size": (3, 2), "dilation": 2, "padding": 2},
        {"kernel_size": 3, "padding": 1, "padding_mode": "reflect"},
    ],
    ids=["plain", "stride-padding", "rect-dilation", "reflect"],
)
@pytest.mark.parametrize("exact", [False, True], ids=["neumann", "cayley"])
def test_conv2d_unmerged_equals_merged_for_inputs_larger_than_the_kernel(
    conv_kwargs: dict, exact: bool
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 5, **conv_kwargs))
    config = peftkit.config(
        "oft", target_modules=["0"], r=2, oft_block_size=0, init_weights=False, use_cayley_neumann=not exact
    )
    base_out = _run(model, torch.randn(2, 4, 11, 9))
    peft_model = peftkit.get_peft_model(model, config)
    x = torch.randn(2, 4, 11, 9)
    unmerged = _run(peft_model, x)
    assert unmerged.shape[-2] > 1 and unmerged.shape[-1] > 1 and unmerged.shape == base_out.shape
    merged = _run(peft_model.merge_and_unload(), x)
    torch.testing.assert_close(unmerged, merged, atol=1e-5, rtol=0)


def test_conv2d_rotates_every_input_patch() -> None:
    """Independent check by im2col: each patch (channel-major, then kernel rows and columns) is rotated, ``p -> p R``."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, stride=2)
    weight, bias = conv.weight.detach().clone(), conv.bias.detach().clone()
    model = peftkit.get_peft_model(
        nn.Sequential(conv), peftkit.config("oft", target_modules=["0"], oft_block_size=9, init_weights=False)
    )
    rot = torch.block_diag(*_layers(model)[0].oft_R["default"].blocks().detach())
    x = torch.randn(2, 3, 8, 8)
    patches = F.unfold(x, 3, padding=1, stride=2)  # (B, 27, L)
    expected = (patches.transpose(1, 2) @ rot @ weight.reshape(4, -1).T).transpose(1, 2) + bias[:, None]
    torch.testing.assert_close(_run(model, x), expected.reshape(2, 4, 4, 4), atol=1e-5, rtol=0)


def test_embedding_rotates_looked_up_vectors() -> None:
    torch.manual_seed(0)
    emb = nn.Embedding(10, 8)
    table = emb.weight.detach().clone()
    model = peftkit.get_peft_model(
        nn.Sequential(emb), peftkit.config("oft", target_modules=["0"], oft_block_size=4, init_weights=False)
    )
    layer = _layers(model)[0]
    assert "default" in layer.oft_embedding_R and "default" not in layer.oft_R
    rot = torch.block_diag(*layer.oft_embedding_R["default"].blocks().detach())
    ids = torch.tensor([[1, 5, 9]])
    torch.testing.assert_close(_run(model, ids), (table @ rot)[ids])


# --- merging ----------------------------------------------------------------------------------------
def test_neumann_unmerge_is_a_true_inverse() -> None:
    """A Neumann rotation is far from orthogonal for large generators: unmerging with its transpose would be wrong."""
    model = make_model("mlp")
    original = model.lin1.weight.detach().clone()
    peft_model = peftkit.get_peft_model(
        model, peftkit.config("oft", target_modules=["lin1"], oft_block_size=8, init_weights=False)
    )
    layer = _layers(peft_model)[0]
    with torch.no_grad():
        layer.oft_R["default"].weight.mul_(4.0)
    rot = layer.oft_R["default"].blocks().detach()
    eye = torch.eye(8).expand_as(rot)
    assert (rot @ rot.transpose(1, 2) - eye).abs().max() > 0.1, (
        "the test needs a clearly non-orthogonal rotation"
    )
    peft_model.merge_adapter()
    assert not torch.allclose(model.lin1.base_layer.weight, original, atol=1e-3)
    peft_model.unmerge_adapter()
    torch.testing.assert_close(layer.base_layer.weight, original, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_name", ["mlp", "emb_conv1d", "conv2d"])
def test_several_active_adapters_compose_like_merging_them(model_name: str) -> None:
    targets = {"mlp": ["lin0", "lin1"], "emb_conv1d": ["emb", "conv1d"], "conv2d": ["conv"]}[model_name]
    size = 9 if model_name == "conv2d" else 4
    config = peftkit.config("oft", target_modules=targets, oft_block_size=size, init_weights=False)
    torch.manual_seed(0)
    model = peftkit.get_peft_model(make_model(model_name), config)
    torch.manual_seed(1)
    model.add_adapter("other", config.replace(use_cayley_neumann=False))
    model.set_adapter(["default", "other"])
    x = make_inputs(model_name)
    both = _run(model, x)
    model.set_adapter("default")
    assert not torch.allclose(_run(model, x), both, atol=1e-4), "the second adapter changed nothing"
    model.set_adapter(["default", "other"])
    model.merge_adapter(adapter_names=["default"])  # one merged, one still applied in forward
    torch.testing.assert_close(_run(model, x), both, atol=1e-5, rtol=0)
    torch.testing.assert_close(_run(model.merge_and_unload(), x), both, atol=1e-5, rtol=0)


def test_half_precision_adapter_weights_compute_in_float32() -> None:
    model = make_model("mlp").to(torch.bfloat16)
    peft_model = peftkit.get_peft_model(
        model,
        peftkit.config(
            "oft", target_modules=["lin0"], oft_block_size=4, init_weights=False, use_cayley_neumann=False
        ),
        autocast_adapter_dtype=False,
    )
    assert _layers(peft_model)[0].oft_R["default"].weight.dtype == torch.bfloat16
    out = _run(peft_model, make_inputs("mlp").to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_config_round_trips_through_dict() -> None:
    config = OFTConfig(
        target_modules=["q"], r=4, oft_block_size=0, coft=True, block_share=True, module_dropout=0.1
    )
    assert OFTConfig.from_dict(config.to_dict()) == config


# --- per-sample adapters ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model_name", "targets_a", "targets_b", "size"),
    [
        ("mlp", ["lin0", "lin1"], ["lin1", "lin2"], 4),
        ("emb_conv1d", ["emb", "conv1d"], ["conv1d", "lin"], 8),
        ("conv2d", ["conv"], ["conv"], 9),
    ],
    ids=["mlp", "emb-conv1d", "conv2d"],
)
def test_each_sample_gets_its_adapter(
    model_name: str, targets_a: list[str], targets_b: list[str], size: int
) -> None:
    torch.manual_seed(0)
    config = peftkit.config("oft", target_modules=targets_a, oft_block_size=size, init_weights=False)
    model = peftkit.get_peft_model(make_model(model_name), config, adapter_name="a")
    torch.manual_seed(1)
    model.add_adapter("b", config.replace(target_modules=targets_b, use_cayley_neumann=False))
    model.eval()
    x = make_inputs(model_name)
    alone = {}
    for name in ("a", "b"):
        model.set_adapter(name)
        alone[name] = _run(model, x)
    with model.disable_adapter():
        alone["__base__"] = _run(model, x)
    assert not torch.allclose(alone["a"], alone["b"], atol=1e-4)
    names = ["b", "__base__", "a", "b"]
    with torch.no_grad():
        mixed = model(x, adapter_names=names)
    for i, name in enumerate(names):
        # Sub-batches run matmuls of other shapes: equal up to float32 rounding (default tolerances).
        torch.testing.assert_close(mixed[i], alone[name][i])

"""DoRA behaviour beyond the conformance suite: the formula, shapes, mixed merges, dropout, gradients, refusals."""

from __future__ import annotations

import pytest
import torch

import peftkit
from peftkit.testing import make_inputs, make_model


def _dora(model_name: str, targets: list[str], seed: int = 0, **extra: object) -> peftkit.PeftModel:
    torch.manual_seed(seed)
    cfg = peftkit.config("lora", target_modules=targets, r=2, lora_alpha=4, use_dora=True, **extra)
    return peftkit.get_peft_model(make_model(model_name), cfg)


def _perturb(model: torch.nn.Module, seed: int = 3) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize(
    ("model_name", "target", "shape"),
    [
        ("mlp", "lin1", (32,)),
        ("emb_conv1d", "conv1d", (48,)),  # Conv1D(nf=48, nx=32): one magnitude per output
        ("conv2d", "conv", (1, 8, 1, 1)),
        ("conv3d", "conv", (1, 4, 1, 1, 1)),
    ],
)
def test_magnitude_shape_and_init(model_name: str, target: str, shape: tuple[int, ...]) -> None:
    """m has Hugging Face PEFT's shape and starts at the per-output norm of the base weight (B = 0)."""
    model = _dora(model_name, [target])
    layer = model.get_base_model().get_submodule(target)
    magnitude = layer.lora_magnitude_vector["default"]
    assert tuple(magnitude.shape) == shape and magnitude.requires_grad
    weight = layer.view.read_weight()
    torch.testing.assert_close(magnitude.reshape(-1), weight.flatten(1).norm(dim=1))


def test_forward_is_the_dora_formula() -> None:
    """y = m * (W + s B A) x / ||W + s B A||_row + bias, checked against a hand computation."""
    model = _dora("mlp", ["lin1"], init_lora_weights=False)
    _perturb(model)
    layer = model.get_base_model().lin1
    x = torch.randn(5, 32)
    W, b = layer.base_layer.weight, layer.base_layer.bias
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    adapted = W + 2.0 * B @ A
    direction = adapted / adapted.norm(dim=1, keepdim=True)
    expected = x @ (layer.lora_magnitude_vector["default"][:, None] * direction).T + b
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)


def test_norm_is_detached_and_magnitude_trains() -> None:
    """Gradients reach m, A and B, but not through the norm: ``d/dB`` equals that of the formula with the norm constant."""
    model = _dora("mlp", ["lin1"], init_lora_weights=False)
    _perturb(model)
    layer = model.get_base_model().lin1
    x = torch.randn(5, 32)
    layer(x).pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.requires_grad}
    assert set(grads) == {"lora_A.default.weight", "lora_B.default.weight", "lora_magnitude_vector.default"}

    W, b = layer.base_layer.weight, layer.base_layer.bias
    A = layer.lora_A["default"].weight.detach().clone().requires_grad_(True)
    B = layer.lora_B["default"].weight.detach().clone().requires_grad_(True)
    m = layer.lora_magnitude_vector["default"].detach()
    norm = (W + 2.0 * B @ A).norm(dim=1).detach()
    out = x @ ((m / norm)[:, None] * (W + 2.0 * B @ A)).T + b
    out.pow(2).sum().backward()
    torch.testing.assert_close(grads["lora_B.default.weight"], B.grad, atol=1e-4, rtol=1e-4)


def test_dropout_path_matches_formula_in_training() -> None:
    """With dropout on in training, the base part is recomputed on the dropped input (no double bias)."""
    model = _dora("mlp", ["lin1"], init_lora_weights=False, lora_dropout=0.5)
    _perturb(model)
    layer = model.get_base_model().lin1
    model.train()
    x = torch.randn(6, 32)
    torch.manual_seed(11)
    out = layer(x)
    torch.manual_seed(11)
    dropped = layer.lora_dropout["default"](x)
    W, b = layer.base_layer.weight, layer.base_layer.bias
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    m = layer.lora_magnitude_vector["default"]
    scale = m / (W + 2.0 * B @ A).norm(dim=1)
    base_full = x @ W.T + b
    expected = base_full + (scale - 1) * (dropped @ W.T) + scale * (dropped @ A.T @ B.T) * 2.0
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_merge_unmerge_mixed_dora_and_plain_adapters() -> None:
    """A DoRA and a plain adapter merged together give the unmerged output; unmerging restores W exactly enough."""
    model = _dora("mlp", ["lin0", "lin1"], init_lora_weights=False)
    torch.manual_seed(5)
    model.add_adapter("plain", peftkit.config("lora", target_modules=["lin1"], r=2, init_lora_weights=False))
    model.add_adapter(
        "dora2", peftkit.config("lora", target_modules=["lin1"], r=3, use_dora=True, init_lora_weights=False)
    )
    _perturb(model)
    model.set_adapter(["default", "plain", "dora2"])
    x = make_inputs("mlp")
    base_weights = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    with torch.no_grad():
        expected = model(x)
        model.merge_adapter()
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)
        model.unmerge_adapter()
        for name, before in base_weights.items():
            torch.testing.assert_close(dict(model.named_parameters())[name], before, atol=1e-5, rtol=0)
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)
        # Merged one at a time in another order, then the first taken out alone: the norm of each DoRA
        # adapter is that of the unmerged base, so all ways end at the same weights.
        model.merge_adapter(["dora2"])
        model.merge_adapter(["plain", "default"])
        lin1 = model.get_base_model().lin1
        lin1.unmerge(["dora2"])
        assert lin1.merged_adapters == ["plain", "default"]
        model.unmerge_adapter()
        for name, before in base_weights.items():
            torch.testing.assert_close(dict(model.named_parameters())[name], before, atol=1e-5, rtol=0)


def test_deleting_a_merged_dora_adapter_restores_the_base() -> None:
    model = _dora("conv2d", ["conv"], init_lora_weights=False)
    _perturb(model)
    weight = model.get_base_model().conv.base_layer.weight
    before = weight.detach().clone()
    model.add_adapter("other", peftkit.config("lora", target_modules=["conv"], r=2))
    model.merge_adapter(["default"])
    assert not torch.allclose(weight, before)
    model.delete_adapter("default")
    torch.testing.assert_close(weight, before, atol=1e-5, rtol=0)
    assert not model.get_base_model().conv.dora_norms


def test_embedding_magnitude_is_per_dimension_and_forward_is_the_dora_formula() -> None:
    """On an embedding the outputs are its columns: m has shape (dim,), starts at each column's norm over the
    vocabulary, and y = m * (E + s (B A)^T)[x] / ||E + s (B A)^T||_col."""
    model = _dora("emb_conv1d", ["emb"], init_lora_weights=False)
    layer = model.get_base_model().emb
    E = layer.base_layer.weight
    magnitude = layer.lora_magnitude_vector["default"]
    A, B = layer.lora_embedding_A["default"], layer.lora_embedding_B["default"]
    assert tuple(magnitude.shape) == (32,) and magnitude.requires_grad
    torch.testing.assert_close(magnitude, (E + 2.0 * (B @ A).T).norm(dim=0))
    _perturb(model)
    ids = make_inputs("emb_conv1d")
    adapted = E + 2.0 * (B @ A).T
    expected = (magnitude / adapted.norm(dim=0)) * adapted[ids]
    with torch.no_grad():
        torch.testing.assert_close(layer(ids), expected, atol=1e-5, rtol=0)


def test_merge_unmerge_dora_embedding_with_a_plain_adapter() -> None:
    model = _dora("emb_conv1d", ["emb", "conv1d"], init_lora_weights=False)
    model.add_adapter("plain", peftkit.config("lora", target_modules=["emb"], r=3, init_lora_weights=False))
    _perturb(model)
    model.set_adapter(["default", "plain"])
    ids = make_inputs("emb_conv1d")
    weight = model.get_base_model().emb.base_layer.weight
    before = weight.detach().clone()
    with torch.no_grad():
        expected = model(ids)
        model.merge_adapter()
        assert not torch.allclose(weight, before)
        torch.testing.assert_close(model(ids), expected, atol=1e-5, rtol=0)
        model.unmerge_adapter()
        torch.testing.assert_close(weight, before, atol=1e-5, rtol=0)
        torch.testing.assert_close(model(ids), expected, atol=1e-5, rtol=0)


def _grouped(groups: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3, groups=groups), torch.nn.Flatten(), torch.nn.Linear(8, 2)
    )


def test_grouped_conv_magnitude_is_the_norm_of_each_output_kernel() -> None:
    model = peftkit.get_peft_model(
        _grouped(2), peftkit.config("lora", target_modules=["0"], r=2, use_dora=True)
    )
    layer = model.get_base_model()[0]
    magnitude = layer.lora_magnitude_vector["default"]
    assert tuple(magnitude.shape) == (1, 8, 1, 1)
    torch.testing.assert_close(magnitude.reshape(-1), layer.base_layer.weight.flatten(1).norm(dim=1))
    x = torch.randn(3, 4, 3, 3)
    with torch.no_grad():  # B = 0 at init: the layer computes the base convolution
        torch.testing.assert_close(model(x), _grouped(2)(x), atol=1e-6, rtol=0)


def test_grouped_conv_dora_rank_must_divide_by_groups() -> None:
    model = _grouped(4)
    with pytest.raises(ValueError, match="r=2 must be divisible by the convolution's groups=4"):
        peftkit.get_peft_model(model, peftkit.config("lora", target_modules=["0"], r=2, use_dora=True))
    assert not any("lora" in n for n, _ in model.named_modules())


def test_dora_with_lora_bias_is_a_config_error() -> None:
    with pytest.raises(peftkit.ConfigError, match="lora_bias=True cannot be combined with DoRA"):
        peftkit.config("lora", target_modules=["lin0"], use_dora=True, lora_bias=True)

"""MiSS beyond the conformance suite: the math against a dense reference, per-adapter variants, errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import peftkit
from peftkit import ConfigError
from peftkit.testing import make_inputs, make_model
from peftkit_miss.config import MissConfig
from peftkit_miss.layer import MissLayer


def _linear_model(in_features: int, out_features: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(in_features, out_features)).eval()


def _randomize(model: nn.Module, std: float = 0.1, seed: int = 3) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "miss_block" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)


def _dense_reference(
    weight: torch.Tensor, block: torch.Tensor, variant: str, mini_r: int = 1
) -> torch.Tensor:
    """The merged weight written out element by element from the definition, loops and all."""
    out_features, in_features = weight.shape
    merged = weight.clone()
    if variant == "bat":
        r = block.shape[-1]
        for i, j in itertools.product(range(out_features // r), range(in_features // r)):
            w = weight[i * r : (i + 1) * r, j * r : (j + 1) * r]
            merged[i * r : (i + 1) * r, j * r : (j + 1) * r] = w + w @ block[i] + block[i]
        return merged
    r = block.shape[0]
    for o, i in itertools.product(range(out_features), range(in_features)):
        column = o % mini_r if variant == "mini" else o
        merged[o, i] += block[i % r, column]
    return merged


def test_peftkit_config_builds_missconfig() -> None:
    config = peftkit.config("miss", r=8, init_weights="bat")
    assert isinstance(config, MissConfig)
    assert (config.peft_type, config.r, config.init_weights, config.variant) == ("MISS", 8, "bat", "bat")
    defaults = MissConfig()
    assert (defaults.r, defaults.miss_dropout, defaults.mini_r, defaults.init_weights) == (64, 0.0, 1, True)
    listed = {m["method"]: m for m in peftkit.list_methods()}
    assert listed["miss"]["peft_type"] == "MISS" and listed["miss"]["distribution"] == "peftkit-miss"


@settings(max_examples=30, deadline=None)
@given(
    in_features=st.integers(1, 13),
    out_features=st.integers(1, 9),
    r=st.integers(1, 13),
    variant=st.sampled_from(["balance", "mini", "bat"]),
    mini_r=st.sampled_from([1, 3]),
)
def test_forward_and_merge_match_dense_reference(
    in_features: int, out_features: int, r: int, variant: str, mini_r: int
) -> None:
    """For any sizes: forward == x @ reference(W).T, merge writes reference(W), unmerge restores W."""
    if r > in_features or (variant == "bat" and (in_features % r or out_features % r)):
        return
    if variant == "mini" and out_features % mini_r:
        return
    init = {"balance": True, "mini": "mini", "bat": "bat"}[variant]
    model = peftkit.get_peft_model(
        _linear_model(in_features, out_features),
        MissConfig(r=r, init_weights=init, mini_r=mini_r, target_modules=["0"]),
    )
    _randomize(model)
    layer = model.get_base_model()[0]
    base = layer.base_layer.weight.detach().clone()
    expected = _dense_reference(base, layer.miss_block["default"].detach(), variant, mini_r)
    x = torch.randn(3, 2, in_features)
    with torch.no_grad():
        torch.testing.assert_close(model(x), x @ expected.T + layer.base_layer.bias, atol=1e-5, rtol=1e-5)
        model.merge_adapter()
        torch.testing.assert_close(layer.base_layer.weight, expected, atol=1e-5, rtol=1e-5)
        model.unmerge_adapter()
        torch.testing.assert_close(layer.base_layer.weight, base, atol=1e-5, rtol=0)
    if variant != "bat":
        torch.testing.assert_close(layer.delta_weight("default"), expected - base, atol=1e-6, rtol=0)


def test_shard_sum_reads_the_input_without_padding_it() -> None:
    """in % r != 0: the adapter's gradient w.r.t. x is the block's row sum spread over the shards, tail included."""
    model = peftkit.get_peft_model(_linear_model(7, 4), MissConfig(r=3, target_modules=["0"]))
    _randomize(model)
    layer = model.get_base_model()[0]
    x = torch.randn(5, 7, requires_grad=True)
    (layer(x) - layer.base_layer(x)).sum().backward()
    row_sums = layer.miss_block["default"].detach().sum(1)  # d(sum of outputs) / d(shard entry k)
    torch.testing.assert_close(x.grad, row_sums[torch.arange(7) % 3].expand(5, 7))


def _two_variant_model() -> tuple[nn.Module, MissLayer]:
    model = peftkit.get_peft_model(
        make_model("mlp"), MissConfig(r=4, init_weights=False, target_modules=["lin1"])
    )
    model.add_adapter("bat", MissConfig(r=4, init_weights="bat", target_modules=["lin1"]))
    model.add_adapter("mini", MissConfig(r=4, init_weights="mini", mini_r=8, target_modules=["lin1"]))
    _randomize(model)
    return model, model.get_base_model().lin1


def test_variants_live_per_adapter_on_one_layer() -> None:
    model, layer = _two_variant_model()
    assert layer.miss_variant == {"default": "balance", "bat": "bat", "mini": "mini"}
    assert [tuple(layer.miss_block[n].shape) for n in ("default", "bat", "mini")] == [
        (4, 32),
        (8, 4, 4),
        (4, 8),
    ]
    x = make_inputs("mlp")
    outs = {}
    for name in ("default", "bat", "mini"):
        model.set_adapter(name)
        with torch.no_grad():
            outs[name] = model(x)
            model.merge_adapter()
            torch.testing.assert_close(model(x), outs[name], atol=1e-5, rtol=0)
            model.unmerge_adapter()
    assert not torch.allclose(outs["default"], outs["bat"]) and not torch.allclose(outs["bat"], outs["mini"])


@pytest.mark.parametrize("order", list(itertools.permutations(["default", "bat", "mini"])))
def test_merge_and_unmerge_in_any_order_restore_the_base_weight(order: tuple[str, ...]) -> None:
    model, layer = _two_variant_model()
    base = layer.base_layer.weight.detach().clone()
    x = make_inputs("mlp")
    model.set_adapter(list(order))
    with torch.no_grad():
        unmerged = model(x)  # bat sees the weight the adapters before it leave, as merging in this order does
        for name in order:
            layer.merge(adapter_names=[name])
        torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=0)
        # Take the first-merged adapter out while later ones stay merged: they are peeled off and re-merged.
        layer.unmerge(adapter_names=[order[0]])
        assert layer.merged_adapters == list(order[1:])
        expected = base
        for name in order[1:]:
            expected = layer.merged_weight(expected, name)
        torch.testing.assert_close(layer.base_layer.weight, expected, atol=1e-5, rtol=0)
        layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, base, atol=1e-5, rtol=0)
    assert layer.merged_adapters == []


def test_bat_in_a_mixed_batch_sees_only_the_base_weight() -> None:
    """A sample routed to bat gets what bat alone gives, even while an adapter before it is active.

    bat's update depends on the weight it is applied to; in a normal forward that is the base weight
    with the active adapters before it applied, under ``adapter_names=[...]`` the base weight alone.
    """
    model, _ = _two_variant_model()
    model.eval()
    x = make_inputs("mlp")
    with torch.no_grad():
        model.set_adapter("bat")
        alone = model(x)
        model.set_adapter(["default", "bat"])
        mixed = model(x, adapter_names=["bat"] * x.shape[0])
    torch.testing.assert_close(mixed, alone)


def test_bat_unmerge_is_exact_on_conv1d() -> None:
    model = peftkit.get_peft_model(
        make_model("emb_conv1d"), MissConfig(r=8, init_weights="bat", target_modules=["conv1d"])
    )
    _randomize(model, std=0.3)
    conv = model.get_base_model().conv1d
    base = conv.base_layer.weight.detach().clone()
    x = make_inputs("emb_conv1d")
    with torch.no_grad():
        before = model(x)
        model.merge_adapter()
        assert not torch.allclose(conv.base_layer.weight, base)
        torch.testing.assert_close(model(x), before, atol=1e-5, rtol=0)
        model.unmerge_adapter()
    torch.testing.assert_close(conv.base_layer.weight, base, atol=1e-5, rtol=0)


def test_gpt2_default_targets_are_conv1d() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=1, n_head=4, n_positions=16)).eval()
    model = peftkit.get_peft_model(gpt2, MissConfig(r=8))
    layer = model.get_base_model().transformer.h[0].attn.c_attn
    assert isinstance(layer, MissLayer) and layer.miss_block["default"].shape == (8, 96)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"r": 0}, "positive integer"),
        ({"r": -2}, "positive integer"),
        ({"init_weights": "balance"}, "not a MiSS variant"),
        ({"mini_r": 0}, "mini_r"),
        ({"miss_dropout": 1.5}, "miss_dropout"),
    ],
)
def test_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MissConfig(**kwargs)


@pytest.mark.parametrize(
    ("model_name", "kwargs", "error", "message"),
    [
        (
            "mlp",
            {"r": 3, "init_weights": "bat", "target_modules": ["lin1"]},
            ValueError,
            r"in_features=32 is not divisible by r=3",
        ),
        # lin0 (16 -> 32) fits 16x16 blocks, lin2 (32 -> 8) does not: lin0 must be rolled back too.
        (
            "mlp",
            {"r": 16, "init_weights": "bat", "target_modules": ["lin0", "lin2"]},
            ValueError,
            r"'lin2'.*out_features=8 is not divisible by r=16",
        ),
        (
            "mlp",
            {"r": 2, "init_weights": "mini", "mini_r": 3, "target_modules": ["lin1"]},
            ValueError,
            r"out_features=32.*mini_r=3",
        ),
        ("mlp", {"r": 17, "target_modules": ["lin0"]}, ValueError, r"r=17 is larger than in_features=16"),
        ("emb_conv1d", {"r": 2, "target_modules": ["emb"]}, TypeError, r"'emb' of type Embedding"),
        ("conv2d", {"r": 2, "target_modules": ["conv"]}, TypeError, r"'conv' of type Conv2d"),
    ],
)
def test_layer_errors_leave_the_model_unchanged(
    model_name: str, kwargs: dict, error: type, message: str
) -> None:
    model = make_model(model_name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules_before = [type(m) for m in model.modules()]
    with pytest.raises(error, match=message):
        peftkit.get_peft_model(model, MissConfig(**kwargs))
    assert [type(m) for m in model.modules()] == modules_before
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bat_needs_a_view_that_reads_the_weight() -> None:
    from peftkit.views import BaseLayerView

    class Opaque(BaseLayerView):  # a backend that cannot dequantize
        pass

    layer = MissLayer(nn.Linear(8, 8), Opaque(nn.Linear(8, 8), 8, 8))
    with pytest.raises(ValueError, match="cannot read it"):
        layer.add_adapter("default", MissConfig(r=4, init_weights="bat"))
    layer.add_adapter("default", MissConfig(r=4))  # balance only needs the base forward


@pytest.mark.parametrize("variant", ["balance", "bat", "mini"])
def test_a_miss_model_moves_and_casts_like_any_module(variant: str) -> None:
    # MissLayer once defined _apply(weight, name, block, inverse), hiding nn.Module._apply.
    init = {"balance": {}, "bat": {"init_weights": "bat"}, "mini": {"init_weights": "mini", "mini_r": 2}}[
        variant
    ]
    pm = peftkit.get_peft_model(
        nn.Sequential(nn.Linear(8, 8)), peftkit.config("miss", r=2, target_modules=["0"], **init)
    )
    x = torch.randn(3, 8)
    with torch.no_grad():
        expected = pm(x)
        pm.to("cpu").half().bfloat16().float()
        assert {p.dtype for p in pm.parameters()} == {torch.float32}
        torch.testing.assert_close(pm(x), expected, atol=0.05, rtol=0)

"""The bitsandbytes base-layer views on bare layers: dispatch, dequantized reads, re-quantized writes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from typing import Any

import bitsandbytes as bnb
import pytest
import torch
from torch import nn

import peftkit
from peftkit import _dense, cli
from peftkit._injection import UnsupportedLayerError, get_view
from peftkit_bnb.views import Linear4bitView, Linear8bitView, view_for

IN, OUT = 128, 64  # two 64-wide scale blocks per row; out % 32 == 0 for the CPU 4-bit kernel


def dense(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(IN, OUT)


def quantized(kind: str, source: nn.Linear | None = None, **kwargs: Any) -> nn.Module:
    """A bitsandbytes layer holding ``source``'s weights, quantized on the CPU."""
    source = source or dense()
    if kind == "int8":
        layer = bnb.nn.Linear8bitLt(IN, OUT, has_fp16_weights=False, **kwargs)
    else:
        layer = bnb.nn.Linear4bit(IN, OUT, quant_type=kind, **kwargs)
    layer.load_state_dict(source.state_dict())
    return layer.to("cpu")  # bitsandbytes quantizes when the layer moves to its device


def bound(kind: str, weight: torch.Tensor, nested: bool = False) -> torch.Tensor:
    """How far quantizing ``weight`` may move each element (half a step of the block's or row's scale)."""
    if kind == "int8":
        return weight.abs().amax(1, keepdim=True) * (0.5 / 127 + 1e-3) + 1e-6
    code = bnb.functional.get_4bit_type(kind, device="cpu")
    half_gap = code.sort().values.diff().max().item() / 2 + (0.02 if nested else 1e-3)
    blocks = weight.reshape(-1, 64).abs().amax(1, keepdim=True)
    return (half_gap * blocks).expand(-1, 64).reshape(weight.shape) + 1e-6


KINDS = ["nf4", "fp4", "int8"]


@pytest.mark.parametrize("kind", KINDS)
def test_dispatch_gives_the_bnb_view_and_never_the_dense_one(kind: str) -> None:
    layer = quantized(kind)
    view = get_view(layer)
    assert type(view) is (Linear8bitView if kind == "int8" else Linear4bitView)
    assert (view.kind, view.in_features, view.out_features, view.fan_in_fan_out) == ("linear", IN, OUT, False)
    assert view.supports_merge and view.device == torch.device("cpu")
    # The core's dense view would read the integer storage as if it were the weight: it declines.
    assert _dense.peftkit_base_layer_view(layer) is None
    assert view_for(bnb.nn.Embedding(10, 8)) is None  # a float bnb embedding is not this backend's


@pytest.mark.parametrize("kind", KINDS)
def test_read_dequantizes_and_write_requantizes_within_one_rounding(kind: str) -> None:
    source = dense()
    layer = quantized(kind, source)
    view = view_for(layer)
    weight = view.read_weight().float()
    assert weight.shape == (OUT, IN)
    assert ((weight - source.weight).abs() <= bound(kind, source.weight.detach())).all()

    target = weight + 0.01 * torch.randn(OUT, IN)
    with pytest.warns(UserWarning, match="re-quantizes its weight"):
        view.write_weight(target)
    assert not layer.weight.is_floating_point()  # still quantized storage
    assert ((view.read_weight().float() - target).abs() <= bound(kind, target)).all()

    x = torch.randn(3, IN)
    with torch.no_grad():
        expected = x @ view.read_weight().float().T + layer.bias
        # The int8 forward also quantizes the input; 4-bit on CPU computes in bfloat16 in eval mode.
        torch.testing.assert_close(layer.train()(x), expected, atol=0.05, rtol=0)


def test_write_keeps_the_layers_4bit_settings() -> None:
    layer = quantized("fp4", compress_statistics=True, compute_dtype=torch.bfloat16)
    view = view_for(layer)
    with pytest.warns(UserWarning):
        view.add_to_weight(torch.full((OUT, IN), 0.01))
    weight = layer.weight
    assert (weight.quant_type, weight.blocksize, weight.compress_statistics) == ("fp4", 64, True)
    assert weight.quant_state.nested and weight.quant_state.dtype == torch.float32
    assert layer.quant_state is weight.quant_state  # the layer's copy, which bitsandbytes falls back on
    assert view.weight_dtype == torch.bfloat16  # the compute dtype: what adapters should work in


def test_failed_write_leaves_the_layer_unchanged() -> None:
    for kind in KINDS:
        layer = quantized(kind)
        weight, before = layer.weight, view_for(layer).read_weight().clone()
        with pytest.raises(ValueError, match=r"expected \(64, 128\)"):
            view_for(layer).write_weight(torch.zeros(IN, OUT))
        assert layer.weight is weight and torch.equal(view_for(layer).read_weight(), before)


def test_reading_a_4bit_weight_after_an_eval_forward_matches_and_changes_nothing(packs: bool) -> None:
    layer = quantized("nf4")
    view = view_for(layer)
    unpacked = view.read_weight().clone()
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(2, IN))  # bitsandbytes repacks for its CPU inference kernel here, where it can
    state, data = layer.weight.quant_state, layer.weight.data.clone()
    assert bool(getattr(state, "packing_format_for_cpu", False)) == packs
    # Packing stores the block scales in bfloat16: that is the only difference.
    torch.testing.assert_close(view.read_weight(), unpacked, atol=1e-3, rtol=1e-2)
    assert layer.weight.quant_state is state and torch.equal(layer.weight.data, data)


def test_int8_reads_scales_wherever_bitsandbytes_keeps_them() -> None:
    layer = quantized("int8")
    view = view_for(layer)
    before = view.read_weight().clone()
    with torch.no_grad():
        layer(torch.randn(2, IN))  # moves the scales from the weight to the matmul state
    assert layer.weight.SCB is None and layer.state.SCB is not None
    assert torch.equal(view.read_weight(), before)
    assert view.weight_dtype == torch.float32


def test_adapters_are_float_in_the_compute_dtype_or_fp32() -> None:
    def model() -> nn.Module:
        return nn.Sequential(quantized("nf4", compute_dtype=torch.bfloat16), nn.ReLU())

    cfg = peftkit.config("lora", r=2, target_modules=["0"])
    autocast = peftkit.get_peft_model(model(), cfg)
    assert {p.dtype for n, p in autocast.named_parameters() if "lora_" in n} == {torch.float32}
    exact = peftkit.get_peft_model(model(), cfg, autocast_adapter_dtype=False)
    assert {p.dtype for n, p in exact.named_parameters() if "lora_" in n} == {torch.bfloat16}


def test_unsupported_bitsandbytes_layer_error_names_method_layer_and_backend(monkeypatch: Any) -> None:
    from peftkit import _plugins

    # Without this backend, a quantized layer is refused (not misread as dense) with what to install.
    bare = _plugins.make_plugin_manager(entry_points=[])
    monkeypatch.setattr(_plugins, "plugin_manager", lambda: bare)
    model = nn.Sequential(quantized("nf4"))
    with pytest.raises(UnsupportedLayerError, match=r"lora: module '0' of type Linear4bit.*peftkit-bnb"):
        peftkit.get_peft_model(model, peftkit.config("lora", target_modules=["0"]))
    assert type(model[0]) is bnb.nn.Linear4bit and model[0].bias.requires_grad  # left as it was


def test_list_methods_shows_the_bnb_backend_and_which_methods_serve_it() -> None:
    from peftkit._plugins import registry

    doc = cli.describe_plugins(registry())
    backend = next(b for b in doc["backends"] if b["backend"] == "bnb")
    assert (backend["distribution"], backend["layer_types"], backend["view_kinds"]) == (
        "peftkit-bnb",
        ["Linear8bitLt", "Linear4bit"],
        {"Linear8bitLt": "linear", "Linear4bit": "linear"},
    )
    lora = next(m for m in doc["methods"] if m["method"] == "lora")
    assert lora["backends"] == ["dense", "bnb"]
    out = subprocess.run(
        [sys.executable, "-m", "peftkit", "list-methods"], capture_output=True, text=True, check=True
    ).stdout
    assert any(line.split()[:1] == ["bnb"] and "Linear4bit" in line for line in out.splitlines())
    assert "dense, bnb" in next(line for line in out.splitlines() if line.split()[:1] == ["lora"])


def test_plugin_module_and_plain_models_never_import_bitsandbytes() -> None:
    code = textwrap.dedent(
        """
        import sys
        import peftkit_bnb
        assert "torch" not in sys.modules and "bitsandbytes" not in sys.modules, "heavy import"
        from torch import nn
        import peftkit
        model = peftkit.get_peft_model(nn.Sequential(nn.Linear(4, 4)), peftkit.config("lora", target_modules=["0"]))
        assert "bitsandbytes" not in sys.modules, "bitsandbytes imported for a plain model"
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_merge_warning_is_only_for_quantized_storage() -> None:
    layer = bnb.nn.Linear4bit(IN, OUT)  # never moved to a device: still its float weight
    view = view_for(layer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        view.add_to_weight(torch.ones(OUT, IN))
    assert layer.weight.is_floating_point()


def test_quantized_embedding_is_refused_with_method_and_layer_type() -> None:
    # This backend serves linear layers only; an 8-bit embedding must not be read as a dense one.
    model = nn.Sequential(bnb.nn.Embedding8bit(16, 8).to("cpu"))
    with pytest.raises(
        UnsupportedLayerError, match=r"lora: module '0' of type Embedding8bit cannot be adapted"
    ):
        peftkit.get_peft_model(model, peftkit.config("lora", target_modules=["0"]))
    assert type(model[0]) is bnb.nn.Embedding8bit

"""``set_scale`` / ``scale_layer`` / ``unscale_layer`` on LoRA layers, with Hugging Face PEFT's semantics."""

from __future__ import annotations

import torch

import peftkit
from peftkit.testing import make_inputs, make_model


def _model(**extra: object) -> peftkit.PeftModel:
    torch.manual_seed(0)
    cfg = peftkit.config(
        "lora", target_modules=["lin0", "lin1"], r=4, lora_alpha=8, init_lora_weights=False, **extra
    )
    model = peftkit.get_peft_model(make_model("mlp"), cfg)
    model.add_adapter("other", peftkit.config("lora", target_modules=["lin1"], r=2, lora_alpha=6))
    return model


def test_set_scale_is_relative_to_the_configured_scaling() -> None:
    model = _model()
    layer = model.get_base_model().lin1
    layer.set_scale("default", 0.5)
    assert layer.scaling == {"default": 1.0, "other": 3.0}
    layer.set_scale("default", 3)
    assert layer.scaling["default"] == 6.0
    layer.set_scale("missing", 2.0)  # adapters a layer does not hold are ignored
    assert "missing" not in layer.scaling


def test_set_scale_with_rslora() -> None:
    layer = _model(use_rslora=True).get_base_model().lin1
    layer.set_scale("default", 2.0)
    assert layer.scaling["default"] == 2.0 * 8 / 2.0  # alpha / sqrt(r) = 8 / 2


def test_scale_and_unscale_touch_active_adapters_only() -> None:
    model = _model()
    layer = model.get_base_model().lin1
    layer.scale_layer(3.0)
    assert layer.scaling == {"default": 6.0, "other": 3.0}
    layer.unscale_layer(2.0)
    assert layer.scaling["default"] == 3.0
    layer.unscale_layer()
    assert layer.scaling["default"] == 2.0
    model.set_adapter(["default", "other"])
    layer.scale_layer(2.0)
    assert layer.scaling == {"default": 4.0, "other": 6.0}


def test_scaling_changes_the_output_linearly() -> None:
    """Doubling the scale doubles the adapter's contribution."""
    model = _model().eval()
    x = make_inputs("mlp")
    layer = model.get_base_model().lin0
    with torch.no_grad():
        base = layer.base_layer(x)
        once = layer(x) - base
        layer.scale_layer(2.0)
        torch.testing.assert_close(layer(x) - base, 2 * once, atol=1e-6, rtol=0)
        layer.set_scale("default", 0.0)
        torch.testing.assert_close(layer(x), base, atol=0, rtol=0)

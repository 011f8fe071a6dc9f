"""The backend side of the contract: the view hook's context, and views that replace their module."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _toy_backend import ToyBackend, ToyMLP, ToyQuantLinear, ToyQuantView, toy_inputs
from torch import nn

import peftkit
from peftkit import _plugins
from peftkit.views import BaseLayerView


def lora(**fields: Any) -> Any:
    return peftkit.config("lora", target_modules=["up", "down"], r=4, init_lora_weights=False, **fields)


def run(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**toy_inputs())


def test_a_backend_that_asks_for_it_gets_the_path_and_the_model(toy_backend: ToyBackend) -> None:
    base = ToyMLP(quantized=True)
    model = peftkit.get_peft_model(base, lora())
    assert [(path, m is base) for path, m in toy_backend.calls] == [("up", True), ("down", True)]
    assert type(model.get_base_model().up.view) is ToyQuantView


class ModuleOnlyBackend:
    """A backend written against the first contract: its hook takes only ``module``."""

    @peftkit.hookimpl(tryfirst=True)
    def peftkit_base_layer_view(self, module: nn.Module) -> Any:
        return ToyQuantView(module) if isinstance(module, ToyQuantLinear) else None


def test_a_backend_taking_only_the_module_still_answers() -> None:
    _plugins.reset()
    try:
        _plugins.plugin_manager().register(ModuleOnlyBackend(), name="module-only")
        model = peftkit.get_peft_model(ToyMLP(quantized=True), lora())
        assert type(model.get_base_model().down.view) is ToyQuantView
        assert "module-only" not in _plugins.registry().broken
    finally:
        _plugins.reset()


def test_a_view_that_replaces_its_module_on_write_keeps_the_adapter_layer_in_step(
    toy_backend: ToyBackend,
) -> None:
    model = peftkit.get_peft_model(ToyMLP(quantized=True), lora())
    layer = model.get_base_model().up
    original, bias = layer.base_layer, layer.base_layer.bias
    keys = list(model.state_dict())
    unmerged = run(model)

    model.merge_adapter()
    assert layer.base_layer is layer.view.module is not original
    assert layer.base_layer.bias is bias and not bias.requires_grad
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(run(model), unmerged, atol=0.02, rtol=0)

    model.unmerge_adapter()
    assert layer.base_layer is layer.view.module and list(model.state_dict()) == keys
    torch.testing.assert_close(run(model), unmerged, atol=0.02, rtol=0)
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == sorted(
        n for n, _ in model.named_parameters() if "lora_" in n
    )

    replaced = layer.base_layer
    plain = model.merge_and_unload()
    assert type(plain.up) is ToyQuantLinear and plain.up is not replaced  # merged: re-quantized once more


def test_replace_module_takes_over_mode_and_frozen_flags_and_refuses_other_tensors() -> None:
    old = nn.Linear(4, 3).requires_grad_(False).eval()
    view = BaseLayerView(old, 4, 3)
    layer = peftkit.AdapterLayer(old, view)
    new = nn.Linear(4, 3)
    view.module = new  # assigning is replace_module
    assert layer.base_layer is new and view.module is new
    assert not new.training and not any(p.requires_grad for p in new.parameters())
    with pytest.raises(ValueError, match=r"holds tensors \['weight'\], the old one \['bias', 'weight'\]"):
        view.replace_module(nn.Linear(4, 3, bias=False))
    with pytest.raises(TypeError, match=r"expects a torch\.nn\.Module"):
        view.replace_module(torch.zeros(3, 4))
    assert layer.base_layer is new

"""The backend side of the contract: views that replace their module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import peftkit
from peftkit.views import BaseLayerView


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

"""The dense views' in-place weight update, which merging relies on."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit._injection import get_view
from peftkit.views import BaseLayerView


def test_update_weight_on_a_dense_layer_is_in_place() -> None:
    layer = nn.Linear(4, 3)
    storage = layer.weight.data_ptr()
    before = layer.weight.detach().clone()

    get_view(layer).update_weight(lambda w: w.add_(1.0), torch.float32)

    assert layer.weight.data_ptr() == storage
    torch.testing.assert_close(layer.weight.detach(), before + 1.0)


def test_update_weight_sees_a_conv1d_weight_in_out_in_layout() -> None:
    layer = Conv1D(3, 4)  # (in=4, out=3) stored transposed
    delta = torch.arange(12.0).reshape(3, 4)
    before = layer.weight.detach().clone()

    get_view(layer).update_weight(lambda w: w.add_(delta), torch.float32)

    torch.testing.assert_close(layer.weight.detach(), before + delta.T)


def test_update_weight_in_another_dtype_writes_back_in_the_layer_dtype() -> None:
    layer = nn.Linear(4, 3).to(torch.bfloat16)
    seen = []

    def update(w: torch.Tensor) -> None:
        seen.append(w.dtype)
        w.add_(0.5)

    before = layer.weight.detach().float()
    get_view(layer).update_weight(update, torch.float32)

    assert seen == [torch.float32]
    assert layer.weight.dtype == torch.bfloat16
    torch.testing.assert_close(layer.weight.float(), (before + 0.5).bfloat16().float())


def test_the_fallback_never_hands_update_the_layers_own_tensor() -> None:
    class ReadOnlyView(BaseLayerView):
        def read_weight(self) -> torch.Tensor:
            return self.module.weight.data

        def write_weight(self, weight: torch.Tensor) -> None:
            self.written = weight

    layer = nn.Linear(4, 3)
    before = layer.weight.detach().clone()
    view = ReadOnlyView(layer, 4, 3)

    view.update_weight(lambda w: w.mul_(0.0), torch.float32)

    torch.testing.assert_close(layer.weight.detach(), before)  # only write_weight may change it
    assert torch.count_nonzero(view.written) == 0

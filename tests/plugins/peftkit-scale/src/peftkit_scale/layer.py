"""The scale layer: ``y = W x * (1 + s) + b`` with a learned vector ``s`` of shape ``(out,)``.

``s`` is stored as ``scale_vector[adapter]``. Merging is not additive (the update depends on
``W``), so the layer gives ``merged_weight(W) = diag(1 + s) W`` and its inverse.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import peftkit


class ScaleLayer(peftkit.AdapterLayer):
    def __init__(self, base_layer: nn.Module, view: Any) -> None:
        super().__init__(base_layer, view)
        self.scale_vector = nn.ParameterDict()

    def create_adapter(self, name: str, config: Any) -> None:
        if self.view.kind != "linear":
            raise ValueError(f"scale adapts linear layers only, not {self.view.layer_type}")
        self.scale_vector[name] = nn.Parameter(
            torch.full((self.view.out_features,), float(config.init_scale))
        )

    def adapter_forward(self, x: torch.Tensor, result: torch.Tensor, name: str) -> torch.Tensor:
        s = self.scale_vector[name]
        base_no_bias = F.linear(x.to(s.dtype), self.view.read_weight().to(s.dtype))
        return result + (base_no_bias * s).to(result.dtype)

    def merged_weight(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        return weight * (1 + self.scale_vector[name].detach()).to(weight.dtype)[:, None]

    def unmerged_weight(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        return weight / (1 + self.scale_vector[name].detach()).to(weight.dtype)[:, None]

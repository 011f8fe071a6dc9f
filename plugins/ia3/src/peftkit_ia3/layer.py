"""The (IA)^3 layer: one learned vector per adapter, scaling the input (feed-forward) or the output.

Per adapter: ``ia3_l`` of shape ``(1, in)`` on feed-forward layers, ``(out, 1)`` elsewhere (PEFT's
shapes). Feed-forward layers act through ``adapter_input``, so the base layer runs once on the
scaled input, and several active adapters multiply their vectors. Merging is multiplicative, so
it goes through ``merged_weight`` / ``unmerged_weight`` and, for output-side layers, the bias pair.
"""

from __future__ import annotations

import torch
from torch import nn

from peftkit import AdapterLayer, BaseLayerView, UnsupportedLayerError, name_matcher
from peftkit_ia3.config import IA3Config


class IA3Layer(AdapterLayer[IA3Config]):
    adapter_dicts = ("is_feedforward",)

    def __init__(self, base_layer: nn.Module, view: BaseLayerView) -> None:
        super().__init__(base_layer, view)
        self.ia3_l = nn.ParameterDict()
        #: adapter name -> whether it scales this layer's input
        self.is_feedforward: dict[str, bool] = {}

    def create_adapter(self, name: str, config: IA3Config) -> None:
        view = self.view
        if view.kind != "linear":
            raise UnsupportedLayerError(
                f"(IA)^3 adapts linear layers (nn.Linear, transformers Conv1D); {self.path or 'this layer'} is a "
                f"{view.layer_type}: remove it from target_modules"
            )
        feedforward = name_matcher(config.feedforward_modules)(self.path)
        shape = (1, view.in_features) if feedforward else (view.out_features, 1)
        values = torch.ones(shape) if config.init_ia3_weights else torch.randn(shape)
        self.ia3_l[name] = nn.Parameter(values)
        self.is_feedforward[name] = feedforward

    # --- forward ------------------------------------------------------------------------
    def adapter_input(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if not self.is_feedforward[name]:
            return x
        scale = self.ia3_l[name]
        return (x.to(scale.dtype) * scale.flatten()).to(x.dtype)

    def adapter_forward(self, x: torch.Tensor, result: torch.Tensor, name: str) -> torch.Tensor:
        if self.is_feedforward[name]:
            return result
        scale = self.ia3_l[name]
        return (result.to(scale.dtype) * scale.flatten()).to(result.dtype)

    # --- merging (the weight in the view's (out, in) layout, float32) ------------------------
    def _factor(self, name: str) -> torch.Tensor:
        # (1, in) scales columns, (out, 1) rows: the same broadcast as PEFT's vectors.
        return self.ia3_l[name].detach().float()

    def merged_weight(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        return weight * self._factor(name).to(weight.device)

    def unmerged_weight(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        return weight / self._factor(name).to(weight.device)

    def merged_bias(self, bias: torch.Tensor | None, name: str) -> torch.Tensor | None:
        if self.is_feedforward[name] or bias is None:
            return None  # the input scale does not reach the bias
        return bias * self._factor(name).flatten().to(bias.device)

    def unmerged_bias(self, bias: torch.Tensor | None, name: str) -> torch.Tensor | None:
        if self.is_feedforward[name] or bias is None:
            return None
        return bias / self._factor(name).flatten().to(bias.device)

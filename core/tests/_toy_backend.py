"""A pure-PyTorch stand-in for a quantized backend, to test the backend contract without bitsandbytes.

``ToyQuantLinear`` stores its weight as int8 with one scale per output row. Its view writes a
weight the way HQQ does: by building a new quantized layer and replacing the old one
(``BaseLayerView.replace_module``), never by editing the old layer in place.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import peftkit
from peftkit import BaseLayerView

KINDS = {"ToyQuantLinear": "linear"}


class ToyQuantLinear(nn.Module):
    """A linear layer holding ``round(W / scale)`` as int8 and ``scale`` per output row."""

    def __init__(self, weight: torch.Tensor, bias: nn.Parameter | None = None) -> None:
        super().__init__()
        weight = weight.detach().float()
        scale = weight.abs().amax(1, keepdim=True).clamp_min(1e-8) / 127
        self.register_buffer("qweight", torch.round(weight / scale).to(torch.int8))
        self.register_buffer("scale", scale)
        self.bias = bias
        self.out_features, self.in_features = weight.shape

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> ToyQuantLinear:
        bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
        return cls(linear.weight, bias)

    def dequantize(self) -> torch.Tensor:
        return self.qweight.float() * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize().to(x.dtype), self.bias)


class ToyQuantView(BaseLayerView):
    kind = "linear"

    def __init__(self, module: ToyQuantLinear) -> None:
        super().__init__(module, module.in_features, module.out_features)

    @property
    def weight_dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return self.module.qweight.device

    def read_weight(self) -> torch.Tensor:
        return self.module.dequantize()

    def write_weight(self, weight: torch.Tensor) -> None:
        # Re-quantizing builds a new layer (new scales); the bias parameter carries over as it is.
        self.replace_module(ToyQuantLinear(weight.to(self.device), self.module.bias))


class ToyBackend:
    """The toy as a backend plugin; ``calls`` records the context each view request carried."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    @peftkit.hookimpl
    def peftkit_base_layer_view(self, module: nn.Module, path: str, model: nn.Module | None) -> Any:
        if not isinstance(module, ToyQuantLinear):
            return None
        self.calls.append((path, model))
        return ToyQuantView(module)

    @peftkit.hookimpl
    def peftkit_describe_backends(self) -> list[tuple[str, dict[str, str]]]:
        return [("toy", KINDS)]


class ToyMLP(nn.Module):
    """``up`` 32 -> 64, ``down`` 64 -> 32, ``head`` 32 -> 8: dense, or with ``up``/``down`` quantized."""

    def __init__(self, quantized: bool, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            up, down, head = nn.Linear(32, 64), nn.Linear(64, 32), nn.Linear(32, 8)
        self.up = ToyQuantLinear.from_linear(up) if quantized else up
        self.down = ToyQuantLinear.from_linear(down) if quantized else down
        self.head = head
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.down(torch.relu(self.up(x)))))


def toy_inputs() -> dict[str, torch.Tensor]:
    return {"x": torch.randn(4, 32, generator=torch.Generator().manual_seed(1))}

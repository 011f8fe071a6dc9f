"""The VeRA layer: ``y = base(x) + lambda_b * (B_s @ (lambda_d * (A_s @ dropout(x))))`` per active adapter.

``A_s = vera_A[:, :in]`` and ``B_s = vera_B[:out, :]`` are slices of the model's shared frozen
projections (see :mod:`peftkit_vera.projections`); only ``vera_lambda_b`` ``(out,)`` and
``vera_lambda_d`` ``(r,)`` are trained. As a dense update,
``delta_W = diag(lambda_b) @ B_s @ diag(lambda_d) @ A_s`` in ``(out, in)`` layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from peftkit import AdapterLayer, BaseLayerView, UnsupportedLayerError
from peftkit_vera.config import VeraConfig
from peftkit_vera.projections import BufferDict, make_projections


class VeraLayer(AdapterLayer[VeraConfig]):
    adapter_dicts = ("r",)

    def __init__(self, base_layer: nn.Module, view: BaseLayerView) -> None:
        super().__init__(base_layer, view)
        self.vera_lambda_b = nn.ParameterDict()
        self.vera_lambda_d = nn.ParameterDict()
        self.vera_dropout = nn.ModuleDict()
        self.r: dict[str, int] = {}
        # The model's projection holders, referenced (a tuple is not registered as a submodule),
        # so each layer reads the one shared copy and nothing is saved per layer.
        self.projections: tuple[BufferDict, BufferDict] | None = None

    @classmethod
    def before_inject(
        cls, owner: nn.Module, config: VeraConfig, name: str, layers: Sequence[AdapterLayer[VeraConfig]]
    ) -> None:
        """Create the shared projections for the first adapter, or check that a later one fits them."""
        not_linear = [
            f"{layer.path} ({layer.view.layer_type})" for layer in layers if layer.view.kind != "linear"
        ]
        if not_linear:
            raise UnsupportedLayerError(
                f"VeRA adapts linear layers only (nn.Linear, GPT-2 Conv1D, quantized linear); "
                f"remove these from target_modules: {not_linear}"
            )
        max_in = max(layer.view.in_features for layer in layers)
        max_out = max(layer.view.out_features for layer in layers)
        vera_A, vera_B = owner._modules.get("vera_A"), owner._modules.get("vera_B")
        if isinstance(vera_A, BufferDict) and isinstance(vera_B, BufferDict) and len(vera_A):
            shared_A, shared_B = _check_fits(vera_A, vera_B, config, name, max_in, max_out)
        else:
            shared_A, shared_B = make_projections(config.projection_prng_key, config.r, max_in, max_out)
            device = next((lay.view.device for lay in layers if lay.view.device.type != "meta"), None)
            if device is not None:
                shared_A, shared_B = shared_A.to(device), shared_B.to(device)
            vera_A = BufferDict(config.save_projection, config.projection_prng_key)
            vera_B = BufferDict(config.save_projection, config.projection_prng_key)
            owner.vera_A, owner.vera_B = vera_A, vera_B
        # Every adapter's entry is the same tensor: one copy in memory whatever the adapter count.
        vera_A[name], vera_B[name] = shared_A, shared_B
        for layer in layers:
            cast(VeraLayer, layer).projections = (vera_A, vera_B)  # the core passes this class's layers

    def create_adapter(self, name: str, config: VeraConfig) -> None:
        r, out = config.r, self.view.out_features
        self.r[name] = r
        self.vera_dropout[name] = (
            nn.Dropout(config.vera_dropout) if config.vera_dropout > 0 else nn.Identity()
        )
        if config.init_weights:
            self.vera_lambda_b[name] = nn.Parameter(torch.zeros(out))
            self.vera_lambda_d[name] = nn.Parameter(torch.full((r,), config.d_initial))
        else:  # random (tests): both vectors nonzero so the update is visible
            self.vera_lambda_b[name] = nn.Parameter(torch.ones(out))
            self.vera_lambda_d[name] = nn.Parameter(torch.randn(r))

    def sliced_projections(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A_s (r, in), B_s (out, r))``: this layer's views of the shared projections (no copy)."""
        if self.projections is None:
            raise RuntimeError("this VeRA layer has no projections; it was not built through get_peft_model")
        vera_A, vera_B = self.projections
        return vera_A[name][:, : self.view.in_features], vera_B[name][: self.view.out_features, :]

    def adapter_forward(self, x: torch.Tensor, result: torch.Tensor, name: str) -> torch.Tensor:
        lambda_b, lambda_d = self.vera_lambda_b[name], self.vera_lambda_d[name]
        A, B = (p.to(device=lambda_d.device, dtype=lambda_d.dtype) for p in self.sliced_projections(name))
        h = self.vera_dropout[name](x.to(lambda_d.dtype))
        projected = F.linear(lambda_d * F.linear(h, A), B)
        # Not torch.addcmul: its backward scales the (tokens, out) product by its `value` once more,
        # an extra full pass that costs more in training than the fused forward saves.
        return result + (lambda_b * projected).to(result.dtype)

    def delta_weight(self, name: str) -> torch.Tensor:
        left, right = self._delta_factors(name)
        return left @ right

    def add_delta_to_weight(self, name: str, alpha: float) -> None:
        # One fused matmul-accumulate into the weight instead of a weight-sized delta and an add.
        left, right = self._delta_factors(name)
        self.view.update_weight(lambda w: w.addmm_(left, right, alpha=alpha), left.dtype)

    def _delta_factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(diag(lambda_b) B_s, diag(lambda_d) A_s)``, whose product is the update, in float32."""
        # float32 whatever the adapter dtype: low-precision matmuls on CPU are slow and lossy.
        A, B = (p.float() for p in self.sliced_projections(name))
        lambda_b = self.vera_lambda_b[name].detach().float().to(A.device)
        lambda_d = self.vera_lambda_d[name].detach().float().to(A.device)
        return lambda_b.unsqueeze(-1) * B, lambda_d.unsqueeze(-1) * A


def _check_fits(
    vera_A: BufferDict, vera_B: BufferDict, config: Any, name: str, max_in: int, max_out: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The existing projections, if adapter ``name`` may share them; otherwise a clear error."""
    first = vera_A.keys()[0]
    if config.projection_prng_key != vera_A.prng_key:
        raise ValueError(
            f"VeRA adapter {name!r} has projection_prng_key={config.projection_prng_key} but this model's "
            f"adapters use {vera_A.prng_key}; every VeRA adapter of a model shares one pair of projections, "
            "so they must share the key"
        )
    if config.save_projection != vera_A.persistent:
        raise ValueError(
            f"VeRA adapter {name!r} has save_projection={config.save_projection} but this model's adapters "
            f"use {vera_A.persistent}; all VeRA adapters of a model must save the projections, or none"
        )
    shared_A, shared_B = vera_A[first], vera_B[first]
    r, have_in = shared_A.shape
    have_out = shared_B.shape[0]
    if config.r != r or max_in > have_in or max_out > have_out:
        raise ValueError(
            f"VeRA adapter {name!r} needs projections vera_A ({config.r}, >= {max_in}) and vera_B "
            f"(>= {max_out}, {config.r}), but the shared ones made for adapter {first!r} are vera_A "
            f"{tuple(shared_A.shape)} and vera_B {tuple(shared_B.shape)}; use the same r, and add the "
            "adapter whose targets are largest first"
        )
    return shared_A, shared_B

"""The SHiRA layer: ``y = base(x) + x @ S.T`` where ``S`` is sparse with K trained entries.

Per adapter: ``shira_weight`` ``(K,)`` trained values and ``shira_indices`` ``(2, K)`` int32
positions (row = output index, column = input index), ``K = r * (in + out)``. The indices are
buffers (saved and moved with the model, never trained) in a small module keyed by adapter
name, so the core's generic state-dict mapping writes them as ``<layer>.shira_indices``.
Merging adds the K values to the base weight in place; unmerging subtracts them.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from peftkit import AdapterLayer, UnsupportedLayerError
from peftkit_shira.config import ShiraConfig
from peftkit_shira.masks import budget, indices_from_mask_fn, layer_seed, random_indices
from peftkit_shira.sparse import SparsePattern


class IndexBuffers(nn.Module):
    """Integer tensors keyed by adapter name, held as buffers so they follow ``.to()`` and the state dict."""

    def __setitem__(self, name: str, tensor: torch.Tensor) -> None:
        self.register_buffer(name, tensor)

    def __getitem__(self, name: str) -> torch.Tensor:
        buffer = self._buffers[name]
        if buffer is None:  # never stored by __setitem__; a buffer set to None elsewhere is gone
            raise KeyError(name)
        return buffer

    def __contains__(self, name: object) -> bool:
        return name in self._buffers

    def pop(self, name: str, default: Any = None) -> Any:
        """Remove and return the tensor of ``name`` (the core calls this when an adapter is deleted)."""
        return self._buffers.pop(name, default)

    def keys(self) -> list[str]:
        return list(self._buffers)


class ShiraLayer(AdapterLayer[ShiraConfig]):
    adapter_dicts = ("shira_indices", "_patterns")

    def __init__(self, base_layer: nn.Module, view: Any) -> None:
        super().__init__(base_layer, view)
        self.shira_weight = nn.ParameterDict()
        self.shira_indices = IndexBuffers()
        # adapter name -> SparsePattern of its current indices (rebuilt when they are replaced or loaded)
        self._patterns: dict[str, SparsePattern] = {}

    @property
    def _where(self) -> str:
        return self.path or self.view.layer_type

    def create_adapter(self, name: str, config: Any) -> None:
        view = self.view
        if view.kind != "linear":
            raise UnsupportedLayerError(
                f"SHiRA adapts linear layers (nn.Linear, transformers Conv1D); {self._where} is a "
                f"{view.layer_type}: remove it from target_modules"
            )
        count = budget(config.r, view.in_features, view.out_features)
        if count > view.in_features * view.out_features:
            raise ValueError(
                f"SHiRA r={config.r} asks for r * (in + out) = {count} entries of {self._where}, which has only "
                f"{view.in_features} * {view.out_features} = {view.in_features * view.out_features}; lower r"
            )
        on_meta = torch.get_default_device().type == "meta"  # low_cpu_mem_usage: the checkpoint fills it
        if on_meta:
            indices = torch.empty(2, count, dtype=torch.int32)
        else:
            indices = self._choose_positions(config, count).to(view.device)
        values = torch.zeros(count) if config.init_weights else torch.randn(count)
        self.shira_weight[name] = nn.Parameter(values)
        self.shira_indices[name] = indices

    def _choose_positions(self, config: Any, count: int) -> torch.Tensor:
        view = self.view
        mask_fn = getattr(config, "mask_fn", None)
        if mask_fn is not None:
            return indices_from_mask_fn(
                mask_fn, self.base_layer, config.r, view.out_features, view.in_features, self._where
            )
        if config.mask_type != "random" and not config.inference_mode:
            warnings.warn(
                f"SHiRA mask_type={config.mask_type!r} is not built in and config.mask_fn is not set: "
                "drawing random positions (a loaded adapter replaces them with its saved ones)",
                stacklevel=2,
            )
        seed = None if config.random_seed is None else layer_seed(config.random_seed, self._where)
        return random_indices(view.out_features, view.in_features, count, seed)

    def pattern(self, name: str) -> SparsePattern:
        """The sparse pattern of adapter ``name``, rebuilt (and checked) whenever its indices change."""
        indices = self.shira_indices[name]
        cached = self._patterns.get(name)
        if cached is None or cached.indices is not indices or cached.version != indices._version:
            cached = SparsePattern(
                indices, self.view.out_features, self.view.in_features, f"{self._where} (adapter {name!r})"
            )
            self._patterns[name] = cached
        return cached

    def adapter_forward(self, x: torch.Tensor, result: torch.Tensor, name: str) -> torch.Tensor:
        values = self.shira_weight[name]
        x2d = x.reshape(-1, self.view.in_features).to(values.dtype)
        if torch.compiler.is_compiling():
            # Under torch.compile: the sparse update scattered into a dense (out, in) matrix from the
            # index buffer, then one matmul; ops Dynamo traces into one graph (the CSR pattern is built
            # and checked in Python, with data-dependent branches). A per-entry gather over the batch
            # traces too, but materialises (tokens, K) and ran 9x slower under inductor.
            indices = self.shira_indices[name]
            dense = values.new_zeros(self.view.out_features, self.view.in_features)
            dense = dense.index_put((indices[0].long(), indices[1].long()), values)
            delta = (x2d @ dense.T).to(result.dtype)
        else:
            delta = self.pattern(name).matmul(x2d, values).to(result.dtype)
        # The product may come transposed: add it to a 2-d view of the result rather than copy it into shape.
        return (result.reshape(-1, self.view.out_features) + delta).view(result.shape)

    def delta_weight(self, name: str) -> torch.Tensor:
        return self.pattern(name).dense(self.shira_weight[name])

    def add_delta_to_weight(self, name: str, alpha: float) -> None:
        rows, cols = self.pattern(name).rows_cols()
        values = self.shira_weight[name].detach()
        self.view.index_add_to_weight(rows, cols, values if alpha == 1.0 else alpha * values)


def integer_indices(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    """Checkpoint translation: ``shira_indices`` saved as floats (Hugging Face PEFT does so on Windows) become int32.

    Returns None when there is nothing to translate.
    """
    floats = [k for k, v in tensors.items() if k.endswith(".shira_indices") and v.is_floating_point()]
    if not floats:
        return None
    fixed = dict(tensors)
    for key in floats:
        fixed[key] = tensors[key].round().to(torch.int32)
    return config, fixed

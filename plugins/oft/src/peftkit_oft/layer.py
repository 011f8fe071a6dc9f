"""The OFT layer: the base layer's input features are rotated by a block-diagonal orthogonal matrix ``R``.

In the view's weight layout this is ``W' = W R^T`` for linear layers (``nn.Linear``, GPT-2
``Conv1D``) and convolutions (``W`` flattened to ``(out, in_channels * kernel volume)``), and
``W' = W R`` for embeddings, whose ``(num_embeddings, dim)`` rows are the vectors rotated
(Hugging Face PEFT rotates the embedding's output). The unmerged forward computes exactly that:

* linear: rotate the input, ``x -> x R``, then run the base layer (so any backend view works);
* embedding: look up, then rotate the looked-up vectors;
* convolution: convolve with the rotated kernel ``W R^T``, the only form that equals the merged
  layer for every input size, stride, padding and dilation.

Several active adapters compose as if merged one after the other in activation order.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from peftkit import AdapterLayer, BaseLayerView, ConfigError
from peftkit_oft.config import OFTConfig
from peftkit_oft.rotation import OFTRotation

if TYPE_CHECKING:
    from peftkit.per_sample import SampleAdapters

try:
    from peftkit.per_sample import current as _sample_adapters
except ImportError:  # a peftkit without per-sample adapters (``adapter_names=[...]``)

    def _sample_adapters() -> SampleAdapters | None:
        return None


class OFTLayer(AdapterLayer[OFTConfig]):
    adapter_dicts = ("r", "oft_block_size")

    def __init__(self, base_layer: nn.Module, view: BaseLayerView) -> None:
        super().__init__(base_layer, view)
        self.oft_R = nn.ModuleDict()
        self.oft_embedding_R = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.oft_block_size: dict[str, int] = {}
        self.kind = _KINDS[view.kind]

    # --- creating -----------------------------------------------------------------------
    def create_adapter(self, name: str, config: OFTConfig) -> None:
        where = self.path or self.view.layer_type
        features = self.kind.features(self.view)
        r, size = config.blocks_for(features, where)
        if size < 2:
            raise ConfigError(
                f"OFT on {where}: a block size of {size} (r={r} blocks of its {features} input features) leaves no "
                "rotation to learn; use fewer, larger blocks (a larger oft_block_size or a smaller r)"
            )
        rotation = OFTRotation(
            r,
            size,
            block_share=config.block_share,
            coft=config.coft,
            eps=config.eps,
            use_cayley_neumann=config.use_cayley_neumann,
            num_cayley_neumann_terms=config.num_cayley_neumann_terms,
            dropout=config.module_dropout,
        )
        if config.init_weights is False:
            nn.init.normal_(rotation.weight, mean=0.0, std=0.1)
        self.kind.store(self)[name] = rotation
        self.r[name] = r
        self.oft_block_size[name] = size

    def rotation(self, name: str) -> OFTRotation:
        """The rotation module of adapter ``name`` (``oft_R`` or, on embeddings, ``oft_embedding_R``)."""
        return cast(OFTRotation, self.kind.store(self)[name])

    # --- forward ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            return super().forward(x, *args, **kwargs)
        per_sample = _sample_adapters()
        if per_sample is not None:
            return self._forward_per_sample(per_sample, x, *args, **kwargs)
        pending = [n for n in self.active_adapters if n not in self.merged_adapters]
        if not pending:
            return self.view.forward(x, *args, **kwargs)
        blocks = [self.rotation(n).blocks(train_dropout=self.training) for n in pending]
        return self.kind.forward(self, x, blocks, args, kwargs)

    def _forward_per_sample(
        self, per_sample: Any, x: torch.Tensor, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Each sample rotated by the adapter named for it (``adapter_names=[...]``); other samples see the base."""
        if self.merged_adapters:
            raise ValueError(
                f"adapter_names cannot be used while adapters {self.merged_adapters} are merged into "
                f"{self.path or 'a layer'}; call unmerge_adapter() first"
            )
        groups = [
            (index, self.rotation(name).blocks(train_dropout=self.training))
            for name, index in per_sample.groups(x.shape[0], x.device)
            if name in self.adapter_configs  # "__base__", or an adapter that does not target this layer
        ]
        if not groups:
            return self.view.forward(x, *args, **kwargs)
        if len(groups) == 1 and groups[0][0] is None:
            return self.kind.forward(self, x, [groups[0][1]], args, kwargs)
        return self.kind.forward_groups(self, x, groups, args, kwargs)

    # --- merging ------------------------------------------------------------------------
    def merged_weight(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        rot = self.rotation(name).blocks().to(weight.dtype)
        return self.kind.merge(weight, rot)

    def unmerged_weight(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        module = self.rotation(name)
        rot = module.blocks().to(weight.dtype)
        return self.kind.unmerge(weight, rot, module.exact)


# --- block algebra on (rows, features) matrices ------------------------------------------------
def _times(matrix: torch.Tensor, rot: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """``matrix @ blockdiag(rot)`` (or ``@ blockdiag(rot)^T``) for ``matrix`` of shape ``(..., features)``."""
    n, b, _ = rot.shape
    split = matrix.reshape(*matrix.shape[:-1], n, b)
    out = torch.einsum("...nk,nck->...nc" if transpose else "...nk,nkc->...nc", split, rot)
    return out.reshape(matrix.shape)


def _solve(matrix: torch.Tensor, rot: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """``X`` with ``X @ blockdiag(rot) = matrix`` (``rot^T`` with ``transpose``), by a true solve per block."""
    n, b, _ = rot.shape
    split = matrix.reshape(-1, n, b).transpose(0, 1)  # (n, rows, b)
    coef = rot.transpose(1, 2) if transpose else rot
    return torch.linalg.solve(coef, split, left=False).transpose(0, 1).reshape(matrix.shape)


class _LinearKind:
    """``nn.Linear`` and GPT-2 ``Conv1D``: the view's weight is ``(out, in)`` and ``W' = W R^T``."""

    @staticmethod
    def features(view: Any) -> int:
        return view.in_features

    @staticmethod
    def store(layer: OFTLayer) -> nn.ModuleDict:
        return layer.oft_R

    @staticmethod
    def forward(layer: OFTLayer, x: torch.Tensor, blocks: list[torch.Tensor], args: Any, kwargs: Any) -> Any:
        # y = x (W R_1^T ... R_n^T)^T = x R_n ... R_1 W^T: the last adapter rotates the input first.
        h = x
        for rot in reversed(blocks):
            h = _times(h.to(rot.dtype), rot)
        return layer.view.forward(h.to(x.dtype), *args, **kwargs)

    @staticmethod
    def forward_groups(
        layer: OFTLayer,
        x: torch.Tensor,
        groups: list[tuple[torch.Tensor, torch.Tensor]],
        args: Any,
        kwargs: Any,
    ) -> Any:
        h = x
        for index, rot in groups:
            h = h.index_copy(0, index, _times(x[index].to(rot.dtype), rot).to(x.dtype))
        return layer.view.forward(h, *args, **kwargs)

    @staticmethod
    def merge(weight: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
        return _times(weight.reshape(weight.shape[0], -1), rot, transpose=True).reshape(weight.shape)

    @staticmethod
    def unmerge(weight: torch.Tensor, rot: torch.Tensor, exact: bool) -> torch.Tensor:
        flat = weight.reshape(weight.shape[0], -1)
        # W = W' R^-T: R itself when R is orthogonal, a solve against R^T otherwise.
        out = _times(flat, rot) if exact else _solve(flat, rot, transpose=True)
        return out.reshape(weight.shape)


class _ConvKind(_LinearKind):
    """Convolutions: the kernel flattened to ``(out, in_channels * kernel volume)``, rotated like a linear weight."""

    @staticmethod
    def features(view: Any) -> int:
        if view.groups != 1:
            raise ConfigError(
                f"OFT cannot adapt a grouped {view.layer_type} (groups={view.groups}): the rotation mixes all input "
                "channels of the kernel; exclude this module (exclude_modules=[...])"
            )
        return view.in_features * math.prod(view.kernel_size)

    @staticmethod
    def forward(layer: OFTLayer, x: torch.Tensor, blocks: list[torch.Tensor], args: Any, kwargs: Any) -> Any:
        base = layer.view.read_weight()
        weight = base.to(blocks[0].dtype)
        for rot in blocks:
            weight = _ConvKind.merge(weight, rot.to(weight.dtype))
        module = cast("nn.Conv1d | nn.Conv2d | nn.Conv3d", layer.view.module)
        # _conv_forward applies the layer's padding mode, stride, dilation and bias exactly as its own forward.
        return module._conv_forward(x, weight.to(base.dtype), module.bias)

    @staticmethod
    def forward_groups(
        layer: OFTLayer,
        x: torch.Tensor,
        groups: list[tuple[torch.Tensor, torch.Tensor]],
        args: Any,
        kwargs: Any,
    ) -> Any:
        result = layer.view.forward(x, *args, **kwargs)
        for index, rot in groups:
            result = result.index_copy(0, index, _ConvKind.forward(layer, x[index], [rot], args, kwargs))
        return result


class _EmbeddingKind:
    """``nn.Embedding``: the looked-up vectors are rotated, so ``W' = W R`` on the ``(num_embeddings, dim)`` table."""

    @staticmethod
    def features(view: Any) -> int:
        return view.out_features

    @staticmethod
    def store(layer: OFTLayer) -> nn.ModuleDict:
        return layer.oft_embedding_R

    @staticmethod
    def forward(layer: OFTLayer, x: torch.Tensor, blocks: list[torch.Tensor], args: Any, kwargs: Any) -> Any:
        result = layer.view.forward(x, *args, **kwargs)
        h = result
        for rot in blocks:
            h = _times(h.to(rot.dtype), rot)
        return h.to(result.dtype)

    @staticmethod
    def forward_groups(
        layer: OFTLayer,
        x: torch.Tensor,
        groups: list[tuple[torch.Tensor, torch.Tensor]],
        args: Any,
        kwargs: Any,
    ) -> Any:
        result = layer.view.forward(x, *args, **kwargs)
        out = result
        for index, rot in groups:
            out = out.index_copy(0, index, _times(result[index].to(rot.dtype), rot).to(result.dtype))
        return out

    @staticmethod
    def merge(weight: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
        return _times(weight, rot)

    @staticmethod
    def unmerge(weight: torch.Tensor, rot: torch.Tensor, exact: bool) -> torch.Tensor:
        return _times(weight, rot, transpose=True) if exact else _solve(weight, rot)


_KINDS: dict[str, type[_LinearKind] | type[_EmbeddingKind]] = {
    "linear": _LinearKind,
    "conv": _ConvKind,
    "embedding": _EmbeddingKind,
}

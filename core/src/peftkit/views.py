"""Base-layer views: one small object per adapted layer that hides how its weight is stored.

Methods are written once against this interface; a backend (dense here, bitsandbytes in its
plugin) supplies the view. The weight a view reads and writes is always in PyTorch's layout
for the layer kind: ``(out, in)`` for linear layers (GPT-2 ``Conv1D`` is transposed for you),
``(out, in/groups, *kernel)`` for convolutions, ``(num_embeddings, dim)`` for embeddings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from peftkit.errors import MergeNotSupportedError


class BaseLayerView:
    """What a method may ask of the layer it adapts. Subclass and override what differs.

    Attributes: ``kind`` is ``"linear"``, ``"embedding"`` or ``"conv"`` (the kinds a backend
    declares in ``peftkit_describe_backends``); ``in_features`` and ``out_features`` are the
    logical sizes (channels for convolutions, vocabulary and dim for embeddings);
    ``fan_in_fan_out`` is True when the stored weight is ``(in, out)``; ``adapter_layer`` is the
    adapter layer built around this view (None until there is one).
    """

    kind: str = "linear"
    supports_merge: bool = True
    fan_in_fan_out: bool = False

    def __init__(self, module: nn.Module, in_features: int, out_features: int) -> None:
        self._module = module
        self.adapter_layer: nn.Module | None = None
        self.in_features = in_features
        self.out_features = out_features

    @property
    def module(self) -> nn.Module:
        """The layer this view wraps; assigning another one is :meth:`replace_module`."""
        return self._module

    @module.setter
    def module(self, new: nn.Module) -> None:
        self.replace_module(new)

    def replace_module(self, new: nn.Module) -> None:
        """Wrap ``new`` from now on: for backends that store a written weight by building a new layer.

        Call it from ``write_weight`` (HQQ-style re-quantization). ``new`` must have the old layer's
        tensor names, so state-dict keys do not change; it takes over the old layer's train/eval
        mode and ``requires_grad`` flags, and the adapter layer holds it as its ``base_layer``, so
        ``.to()``, saving and unloading see it.
        """
        if not isinstance(new, nn.Module):
            raise TypeError(f"{type(self).__name__}.replace_module expects a torch.nn.Module, got {new!r}")
        old = getattr(self, "_module", None)  # None while a subclass's __init__ assigns the first one
        if old is not None and old is not new:
            _adopt(old, new, self.layer_type)
        self._module = new
        layer = getattr(self, "adapter_layer", None)
        if layer is not None:
            layer.base_layer = new

    @property
    def layer_type(self) -> str:
        return type(self.module).__name__

    @property
    def weight_dtype(self) -> torch.dtype:
        return _weight(self.module).dtype

    @property
    def device(self) -> torch.device:
        return _weight(self.module).device

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.module, "bias", None)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The base layer's own forward."""
        return self.module(x, *args, **kwargs)

    def read_weight(self) -> torch.Tensor:
        """The dense weight in the layout above; may share memory with the layer (do not modify it)."""
        raise NotImplementedError

    def write_weight(self, weight: torch.Tensor) -> None:
        """Store ``weight`` (same layout as ``read_weight``) into the layer, in the layer's dtype."""
        raise MergeNotSupportedError(f"{self.layer_type} cannot be written to by peftkit")

    def add_to_weight(self, delta: torch.Tensor) -> None:
        """Add ``delta`` to the weight; dense views do it in place."""
        self.write_weight(self.read_weight().to(delta.dtype) + delta)

    def update_weight(self, update: Callable[[torch.Tensor], Any], dtype: torch.dtype) -> None:
        """Apply ``update``, an in-place operation, to the weight seen in ``dtype``.

        Methods use it to merge without building a weight-sized delta (``addmm_``, a broadcast
        ``add_``). This fallback updates a ``dtype`` copy and writes it back; dense views of that
        dtype hand ``update`` the layer's own tensor.
        """
        weight = self.read_weight().to(dtype, copy=True)
        update(weight)
        self.write_weight(weight)

    def index_add_to_weight(self, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor) -> None:
        """Add ``values`` at the ``(rows, cols)`` positions of a linear ``(out, in)`` weight (sparse methods).

        This fallback goes through a dense delta; dense views override it with an in-place update.
        """
        delta = torch.zeros(self.out_features, self.in_features, dtype=values.dtype, device=values.device)
        delta.index_put_((rows.long(), cols.long()), values, accumulate=True)
        self.add_to_weight(delta)

    def add_to_bias(self, delta: torch.Tensor) -> None:
        """Add ``delta`` to the bias; a layer without bias cannot take one."""
        bias = self.bias
        if bias is None:
            raise MergeNotSupportedError(f"{self.layer_type} has no bias to merge an adapter bias into")
        bias.data.add_(delta.to(bias.dtype))


def _tensor_names(module: nn.Module) -> list[str]:
    return sorted([*(n for n, _ in module.named_parameters()), *(n for n, _ in module.named_buffers())])


def _adopt(old: nn.Module, new: nn.Module, layer_type: str) -> None:
    """Make ``new`` stand in for ``old``: the same tensor names, train/eval mode and frozen parameters."""
    if _tensor_names(new) != _tensor_names(old):
        raise ValueError(
            f"the {type(new).__name__} replacing a {layer_type} holds tensors {_tensor_names(new)}, the old one "
            f"{_tensor_names(old)}; saved keys would change, so build the replacement with the old layer's settings"
        )
    wanted = {name: param.requires_grad for name, param in old.named_parameters()}
    for name, param in new.named_parameters():
        if param.requires_grad != wanted[name] and (param.is_floating_point() or not wanted[name]):
            param.requires_grad_(wanted[name])
    new.train(old.training)


class DenseView(BaseLayerView):
    """A view on a layer whose ``weight`` parameter is an ordinary float tensor."""

    def read_weight(self) -> torch.Tensor:
        weight = _weight(self.module).data
        return weight.T if self.fan_in_fan_out else weight

    def write_weight(self, weight: torch.Tensor) -> None:
        target = _weight(self.module).data
        target.copy_(weight.T if self.fan_in_fan_out else weight)

    def add_to_weight(self, delta: torch.Tensor) -> None:
        target = _weight(self.module).data
        target.add_((delta.T if self.fan_in_fan_out else delta).to(target.dtype))

    def update_weight(self, update: Callable[[torch.Tensor], Any], dtype: torch.dtype) -> None:
        target = _weight(self.module).data
        if target.dtype != dtype:
            super().update_weight(update, dtype)
            return
        update(target.T if self.fan_in_fan_out else target)

    def index_add_to_weight(self, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor) -> None:
        # Touches only the given entries: O(len(values)) instead of a dense O(out * in) update.
        target = _weight(self.module).data
        first, second = (cols.long(), rows.long()) if self.fan_in_fan_out else (rows.long(), cols.long())
        values = values.to(target.dtype)
        if target.is_contiguous():  # one flat scatter-add: several times faster than a 2-d index_put_
            target.view(-1).index_add_(0, first * target.shape[1] + second, values)
        else:
            target.index_put_((first, second), values, accumulate=True)


class LinearView(DenseView):
    kind = "linear"


class Conv1DView(DenseView):
    """transformers' GPT-2 ``Conv1D``: a linear layer whose weight is stored ``(in, out)``."""

    kind = "linear"
    fan_in_fan_out = True

    def __init__(self, module: nn.Module) -> None:
        in_features, out_features = _weight(module).shape
        super().__init__(module, in_features, out_features)


class EmbeddingView(DenseView):
    kind = "embedding"

    def __init__(self, module: nn.Embedding) -> None:
        super().__init__(module, module.num_embeddings, module.embedding_dim)

    def embedding_kwargs(self) -> dict[str, Any]:
        """The arguments ``F.embedding`` needs to reproduce this layer's lookup."""
        m = self.module
        return {
            "padding_idx": m.padding_idx,
            "max_norm": m.max_norm,
            "norm_type": m.norm_type,
            "scale_grad_by_freq": m.scale_grad_by_freq,
            "sparse": m.sparse,
        }


class ConvView(DenseView):
    kind = "conv"

    def __init__(self, module: nn.Conv1d | nn.Conv2d | nn.Conv3d) -> None:
        super().__init__(module, module.in_channels, module.out_channels)
        self.conv_dim = module.weight.dim() - 2
        self.kernel_size = tuple(module.kernel_size)
        self.stride = tuple(module.stride)
        self.padding = module.padding
        self.dilation = tuple(module.dilation)
        self.groups = module.groups


def _weight(module: nn.Module) -> torch.Tensor:
    # nn.Module types the attributes it does not declare as Tensor | Module; a layer's weight is a tensor.
    return cast(torch.Tensor, module.weight)

"""LoRA's part in hot-swapping: ranks padded with zeros and scalings held as tensors.

A compiled graph is specialised on tensor shapes and on Python numbers. So
``prepare_model_for_compiled_hotswap`` pads every adapter's ``A`` ``(r, in)`` and ``B`` ``(out, r)``
to ``target_rank`` with zero rows / columns (``B @ A`` is unchanged) and turns each scaling into a
0-dim tensor; a later swap writes a smaller-rank adapter into the leading slice, zeros the rest and
fills the scaling tensor in place, so neither shapes nor constants change.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# In-memory keys of the low-rank factors: the rank is dim 0 of A and dim 1 of B.
_RANK_DIM = {"lora_A": 0, "lora_B": 1, "lora_embedding_A": 0, "lora_embedding_B": 1}


def _factor(key: str) -> str | None:
    head = key.split(".", 1)[0]
    return head if head in _RANK_DIM else None


def prepare(layer: Any, target_rank: int | None) -> None:
    """Pad every adapter of ``layer`` to ``target_rank`` (default: its largest rank) and make scalings tensors."""
    for name in layer.adapter_names:
        if name in layer.lora_magnitude_vector:
            raise ValueError(f"hot-swapping DoRA adapters is not supported ({layer.path}, adapter {name!r})")
        rank = layer.r[name]
        target = rank if target_rank is None else target_rank
        if target < rank:
            raise ValueError(f"target_rank={target} is below adapter {name!r}'s rank {rank} on {layer.path}")
        if target > rank:
            _pad(layer, name, target)
        device = next(layer.adapter_parameters(name)).device
        layer.scaling[name] = torch.tensor(float(layer.scaling[name]), device=device)


def _pad(layer: Any, name: str, target: int) -> None:
    if name in layer.lora_A and isinstance(layer.lora_A[name], nn.Linear):
        for module, dim in ((layer.lora_A[name], 0), (layer.lora_B[name], 1)):
            module.weight = nn.Parameter(
                _zero_padded(module.weight.detach(), dim, target), module.weight.requires_grad
            )
            if dim == 0:
                module.out_features = target
            else:
                module.in_features = target
    elif name in layer.lora_embedding_A:
        for table, dim in ((layer.lora_embedding_A, 0), (layer.lora_embedding_B, 1)):
            table[name] = nn.Parameter(
                _zero_padded(table[name].detach(), dim, target), table[name].requires_grad
            )
    else:
        raise ValueError(
            f"padding LoRA ranks is supported on linear and embedding layers, not {layer.view.layer_type}"
        )


def _zero_padded(weight: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    shape = list(weight.shape)
    shape[dim] = size
    out = weight.new_zeros(shape)
    out.narrow(dim, 0, weight.shape[dim]).copy_(weight)
    return out


def check(current: torch.Tensor, new: torch.Tensor, key: str) -> str | None:
    """Why ``new`` cannot go into ``current``: LoRA factors may be of a smaller rank than the prepared one."""
    factor = _factor(key)
    if factor is None or current.dim() != new.dim():
        return (
            None
            if tuple(current.shape) == tuple(new.shape)
            else f"shape {tuple(new.shape)} != {tuple(current.shape)}"
        )
    dim = _RANK_DIM[factor]
    others_match = all(
        c == n for i, (c, n) in enumerate(zip(current.shape, new.shape, strict=True)) if i != dim
    )
    if not others_match:
        return f"shape {tuple(new.shape)} does not fit the loaded {tuple(current.shape)}"
    if new.shape[dim] > current.shape[dim]:
        return (
            f"rank {new.shape[dim]} is above the loaded rank {current.shape[dim]}; call "
            "peftkit.prepare_model_for_compiled_hotswap(model, target_rank=...) before compiling"
        )
    return None


def write(current: torch.Tensor, new: torch.Tensor, key: str) -> None:
    """Copy ``new`` into the leading slice of ``current`` and zero the rest (a smaller rank)."""
    factor = _factor(key)
    if factor is None or tuple(current.shape) == tuple(new.shape):
        current.copy_(new)
        return
    dim = _RANK_DIM[factor]
    current.zero_()
    current.narrow(dim, 0, new.shape[dim]).copy_(new)


def adopt_scaling(layer: Any, name: str, config: Any) -> None:
    """The new adapter's scaling for this layer, written into the scaling tensor when prepared."""
    import math

    r, alpha = config.rank_and_alpha(layer.path)
    scaling = alpha / math.sqrt(r) if config.use_rslora else alpha / r
    current = layer.scaling[name]
    if isinstance(current, torch.Tensor):
        current.fill_(scaling)
    else:
        layer.scaling[name] = scaling
    layer.initial_scaling[name] = scaling
    layer.r[name] = r

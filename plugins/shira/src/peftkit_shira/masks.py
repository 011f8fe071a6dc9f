"""Choosing the positions a SHiRA adapter trains: random draws and user mask functions.

Positions are returned as ``(2, K)`` int32 indices, row (output index) over column (input
index), sorted row-major: the on-disk ``shira_indices`` format and the order the sparse
kernels want.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# Below this many weights (or when most of them are wanted) one permutation is the cheapest draw.
_SMALL = 1 << 16
_CPU = torch.device("cpu")


def budget(r: int, in_features: int, out_features: int) -> int:
    """The number of trained entries for a layer: ``r * (in + out)``, the parameter count of LoRA rank ``r``."""
    return r * (in_features + out_features)


def layer_seed(random_seed: int, path: str) -> int:
    """A generator seed for one layer, stable across processes and Python versions (unlike ``hash``)."""
    digest = hashlib.blake2b(f"{random_seed}:{path}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # 63 bits: any torch.Generator accepts it


def random_positions(numel: int, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` distinct flat positions in ``range(numel)``, uniformly at random, sorted (int64).

    Costs about ``O(count)``: draws with replacement, drops repeats and tops up, instead of a
    permutation of all ``numel`` positions (hundreds of MB for a large layer). Drawn on the CPU,
    so a seed gives the same positions whatever the device or ``torch.set_default_device``.
    """
    if not 0 <= count <= numel:
        raise ValueError(f"cannot choose {count} distinct positions out of {numel}")
    if numel <= _SMALL or 4 * count >= numel:
        return torch.randperm(numel, generator=generator, device=_CPU)[:count].sort().values
    chosen = torch.empty(0, dtype=torch.long, device=_CPU)
    while chosen.numel() < count:
        missing = count - chosen.numel()
        # Oversample a little: at most a quarter of the positions are wanted, so few draws repeat.
        draw = torch.randint(numel, (missing + missing // 8 + 64,), generator=generator, device=_CPU)
        chosen = torch.cat([chosen, draw]).unique()
    if chosen.numel() > count:
        # unique() sorted them: keep a random subset, not the smallest positions.
        keep = torch.randperm(chosen.numel(), generator=generator, device=_CPU)[:count]
        chosen = chosen[keep].sort().values
    return chosen


def random_indices(out_features: int, in_features: int, count: int, seed: int | None = None) -> torch.Tensor:
    """A uniformly random mask as ``(2, count)`` int32 indices; ``seed=None`` draws from torch's global RNG."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    flat = random_positions(out_features * in_features, count, generator)
    return torch.stack([flat // in_features, flat % in_features]).to(torch.int32)


def indices_from_mask_fn(
    mask_fn: Callable[[nn.Module, int], Any],
    base_layer: nn.Module,
    r: int,
    out_features: int,
    in_features: int,
    where: str,
) -> torch.Tensor:
    """Call a user mask function and turn its 0/1 mask into ``(2, K)`` int32 indices; ``where`` names the layer.

    A mask of the wrong type, shape, dtype, values or number of ones is an error saying which.
    """
    count = budget(r, in_features, out_features)
    mask = mask_fn(base_layer, r)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(
            f"SHiRA mask_fn returned a {type(mask).__name__} for {where}; it must return a torch.Tensor"
        )
    if tuple(mask.shape) != (out_features, in_features):
        raise ValueError(
            f"SHiRA mask_fn returned a mask of shape {tuple(mask.shape)} for {where}; expected "
            f"(out_features, in_features) = {(out_features, in_features)} (this layout also for GPT-2 Conv1D)"
        )
    if mask.dtype.is_complex:
        raise ValueError(
            f"SHiRA mask_fn returned a mask of dtype {mask.dtype} for {where}; return a bool tensor "
            "(or an integer / float tensor of 0s and 1s)"
        )
    if mask.dtype != torch.bool:
        stray = mask[(mask != 0) & (mask != 1)]
        if stray.numel():
            raise ValueError(
                f"SHiRA mask_fn returned a mask with values other than 0 and 1 for {where} "
                f"(e.g. {stray.flatten()[0].item()}); return a 0/1 mask"
            )
    ones = int(torch.count_nonzero(mask))
    if ones != count:
        raise ValueError(
            f"SHiRA mask_fn returned a mask with {ones} ones for {where}; r={r} needs exactly "
            f"r * (in + out) = {r} * ({in_features} + {out_features}) = {count}"
        )
    return torch.nonzero(mask).T.to(device="cpu", dtype=torch.int32).contiguous()

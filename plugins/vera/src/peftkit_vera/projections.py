"""VeRA's shared random projections: how they are generated and where they are kept.

One pair per model, sized to the largest targeted layer: ``vera_A`` ``(r, max_in)`` and
``vera_B`` ``(max_out, r)``. A layer with ``in`` inputs and ``out`` outputs uses the slices
``vera_A[:, :in]`` and ``vera_B[:out, :]``. They are frozen buffers, never parameters.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn


def kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """A float32 tensor drawn from Kaiming-uniform (gain sqrt(2), fan_in = ``shape[1]``) with ``generator``.

    The bound arithmetic and the single ``uniform_`` draw are what Hugging Face PEFT uses, so the
    same seed gives bit-identical projections there and here.
    """
    std = math.sqrt(2) / math.sqrt(shape[1])
    bound = math.sqrt(3.0) * std
    with torch.no_grad():
        return torch.empty(shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)


def make_projections(key: int, r: int, max_in: int, max_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(vera_A (r, max_in), vera_B (max_out, r))`` from seed ``key``: A is drawn first, then B, from one CPU generator."""
    generator = torch.Generator(device="cpu").manual_seed(key)
    vera_A = kaiming_uniform((r, max_in), generator)
    vera_B = kaiming_uniform((max_out, r), generator)
    return vera_A, vera_B


class BufferDict(nn.Module):
    """Frozen tensors keyed by adapter name, registered as buffers.

    ``persistent=False`` keeps them out of ``state_dict``, which is how the core knows not to save
    them or expect them on load. ``trainable = False`` tells the core never to turn on their gradients.
    ``prng_key`` records the seed they were generated from, for checking later adapters.
    """

    trainable = False

    def __init__(self, persistent: bool, prng_key: int) -> None:
        super().__init__()
        self.persistent = persistent
        self.prng_key = prng_key

    def __setitem__(self, name: str, tensor: torch.Tensor) -> None:
        self.register_buffer(name, tensor, persistent=self.persistent)

    def __getitem__(self, name: str) -> torch.Tensor:
        buffer = self._buffers[name]
        if buffer is None:  # never stored by __setitem__; a buffer set to None elsewhere is gone
            raise KeyError(name)
        return buffer

    def __delitem__(self, name: str) -> None:
        if name not in self._buffers:
            raise KeyError(name)
        delattr(self, name)

    def __contains__(self, name: object) -> bool:
        return name in self._buffers

    def __len__(self) -> int:
        return len(self._buffers)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._buffers))

    def keys(self) -> list[str]:
        return list(self._buffers)

    def extra_repr(self) -> str:
        shapes = {name: tuple(t.shape) for name, t in self._buffers.items() if t is not None}
        return f"persistent={self.persistent}, prng_key={self.prng_key}, {shapes}"

"""Per-sample adapters: one adapter name per sample of a batch, for the length of one call.

``PeftModel.forward`` / ``generate`` put the names into a context variable around the call and
every adapter layer reads it once in its own forward. Nothing is registered on or removed from
the model's modules per call, so the extra cost does not grow with the number of modules.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from peftkit._adapter_names import BASE  # noqa: F401  (re-exported: "no adapter" in ``adapter_names``)


class SampleAdapters:
    """The adapter name of each sample, by batch size: an encoder sees the batch as given, the
    decoder of a beam search or of ``num_return_sequences > 1`` sees each sample repeated."""

    def __init__(self, names: Sequence[str], repeat: int = 1) -> None:
        names = tuple(names)
        self.by_batch = {len(names): names}
        if repeat > 1:
            self.by_batch[len(names) * repeat] = tuple(n for n in names for _ in range(repeat))
        self._groups: dict[tuple[int, torch.device], list[tuple[str, torch.Tensor | None]]] = {}

    def groups(self, batch_size: int, device: torch.device) -> list[tuple[str, torch.Tensor | None]]:
        """``(adapter name, indices of its samples)`` for a batch of ``batch_size``; indices are None when
        the name covers the whole batch. Computed once per batch size and device, then reused by every layer."""
        key = (batch_size, device)
        cached = self._groups.get(key)
        if cached is not None:
            return cached
        names = self.by_batch.get(batch_size)
        if names is None:
            sizes = " or ".join(str(n) for n in self.by_batch)
            raise ValueError(
                f"adapter_names has one name per sample for a batch of {sizes}, but a layer received a batch "
                f"of {batch_size}; pass exactly one adapter name per input sample"
            )
        order = list(dict.fromkeys(names))
        if len(order) == 1:
            groups: list[tuple[str, torch.Tensor | None]] = [(order[0], None)]
        else:
            groups = [
                (name, torch.tensor([i for i, n in enumerate(names) if n == name], device=device))
                for name in order
            ]
        self._groups[key] = groups
        return groups


_CURRENT: ContextVar[SampleAdapters | None] = ContextVar("peftkit_sample_adapters", default=None)


# How many per-sample calls are in progress in this process. A plain global, so the ordinary
# forward (no adapter_names) never reads the context variable, which torch.compile cannot trace:
# Dynamo guards on this staying 0 instead.
_IN_PROGRESS = 0


_TRACED: SampleAdapters | None = None  # the names of a per-sample call torch.compile is tracing


def set_traced(adapters: SampleAdapters | None) -> None:
    """Set (or clear) the per-sample names of a call under torch.compile (see PeftModel._traced_per_sample)."""
    global _TRACED
    _TRACED = adapters


def current() -> SampleAdapters | None:
    """The per-sample adapter names of the call in progress, or None outside such a call."""
    if _TRACED is not None:  # set only while torch.compile traces a per-sample call
        return _TRACED
    if _IN_PROGRESS == 0:
        return None
    return _CURRENT.get()


@contextmanager
def sample_adapters(names: Sequence[str], repeat: int = 1) -> Iterator[SampleAdapters]:
    """Use ``names`` (one per sample; ``repeat`` copies each for beam search) in every adapter layer inside the block."""
    global _IN_PROGRESS
    current = SampleAdapters(names, repeat)
    token = _CURRENT.set(current)
    _IN_PROGRESS += 1
    try:
        yield current
    finally:
        _IN_PROGRESS -= 1
        _CURRENT.reset(token)

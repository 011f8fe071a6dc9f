"""Per-sample adapters (``adapter_names=[...]``) for layers that route samples themselves.

``current()`` is None outside a per-sample call; inside one it gives the ``SampleAdapters`` whose
``groups(batch_size, device)`` lists each adapter name with the indices of its samples. A layer
that overrides ``forward`` (OFT does) reads it the way ``AdapterLayer.forward`` does.
"""

from __future__ import annotations

from peftkit._per_sample import BASE, SampleAdapters, current

__all__ = ["BASE", "SampleAdapters", "current"]

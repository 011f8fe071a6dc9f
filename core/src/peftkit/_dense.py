"""The built-in dense backend: views for ordinary float layers, registered like any plugin."""

from __future__ import annotations

from typing import Any

import pluggy

hookimpl = pluggy.HookimplMarker("peftkit")

# layer type name -> the kind of view served for it
LAYER_KINDS = {
    "Linear": "linear",
    "Conv1D (transformers)": "linear",
    "Embedding": "embedding",
    "Conv1d": "conv",
    "Conv2d": "conv",
    "Conv3d": "conv",
}


def _view_table() -> dict[type, Any]:
    from torch import nn

    from peftkit import views

    table: dict[type, Any] = {
        nn.Linear: lambda m: views.LinearView(m, m.in_features, m.out_features),
        nn.Embedding: views.EmbeddingView,
        nn.Conv1d: views.ConvView,
        nn.Conv2d: views.ConvView,
        nn.Conv3d: views.ConvView,
    }
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is optional for plain PyTorch models
        pass
    else:
        table[Conv1D] = views.Conv1DView
    return table


_TABLE: dict[type, Any] | None = None


@hookimpl(trylast=True)
def peftkit_base_layer_view(module: Any) -> Any:
    global _TABLE
    if _TABLE is None:
        _TABLE = _view_table()
    factory = _TABLE.get(type(module))
    if factory is None:
        # Subclasses of the supported types (quantized layers excepted, which their backend answers first).
        for cls, candidate in _TABLE.items():
            if isinstance(module, cls):
                factory = candidate
                break
    if factory is None:
        return None
    dtype = getattr(getattr(module, "weight", None), "dtype", None)
    if dtype is not None and not dtype.is_floating_point:
        # Quantized layers subclass nn.Linear but store integers: a dense view would read garbage.
        return None
    return factory(module)


@hookimpl
def peftkit_describe_backends() -> list[tuple[str, dict[str, str]]]:
    return [("dense", LAYER_KINDS)]

"""DoRA: weight-decomposed LoRA, ``W' = m * (W + s*B@A) / ||W + s*B@A||`` with one norm per output.

The norm is taken per output over the weight in PyTorch layout ``(out, in, *kernel)``; for an
embedding, whose outputs are its ``dim`` columns, that is over the vocabulary of the
``(num_embeddings, dim)`` weight, as in Hugging Face PEFT. ``m`` is stored the way PEFT stores it, so
checkpoints move between the two unchanged: ``lora_magnitude_vector`` of shape ``(out,)`` for linear
layers (GPT-2 ``Conv1D`` included), ``(dim,)`` for embeddings and ``(1, out, 1, ...)`` for
convolutions. As in the paper (section 4.3) the norm is treated as a constant in training: it is
detached, so only ``m`` and the direction get gradients.

Grouped convolutions: ``lora_A`` is a full convolution to ``r`` channels and ``lora_B`` a grouped
1x1 convolution, so the update is not a grouped kernel and cannot be merged. The norm then uses
PEFT's convention, ``(B.view(-1, r) @ A.view(r, -1)).reshape(W.shape)``, which for ``groups=1`` is
the true ``B @ A``; following it exactly is what lets PEFT's trained magnitudes give PEFT's outputs.

Merging is not additive: ``merged_weight`` scales ``W + delta`` by ``m / norm`` and remembers the
norm, which ``unmerged_weight`` needs to invert it exactly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def row_norm(weight: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each row (output) of ``weight``, shape ``(rows,)``."""
    return weight.flatten(1).norm(p=2, dim=1)


def _output_norm(layer: Any, weight: torch.Tensor) -> torch.Tensor:
    """The per-output norm of a weight in the view's layout: embeddings have their outputs as columns."""
    return row_norm(weight.T if layer.view.kind == "embedding" else weight)


def _as_magnitude(norm: torch.Tensor, layer: Any) -> torch.Tensor:
    """Shape a ``(out,)`` vector like the stored magnitude: ``(1, out, 1, ...)`` for convolutions."""
    if layer.view.kind == "conv":
        return norm.view(1, -1, *([1] * layer.view.conv_dim))
    return norm


def lora_weight(layer: Any, name: str, shape: torch.Size) -> torch.Tensor:
    """``B @ A`` without scaling, in the base weight's layout and ``shape`` (PEFT's reshape for groups)."""
    if layer.view.kind == "embedding":
        return (layer.lora_embedding_B[name] @ layer.lora_embedding_A[name]).T
    A = layer.lora_A[name].weight
    B = layer.lora_B[name].weight
    r = A.shape[0]
    return (B.reshape(-1, r) @ A.reshape(r, -1)).reshape(shape)


def create_magnitude(layer: Any, name: str) -> None:
    """Start ``m`` at the norm of the adapted weight, so the layer computes ``W + s*B@A`` at init."""
    weight = layer.view.read_weight()
    with torch.no_grad():
        delta = lora_weight(layer, name, weight.shape).float() * layer.scaling[name]
        norm = _output_norm(layer, weight.to(delta.device).float() + delta)
    layer.lora_magnitude_vector[name] = nn.Parameter(_as_magnitude(norm, layer))


def forward(layer: Any, x: torch.Tensor, result: torch.Tensor, name: str) -> torch.Tensor:
    """``result`` plus the DoRA correction for adapter ``name`` (``result`` already holds ``W x + bias``)."""
    if layer.view.kind == "embedding":
        return _embedding_forward(layer, x, result, name)
    lora_A, lora_B = layer.lora_A[name], layer.lora_B[name]
    dropout, scaling = layer.lora_dropout[name], layer.scaling[name]
    x = x.to(lora_A.weight.dtype)
    weight = layer.view.read_weight().to(x.dtype)
    magnitude = layer.lora_magnitude_vector[name]
    adapted = weight + scaling * lora_weight(layer, name, weight.shape).detach().to(x.dtype)
    scale = magnitude / _as_magnitude(row_norm(adapted).detach(), layer)
    if isinstance(dropout, nn.Identity) or not layer.training:
        base = result - _bias_like(layer, result)
    else:
        # The dropped-out input must go through the base weight too, so it is recomputed without bias.
        x = dropout(x)
        base = _base_forward(layer, x, weight)
    update = (scale - 1) * base + scale * lora_B(lora_A(x)) * scaling
    return result + update.to(result.dtype)


def _embedding_forward(layer: Any, x: torch.Tensor, result: torch.Tensor, name: str) -> torch.Tensor:
    """``scale * (E[x] + s * A.T[x] @ B.T)`` with ``scale = m / norm`` per embedding dimension (no dropout, as in PEFT)."""
    A, B = layer.lora_embedding_A[name], layer.lora_embedding_B[name]
    scaling = layer.scaling[name]
    weight = layer.view.read_weight().to(A.dtype)
    norm = _output_norm(layer, weight + scaling * lora_weight(layer, name, weight.shape).detach()).detach()
    scale = layer.lora_magnitude_vector[name] / norm
    lora = F.embedding(x, A.T, **layer.view.embedding_kwargs()) @ B.T
    update = (scale - 1) * result.to(A.dtype) + scale * lora * scaling
    return result + update.to(result.dtype)


def _bias_like(layer: Any, result: torch.Tensor) -> torch.Tensor | float:
    bias = layer.view.bias
    if bias is None:
        return 0.0
    if layer.view.kind == "conv":
        return bias.view(1, -1, *([1] * (result.dim() - 2)))
    return bias


def _base_forward(layer: Any, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    view = layer.view
    if view.kind != "conv":
        return F.linear(x, weight)
    conv = (F.conv1d, F.conv2d, F.conv3d)[view.conv_dim - 1]
    return conv(x, weight, None, view.stride, view.padding, view.dilation, view.groups)


def _factor(layer: Any, name: str, norm: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``m / norm`` shaped to scale each output of ``weight``: a column for embeddings, a row otherwise."""
    factor = layer.lora_magnitude_vector[name].detach().reshape(-1).to(weight) / norm.to(weight)
    if layer.view.kind == "embedding":
        return factor.view(1, -1)
    return factor.view(-1, *([1] * (weight.dim() - 1)))


def merged_weight(layer: Any, weight: torch.Tensor, name: str) -> torch.Tensor:
    """``weight`` (which may hold adapters merged before) with adapter ``name`` merged in."""
    delta = layer.delta_weight(name).to(weight)
    base = weight
    for other in reversed(layer.merged_adapters):  # the norm is that of the unmerged base, as in forward
        if other != name:
            base = layer.unmerged_weight(base, other)
    norm = _output_norm(layer, base + delta).detach()
    layer.dora_norms[name] = norm
    return _factor(layer, name, norm, weight) * (weight + delta)


def unmerged_weight(layer: Any, weight: torch.Tensor, name: str) -> torch.Tensor:
    """The exact inverse of :func:`merged_weight`, with the norm remembered at merge time."""
    norm = layer.dora_norms.get(name)
    if norm is None:
        raise RuntimeError(f"DoRA adapter {name!r} was not merged by this layer; cannot unmerge it")
    return weight / _factor(layer, name, norm, weight) - layer.delta_weight(name).to(weight)

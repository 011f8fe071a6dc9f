"""The conformance suite's tiny models and their inputs; module names are part of the suite's contract.

* ``"mlp"``: ``lin0`` Linear(16, 32), ``relu``, ``lin1`` Linear(32, 32), ``lin2`` Linear(32, 8);
  input float ``(4, 16)``.
* ``"emb_conv1d"``: ``emb`` Embedding(64, 32), ``conv1d`` transformers ``Conv1D(nf=32, nx=32)``,
  ``lin`` Linear(32, 8); input token ids ``(4, 6)``.
* ``"conv1d"`` / ``"conv2d"`` / ``"conv3d"``: ``conv`` Conv1d(4, 8, 3) / Conv2d(3, 8, 3) /
  Conv3d(2, 4, 3), then ``lin`` Linear(flattened, 8); inputs ``(4, 4, 12)``, ``(4, 3, 10, 10)``,
  ``(4, 2, 6, 6, 6)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["MODEL_NAMES", "make_inputs", "make_model"]


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(16, 32)
        self.relu = nn.ReLU()
        self.lin1 = nn.Linear(32, 32)
        self.lin2 = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.relu(self.lin1(self.relu(self.lin0(x)))))


class EmbConv1D(nn.Module):
    """An embedding followed by GPT-2's transposed-weight ``Conv1D``: the layer kinds of a GPT-2 block."""

    def __init__(self) -> None:
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.emb = nn.Embedding(64, 32)
        self.conv1d = Conv1D(nf=32, nx=32)
        self.relu = nn.ReLU()
        self.lin = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.relu(self.conv1d(self.emb(x))))


class ConvNet(nn.Module):
    """One convolution (``conv``) then a linear head (``lin``) over the flattened feature map."""

    def __init__(self, conv: nn.Module, flat_features: int) -> None:
        super().__init__()
        self.conv = conv
        self.relu = nn.ReLU()
        self.lin = nn.Linear(flat_features, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.relu(self.conv(x)).flatten(1))


# name -> (model factory, input shape or None for token ids)
_MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...] | None]] = {
    "mlp": (MLP, (4, 16)),
    "emb_conv1d": (EmbConv1D, None),
    "conv1d": (lambda: ConvNet(nn.Conv1d(4, 8, 3), 8 * 10), (4, 4, 12)),
    "conv2d": (lambda: ConvNet(nn.Conv2d(3, 8, 3), 8 * 8 * 8), (4, 3, 10, 10)),
    "conv3d": (lambda: ConvNet(nn.Conv3d(2, 4, 3), 4 * 4 * 4 * 4), (4, 2, 6, 6, 6)),
}
MODEL_NAMES = tuple(_MODELS)
_VOCAB, _TOKENS_SHAPE = 64, (4, 6)


def _lookup(name: str) -> tuple[Callable[[], nn.Module], tuple[int, ...] | None]:
    if name not in _MODELS:
        raise ValueError(f"unknown conformance model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return _MODELS[name]


def make_model(name: str, seed: int = 0) -> nn.Module:
    """A fresh tiny model ``name`` in eval mode; the same ``seed`` always gives the same weights."""
    factory, _ = _lookup(name)
    # fork_rng keeps the caller's global RNG stream untouched by model construction.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
    return model.eval()


def make_inputs(name: str, seed: int = 0) -> torch.Tensor:
    """The input batch for model ``name``: float features, or token ids for ``"emb_conv1d"``."""
    _, shape = _lookup(name)
    generator = torch.Generator().manual_seed(seed)
    if shape is None:
        return torch.randint(0, _VOCAB, _TOKENS_SHAPE, generator=generator)
    return torch.randn(shape, generator=generator)

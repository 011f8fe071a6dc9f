"""Checks shared by the interoperability tests: perturbing adapters, comparing outputs, peftkit warnings."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from _models import run
from torch import nn

ATOL = 1e-5


def perturb_trainable(model: nn.Module, seed: int = 7) -> None:
    """Move every trainable tensor (adapters, ``modules_to_save`` copies, biases) off its initial value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters(), key=lambda item: item[0]):
            if param.requires_grad:
                param.add_(0.1 * torch.randn(param.shape, generator=gen))


@contextmanager
def no_peftkit_warnings() -> Iterator[None]:
    """Fail if peftkit itself warns (unknown config keys, ignored tensors) while the block runs."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    ours = [str(w.message) for w in caught if "peftkit" in w.filename]
    assert not ours, ours


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def assert_adapter_matters(adapted: torch.Tensor, base: torch.Tensor) -> None:
    assert (adapted - base).abs().max() > 1e-3, (
        "the adapter does not change the output; the test proves nothing"
    )


def outputs_per_adapter(model: Any, inputs: Any, names: list[str]) -> dict[str, torch.Tensor]:
    """The model's output with each named adapter active in turn."""
    outputs = {}
    for name in names:
        model.set_adapter(name)
        outputs[name] = run(model, inputs)
    return outputs

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


def greedy_without_cache(
    model: Any, inputs: dict[str, torch.Tensor], steps: int, positions: bool
) -> torch.Tensor:
    """Greedy decoding by running the whole sequence again at every step: no key/value cache involved.

    The reference a ``generate`` call must reproduce, whatever the transformers version does with
    its cache. ``positions``: pass position ids counted from the attention mask, as ``generate``
    does for a left-padded batch (prompt tuning numbers positions itself and takes none). An
    encoder-decoder model (``decoder_start_token_id`` in its config) grows its decoder input instead.
    """
    config = model.get_base_model().config
    with torch.no_grad():
        if config.is_encoder_decoder:
            start = torch.full((inputs["input_ids"].shape[0], 1), config.decoder_start_token_id)
            decoded = start
            for _ in range(steps):
                logits = model(**inputs, decoder_input_ids=decoded).logits[:, -1]
                decoded = torch.cat((decoded, logits.argmax(-1, keepdim=True)), dim=1)
            return decoded
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        for _ in range(steps):
            extra = {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)} if positions else {}
            logits = model(input_ids=ids, attention_mask=mask, **extra).logits[:, -1]
            token = logits.argmax(-1, keepdim=True)
            ids, mask = torch.cat((ids, token), dim=1), torch.cat((mask, torch.ones_like(token)), dim=1)
        return ids


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def peft_misses_cache_rename() -> bool:
    """True where Hugging Face peft predates transformers' ``past_key_values`` -> ``cache`` rename.

    peft 0.21.2 on transformers 5.24 refuses prefix tuning ("Model does not support past key
    values") and prompt-tuning ``generate`` re-adds the virtual tokens at every step; the oracle
    cannot run those cases, so they are checked against golden files made by peft on 5.23.
    """
    from packaging.version import Version

    return Version(_version("transformers")) >= Version("5.24") and Version(_version("peft")) <= Version(
        "0.21.2"
    )


def skip_where_peft_cannot(case: str) -> None:
    """Skip, saying why and on which versions, a peft-oracle check that peft itself fails on this stack."""
    import pytest

    pytest.skip(
        f"Hugging Face peft {_version('peft')} cannot run {case} on transformers {_version('transformers')} "
        "(it predates the past_key_values -> cache rename); peftkit is held to peft's golden files "
        "in tests/test_golden_peft.py instead"
    )

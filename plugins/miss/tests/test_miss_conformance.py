"""The core's conformance suite, run on each MiSS variant (balance, bat, mini) on Linear and GPT-2 Conv1D."""

from __future__ import annotations

from typing import Any

import torch

from peftkit.testing import Case, ConformanceSuite
from peftkit_miss.config import MissConfig


class _RandomStart(MissConfig):
    """bat and mini start as a no-op by design; the suite's "random init" needs them to change the output."""

    def initial_block(self, shape: tuple[int, ...]) -> Any:
        # Small values keep bat's I + B well conditioned, so unmerge stays exact to 1e-5.
        return torch.randn(shape) * 0.1


class _VariantSuite(ConformanceSuite):
    """A suite whose random init is the variant's own init plus a random block (see ``_RandomStart``)."""

    method = "miss"

    def config(self, case: Case, init: Any, **extra: Any) -> Any:
        config = super().config(case, init, **extra)
        return _RandomStart.from_dict(config.to_dict()) if init is self.random_init else config


class TestMissConformance(ConformanceSuite):
    method = "miss"
    identity_init = {"init_weights": True}
    random_init = {"init_weights": False}
    cases = [
        Case("mlp", {"target_modules": ["lin0", "lin1"], "r": 2}),
        # in % r != 0 on every layer (16 % 5, 32 % 5, 32 % 3): the short tail shard.
        Case("mlp", {"target_modules": ["lin0", "lin1", "lin2"], "r": 5}, id="mlp-odd-r-tail"),
        Case("emb_conv1d", {"target_modules": ["conv1d"], "r": 4}, id="gpt2-conv1d"),
        Case(
            "emb_conv1d", {"target_modules": ["conv1d"], "r": 3, "miss_dropout": 0.1}, id="gpt2-conv1d-odd-r"
        ),
    ]


class TestMissBatConformance(_VariantSuite):
    identity_init = {"init_weights": "bat"}
    random_init = {"init_weights": "bat"}
    cases = [
        Case("mlp", {"target_modules": ["lin0", "lin1"], "r": 8}, id="mlp-bat"),
        Case("emb_conv1d", {"target_modules": ["conv1d"], "r": 4}, id="gpt2-conv1d-bat"),
    ]


class TestMissMiniConformance(_VariantSuite):
    identity_init = {"init_weights": "mini"}
    random_init = {"init_weights": "mini"}
    cases = [
        Case("mlp", {"target_modules": ["lin0", "lin1"], "r": 4, "mini_r": 8}, id="mlp-mini"),
        Case("emb_conv1d", {"target_modules": ["conv1d"], "r": 3, "mini_r": 4}, id="gpt2-conv1d-mini-odd-r"),
    ]

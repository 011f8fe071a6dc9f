"""peftkit.testing.BackendSuite on a pure-PyTorch toy backend whose views replace their module on write."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from _toy_backend import KINDS, ToyBackend, ToyMLP, ToyQuantLinear, ToyQuantView, toy_inputs
from torch import nn

from peftkit._registry import Backend
from peftkit.testing import BackendSuite


class TestToyBackend(BackendSuite):
    backend = "toy"
    variants = ["int8"]
    target_modules = ["up", "down"]
    method_configs = {
        "lora": ("lora", {"r": 4}),
        "miss": ("miss", {"r": 8}),
        "miss-bat": ("miss", {"r": 8, "init_weights": "bat"}),
        "shira": ("shira", {"r": 8}),
        "oft": ("oft", {"oft_block_size": 16}),
        "vera": ("vera", {"r": 8}),
    }

    @classmethod
    def described(cls) -> Any:
        # The toy is registered for each test only (toy_backend), so collection cannot find it installed.
        return Backend("toy", list(KINDS), kinds=KINDS)

    @pytest.fixture(autouse=True)
    def _toy_installed(self, toy_backend: ToyBackend) -> Iterator[None]:
        yield

    def make_model(self, variant: str) -> nn.Module:
        return ToyMLP(quantized=True)

    def make_reference(self, variant: str) -> nn.Module:
        return ToyMLP(quantized=False)

    def make_inputs(self, variant: str) -> dict[str, Any]:
        return toy_inputs()


def test_the_suite_runs_every_installed_linear_method_including_those_left_to_their_defaults() -> None:
    ids = {case.id for case in TestToyBackend.cases()}
    assert {"int8-lora", "int8-miss", "int8-miss-bat", "int8-oft"} <= ids
    assert not any("prompt" in i or "tuning" in i for i in ids)  # prompt learning adapts no layer


def toy_case(case_id: str = "int8-lora") -> Any:
    return next(case for case in TestToyBackend.cases() if case.id == case_id)


def test_the_suite_catches_a_view_that_swaps_its_module_behind_the_layers_back(
    monkeypatch: pytest.MonkeyPatch, toy_backend: ToyBackend
) -> None:
    def write_weight(view: ToyQuantView, weight: torch.Tensor) -> None:
        view._module = ToyQuantLinear(weight, view.module.bias)  # not replace_module: base_layer goes stale

    monkeypatch.setattr(ToyQuantView, "write_weight", write_weight)
    with pytest.raises(AssertionError, match=r"wraps another module than base_layer.*view\.replace_module"):
        TestToyBackend().test_merge_unmerge_roundtrip(toy_case())


def test_the_suite_catches_a_merge_that_loses_the_adapter(
    monkeypatch: pytest.MonkeyPatch, toy_backend: ToyBackend
) -> None:
    monkeypatch.setattr(ToyQuantView, "write_weight", lambda view, weight: None)
    with pytest.raises(AssertionError, match=r"after merge_adapter the outputs moved by"):
        TestToyBackend().test_merge_unmerge_roundtrip(toy_case("int8-oft"))


def test_the_suite_catches_a_backend_that_does_not_describe_its_layers(toy_backend: ToyBackend) -> None:
    class Undescribed(TestToyBackend):
        @classmethod
        def described(cls) -> Any:
            return Backend("toy", ["ToyLinear"], kinds={"ToyLinear": "linear"})

    with pytest.raises(
        AssertionError, match=r"serves a ToyQuantLinear, which backend 'toy' does not describe"
    ):
        Undescribed().test_adapts_through_this_backend(toy_case())

"""(IA)^3 checkpoints move between peftkit and Hugging Face ``peft`` (the test-only oracle) unchanged.

Each case puts an adapter with random vectors on one of two identical tiny models with one library,
saves it, loads it onto the other copy with the other library, and compares logits: merged and
unmerged, one adapter and two. peft must load peftkit's files without a warning.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from _interop import (
    assert_adapter_matters,
    assert_same,
    no_peftkit_warnings,
    outputs_per_adapter,
    perturb_trainable,
)
from _models import MODELS, run

import peftkit

BASE = {"init_ia3_weights": False}

# id -> (model, IA3Config keyword arguments shared by both libraries)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": (
        "llama",
        {"target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
    ),
    "llama-default-targets": ("llama", {"task_type": "CAUSAL_LM"}),
    "llama-regex": (
        "llama",
        {"target_modules": r".*\.(q_proj|up_proj)", "feedforward_modules": r".*\.up_proj"},
    ),
    "gpt2-conv1d": (
        "gpt2",
        {
            "target_modules": ["c_attn", "mlp.c_proj"],
            "feedforward_modules": ["mlp.c_proj"],
            "fan_in_fan_out": True,
        },
    ),
    "opt-biases": ("opt", {"target_modules": ["q_proj", "v_proj", "fc2"], "feedforward_modules": ["fc2"]}),
    "opt-modules-to-save": (
        "opt",
        {"target_modules": ["k_proj", "fc1"], "feedforward_modules": [], "modules_to_save": ["lm_head"]},
    ),
}


def _kwargs(extra: dict[str, Any]) -> dict[str, Any]:
    return {**BASE, **extra}


def _peft_messages(caplog: pytest.LogCaptureFixture, caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught] + [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
    ]


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_adapter_loads_in_peftkit(case: str, tmp_path: Path) -> None:
    model, extra = CASES[case]
    build, make_inputs = MODELS[model]
    inputs = make_inputs()
    base_out = run(build(), inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft's own warnings (fan_in_fan_out) are not under test
        ref = peft.get_peft_model(build(), peft.IA3Config(**_kwargs(extra)))
    perturb_trainable(ref)
    ref.save_pretrained(tmp_path)
    expected = run(ref, inputs)
    assert_adapter_matters(expected, base_out)
    with no_peftkit_warnings():
        ours = peftkit.PeftModel.from_pretrained(build(), tmp_path)
    assert_same(run(ours, inputs), expected)
    ours.merge_adapter()
    assert_same(run(ours, inputs), expected)
    ours.unmerge_adapter()
    with ours.disable_adapter():
        assert_same(run(ours, inputs), base_out)


@pytest.mark.parametrize("case", sorted(CASES))
def test_peftkit_adapter_loads_in_peft_without_a_warning(
    case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, extra = CASES[case]
    build, make_inputs = MODELS[model]
    inputs = make_inputs()
    ours = peftkit.get_peft_model(build(), peftkit.config("ia3", **_kwargs(extra)))
    perturb_trainable(ours)
    ours.save_pretrained(tmp_path)
    expected = run(ours, inputs)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        ref = peft.PeftModel.from_pretrained(build(), tmp_path)
    unexpected = [
        m for m in _peft_messages(caplog, caught) if "Unexpected keyword" in m or "unexpected" in m.lower()
    ]
    assert not unexpected, unexpected
    assert_same(run(ref, inputs), expected)


def test_two_adapters_multiply_as_in_peft(tmp_path: Path) -> None:
    build, make_inputs = MODELS["llama"]
    inputs = make_inputs()
    first = _kwargs({"target_modules": ["v_proj", "down_proj"], "feedforward_modules": ["down_proj"]})
    second = _kwargs(
        {"target_modules": ["down_proj", "up_proj"], "feedforward_modules": ["down_proj", "up_proj"]}
    )
    ref = peft.get_peft_model(build(), peft.IA3Config(**first))
    ref.add_adapter("other", peft.IA3Config(**second))
    perturb_trainable(ref)
    ref.save_pretrained(tmp_path)
    expected = outputs_per_adapter(ref, inputs, ["default", "other"])
    ref.base_model.set_adapter(["default", "other"])
    both = run(ref, inputs)

    with no_peftkit_warnings():
        ours = peftkit.PeftModel.from_pretrained(build(), tmp_path)
        ours.load_adapter(tmp_path / "other", adapter_name="other")
    got = outputs_per_adapter(ours, inputs, ["other", "default"])
    for name in ("default", "other"):
        assert_same(got[name], expected[name])
    ours.set_adapter(["default", "other"])
    assert_same(run(ours, inputs), both)
    ours.merge_adapter()
    assert_same(run(ours, inputs), both)


def test_saved_config_has_peft_fields(tmp_path: Path) -> None:
    build, _ = MODELS["llama"]
    kwargs = _kwargs(CASES["llama"][1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft.get_peft_model(build(), peft.IA3Config(**kwargs)).save_pretrained(tmp_path / "peft")
    peftkit.get_peft_model(build(), peftkit.config("ia3", **kwargs)).save_pretrained(tmp_path / "ours")
    import json

    theirs = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    ours = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    for name in ("target_modules", "feedforward_modules", "fan_in_fan_out", "init_ia3_weights", "peft_type"):
        assert (
            sorted(ours[name]) == sorted(theirs[name])
            if isinstance(theirs[name], list)
            else ours[name] == theirs[name]
        )


def test_input_side_scaling_runs_the_base_layer_once() -> None:
    from torch import nn

    layer = nn.Linear(8, 8)
    calls = []
    layer.register_forward_hook(lambda *_: calls.append(1))
    model = nn.Sequential(layer)
    peft_model = peftkit.get_peft_model(
        model, peftkit.config("ia3", target_modules=["0"], feedforward_modules=["0"])
    )
    peft_model.add_adapter("other", peftkit.config("ia3", target_modules=["0"], feedforward_modules=["0"]))
    peft_model.set_adapter(["default", "other"])
    with torch.no_grad():
        peft_model(torch.randn(2, 8))
    assert len(calls) == 1

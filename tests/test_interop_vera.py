"""VeRA checkpoints move between peftkit and Hugging Face ``peft`` (the test-only oracle) unchanged.

Each case builds two identical tiny base models, puts a VeRA adapter with random scaling vectors
(``init_weights=False``, then perturbed) on one with one library, saves it, loads it onto the other
copy with the other library, and compares logits. With ``save_projection=False`` the file holds no
projections, so matching logits prove that both libraries generate the same ones from the key.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
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
from torch import nn

import peftkit

BASE = {"r": 8, "init_weights": False}
NO_PROJECTION = {"save_projection": False}

# id -> (model, VeraConfig keyword arguments shared by both libraries). VeRA needs every targeted
# layer to fit the shared projections, which are sized to the largest of them: any mix works.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("llama", {"target_modules": ["q_proj", "v_proj", "down_proj"], "task_type": "CAUSAL_LM"}),
    "llama-no-projection": ("llama", {"target_modules": ["q_proj", "v_proj", "down_proj"], **NO_PROJECTION}),
    "llama-layers-key": (
        "llama",
        {
            "target_modules": ["k_proj", "up_proj"],
            "layers_to_transform": [1],
            "layers_pattern": "layers",
            "projection_prng_key": 1234,
            **NO_PROJECTION,
        },
    ),
    "llama-modules-to-save": ("llama", {"target_modules": ["o_proj"], "modules_to_save": ["lm_head"]}),
    "gpt2-conv1d": ("gpt2", {"target_modules": ["c_attn", "c_fc"], "fan_in_fan_out": True}),
    "gpt2-conv1d-no-projection": (
        "gpt2",
        {"target_modules": ["c_attn", "c_proj"], "fan_in_fan_out": True, **NO_PROJECTION},
    ),
    "opt-vera-only-bias": ("opt", {"target_modules": ["q_proj", "v_proj", "fc1"], "bias": "vera_only"}),
    "opt-default-targets": ("opt", {"r": 16, **NO_PROJECTION}),
}

# Two adapters: the second shares the first's projections, so its layers must fit inside them.
SECOND: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "llama": ("llama", {"target_modules": ["q_proj", "down_proj"]}, {"target_modules": ["k_proj", "v_proj"]}),
    "llama-no-projection": (
        "llama",
        {"target_modules": ["up_proj", "o_proj"], **NO_PROJECTION},
        {"target_modules": ["q_proj"], **NO_PROJECTION},
    ),
    "gpt2-conv1d": (
        "gpt2",
        {"target_modules": ["c_fc", "c_proj"], "fan_in_fan_out": True},
        {"target_modules": ["c_attn"], "fan_in_fan_out": True},
    ),
    "opt-no-projection": (
        "opt",
        {"target_modules": ["fc1", "fc2"], **NO_PROJECTION},
        {"target_modules": ["q_proj", "out_proj"], **NO_PROJECTION},
    ),
}


@pytest.fixture(autouse=True)
def _quiet_peft() -> Iterator[None]:
    # peft warns on every save_projection=False config and Conv1D target; only peftkit's warnings matter here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="peft")
        yield


def _kwargs(extra: dict[str, Any]) -> dict[str, Any]:
    return {**BASE, **extra}


def _has_projections(folder: Path) -> bool:
    from safetensors.torch import load_file

    keys = set(load_file(folder / "adapter_model.safetensors"))
    return {"base_model.vera_A", "base_model.vera_B"} <= keys


def _peft_to_peftkit(
    build: Callable[[], nn.Module], inputs: Any, kwargs: dict[str, Any], path: Path, **load_kwargs: Any
) -> None:
    base_out = run(build(), inputs)
    ref = peft.get_peft_model(build(), peft.VeraConfig(**kwargs))
    perturb_trainable(ref)
    ref.save_pretrained(path)
    assert _has_projections(path) is kwargs.get("save_projection", True)
    expected = run(ref, inputs)
    assert_adapter_matters(expected, base_out)
    with no_peftkit_warnings():
        ours = peftkit.PeftModel.from_pretrained(build(), path, **load_kwargs)
    assert_same(run(ours, inputs), expected)
    if kwargs.get("bias", "none") == "none":
        with ours.disable_adapter():
            assert_same(run(ours, inputs), base_out)


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_adapter_loads_in_peftkit(case: str, tmp_path: Path) -> None:
    model, extra = CASES[case]
    build, make_inputs = MODELS[model]
    _peft_to_peftkit(build, make_inputs(), _kwargs(extra), tmp_path)


@pytest.mark.parametrize("case", ["gpt2-conv1d", "llama-no-projection"])
def test_peft_adapter_loads_in_peftkit_low_cpu_mem(case: str, tmp_path: Path) -> None:
    model, extra = CASES[case]
    build, make_inputs = MODELS[model]
    _peft_to_peftkit(build, make_inputs(), _kwargs(extra), tmp_path, low_cpu_mem_usage=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_peftkit_adapter_loads_in_peft(case: str, tmp_path: Path) -> None:
    model, extra = CASES[case]
    build, make_inputs = MODELS[model]
    inputs = make_inputs()
    kwargs = _kwargs(extra)
    base_out = run(build(), inputs)
    ours = peftkit.get_peft_model(build(), peftkit.config("vera", **kwargs))
    perturb_trainable(ours)
    ours.save_pretrained(tmp_path)
    assert _has_projections(tmp_path) is kwargs.get("save_projection", True)
    expected = run(ours, inputs)
    assert_adapter_matters(expected, base_out)
    ref = peft.PeftModel.from_pretrained(build(), tmp_path)
    assert_same(run(ref, inputs), expected)


@pytest.mark.parametrize("case", sorted(SECOND))
def test_two_adapters_from_peft(case: str, tmp_path: Path) -> None:
    model, first, second = SECOND[case]
    build, make_inputs = MODELS[model]
    inputs = make_inputs()
    ref = peft.get_peft_model(build(), peft.VeraConfig(**_kwargs(first)))
    ref.add_adapter("other", peft.VeraConfig(**_kwargs(second)))
    ref.set_requires_grad(["default", "other"], requires_grad=True)
    perturb_trainable(ref)
    ref.save_pretrained(tmp_path)
    expected = outputs_per_adapter(ref, inputs, ["default", "other"])
    assert_adapter_matters(expected["other"], expected["default"])

    with no_peftkit_warnings():
        ours = peftkit.PeftModel.from_pretrained(build(), tmp_path)
        ours.load_adapter(tmp_path / "other", adapter_name="other")
    assert ours.base_model.vera_A["other"] is ours.base_model.vera_A["default"]
    got = outputs_per_adapter(ours, inputs, ["other", "default"])
    for name in ("default", "other"):
        assert_same(got[name], expected[name])


@pytest.mark.parametrize("case", sorted(SECOND))
def test_two_adapters_from_peftkit(case: str, tmp_path: Path) -> None:
    model, first, second = SECOND[case]
    build, make_inputs = MODELS[model]
    inputs = make_inputs()
    ours = peftkit.get_peft_model(build(), peftkit.config("vera", **_kwargs(first)))
    ours.add_adapter("other", peftkit.config("vera", **_kwargs(second)))
    perturb_trainable(ours)
    ours.save_pretrained(tmp_path)
    expected = outputs_per_adapter(ours, inputs, ["default", "other"])
    assert_adapter_matters(expected["other"], expected["default"])

    ref = peft.PeftModel.from_pretrained(build(), tmp_path)
    ref.load_adapter(tmp_path / "other", adapter_name="other")
    got = outputs_per_adapter(ref, inputs, ["other", "default"])
    for name in ("default", "other"):
        assert_same(got[name], expected[name])


def _saved(folder: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, Any]]:
    from safetensors.torch import load_file

    shapes = {key: tuple(t.shape) for key, t in load_file(folder / "adapter_model.safetensors").items()}
    return shapes, json.loads((folder / "adapter_config.json").read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_projections_parameters_and_files_as_peft(case: str, tmp_path: Path) -> None:
    """Both libraries generate bit-identical projections, train as many parameters, and write the same
    tensor keys and shapes and config fields."""
    model, extra = CASES[case]
    build, _ = MODELS[model]
    kwargs = _kwargs(extra)
    ref = peft.get_peft_model(build(), peft.VeraConfig(**kwargs))
    ours = peftkit.get_peft_model(build(), peftkit.config("vera", **kwargs))
    for attr in ("vera_A", "vera_B"):
        assert torch.equal(
            getattr(ours.base_model, attr)["default"], getattr(ref.base_model, attr)["default"]
        )
    assert ours.get_nb_trainable_parameters() == ref.get_nb_trainable_parameters()
    ref.save_pretrained(tmp_path / "peft")
    ours.save_pretrained(tmp_path / "ours")
    peft_shapes, peft_config = _saved(tmp_path / "peft")
    our_shapes, our_config = _saved(tmp_path / "ours")
    assert our_shapes == peft_shapes
    assert set(peft_config) <= set(our_config)
    for name in ("r", "projection_prng_key", "save_projection", "d_initial", "bias", "vera_dropout"):
        assert our_config[name] == peft_config[name], name
    with no_peftkit_warnings():
        peftkit.PeftModel.from_pretrained(build(), tmp_path / "peft")  # every peft field is known


def test_peft_refuses_a_second_adapter_that_peftkit_refuses() -> None:
    """The oracle agrees that a later adapter may not need bigger projections than the first."""
    build, _ = MODELS["llama"]
    first, second = _kwargs({"target_modules": ["v_proj"]}), _kwargs({"target_modules": ["down_proj"]})
    ref = peft.get_peft_model(build(), peft.VeraConfig(**first))
    with pytest.raises(ValueError, match="vera_A has a size of 32 but 64"):
        ref.add_adapter("other", peft.VeraConfig(**second))
    ours = peftkit.get_peft_model(build(), peftkit.config("vera", **first))
    with pytest.raises(ValueError, match=r"vera_A \(8, >= 64\)"):
        ours.add_adapter("other", peftkit.config("vera", **second))

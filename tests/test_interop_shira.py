"""SHiRA checkpoints move between peftkit and Hugging Face ``peft`` (the test-only oracle) unchanged.

Adapters use ``init_weights=False`` (random values) so they really change the logits. Masks
differ between the libraries (peftkit gives every layer its own; a peft seed gives all layers
of one shape the same), which must not matter: a loaded adapter uses its saved indices.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from _interop import assert_adapter_matters, assert_same, no_peftkit_warnings
from _models import MODELS, run

import peftkit

BASE = {"r": 2, "init_weights": False}

# id -> (model, ShiraConfig keyword arguments shared by both libraries)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-seeded": ("llama", {"target_modules": ["q_proj", "v_proj", "down_proj"], "random_seed": 7}),
    "llama-unseeded": (
        "llama",
        {"target_modules": ["q_proj", "k_proj", "up_proj"], "task_type": "CAUSAL_LM"},
    ),
    "llama-defaults": ("llama", {"task_type": "CAUSAL_LM", "r": 4}),
    "opt-seeded": ("opt", {"target_modules": ["q_proj", "out_proj", "fc1"], "random_seed": 0}),
    "opt-unseeded": ("opt", {"target_modules": ["v_proj", "fc2"], "modules_to_save": ["lm_head"]}),
}
# Two adapters on one model: (model, first, second)
SECOND: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "llama": (
        "llama",
        {"target_modules": ["q_proj", "v_proj"], "random_seed": 1},
        {"target_modules": ["v_proj", "o_proj"], "r": 1},
    ),
    "opt": (
        "opt",
        {"target_modules": ["k_proj"]},
        {"target_modules": ["k_proj", "fc1"], "r": 3, "random_seed": 5},
    ),
}


def _kwargs(extra: dict[str, Any]) -> dict[str, Any]:
    return {**BASE, **extra}


def _perturb_head_copies(model: Any) -> None:
    """Move trained full copies (modules_to_save) off their initial value so that loading them is tested."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
            if param.requires_grad and ".modules_to_save." in name:
                param.add_(0.1 * torch.randn(param.shape, generator=gen))


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_adapter_loads_in_peftkit(case: str, tmp_path: Path) -> None:
    model, extra = CASES[case]
    build, make_inputs = MODELS[model]
    inputs = make_inputs()
    base_out = run(build(), inputs)
    ref = peft.get_peft_model(build(), peft.ShiraConfig(**_kwargs(extra)))
    _perturb_head_copies(ref)
    ref.save_pretrained(tmp_path)
    expected = run(ref, inputs)
    assert_adapter_matters(expected, base_out)
    with no_peftkit_warnings():
        ours = peftkit.PeftModel.from_pretrained(build(), tmp_path)
    assert_same(run(ours, inputs), expected)
    with ours.disable_adapter():
        assert_same(run(ours, inputs), base_out)
    ours.merge_adapter()  # merged in place: the same logits
    assert_same(run(ours, inputs), expected)


@pytest.mark.parametrize("case", sorted(CASES))
def test_peftkit_adapter_loads_in_peft(case: str, tmp_path: Path) -> None:
    model, extra = CASES[case]
    build, make_inputs = MODELS[model]
    inputs = make_inputs()
    base_out = run(build(), inputs)
    ours = peftkit.get_peft_model(build(), peftkit.config("shira", **_kwargs(extra)))
    _perturb_head_copies(ours)
    ours.save_pretrained(tmp_path)
    expected = run(ours, inputs)
    assert_adapter_matters(expected, base_out)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ref = peft.PeftModel.from_pretrained(build(), tmp_path)
    unexpected = [str(w.message) for w in caught if "Unexpected keyword" in str(w.message)]
    assert not unexpected, unexpected
    assert_same(run(ref, inputs), expected)


def _per_adapter(model: Any, inputs: Any, names: list[str]) -> dict[str, torch.Tensor]:
    found = {}
    for name in names:
        model.set_adapter(name)
        found[name] = run(model, inputs)
    return found


@pytest.mark.parametrize("case", sorted(SECOND))
def test_two_adapters_from_peft(case: str, tmp_path: Path) -> None:
    model, first, second = SECOND[case]
    build, make_inputs = MODELS[model]
    inputs = make_inputs()
    ref = peft.get_peft_model(build(), peft.ShiraConfig(**_kwargs(first)))
    ref.add_adapter("other", peft.ShiraConfig(**_kwargs(second)))
    ref.save_pretrained(tmp_path)
    expected = _per_adapter(ref, inputs, ["default", "other"])
    assert_adapter_matters(expected["other"], expected["default"])

    with no_peftkit_warnings():
        ours = peftkit.PeftModel.from_pretrained(build(), tmp_path)
        ours.load_adapter(tmp_path / "other", adapter_name="other")
    got = _per_adapter(ours, inputs, ["other", "default"])
    for name in ("default", "other"):
        assert_same(got[name], expected[name])
    # Fused switching between the loaded adapters gives the same logits.
    ours.merge_adapter()
    for name in ("other", "default", "other"):
        ours.set_adapter(name)
        assert_same(run(ours, inputs), expected[name])


@pytest.mark.parametrize("case", sorted(SECOND))
def test_two_adapters_from_peftkit(case: str, tmp_path: Path) -> None:
    model, first, second = SECOND[case]
    build, make_inputs = MODELS[model]
    inputs = make_inputs()
    ours = peftkit.get_peft_model(build(), peftkit.config("shira", **_kwargs(first)))
    ours.add_adapter("other", peftkit.config("shira", **_kwargs(second)))
    ours.save_pretrained(tmp_path)
    expected = _per_adapter(ours, inputs, ["default", "other"])
    assert_adapter_matters(expected["other"], expected["default"])

    ref = peft.PeftModel.from_pretrained(build(), tmp_path)
    ref.load_adapter(tmp_path / "other", adapter_name="other")
    got = _per_adapter(ref, inputs, ["other", "default"])
    for name in ("default", "other"):
        assert_same(got[name], expected[name])


def test_peft_adapter_with_a_custom_mask_loads_in_peftkit(tmp_path: Path) -> None:
    """A peft mask function is not saved (mask_type names it); the saved indices carry the mask."""
    build, make_inputs = MODELS["opt"]
    inputs = make_inputs()

    def diagonal_band(base_layer: torch.nn.Module, r: int, **kwargs: Any) -> torch.Tensor:
        out_features, in_features = base_layer.weight.shape
        mask = torch.zeros(out_features * in_features, dtype=base_layer.weight.dtype)
        mask[torch.arange(r * (in_features + out_features)) * 3 % mask.numel()] = 1
        return mask.view(out_features, in_features)

    config = peft.ShiraConfig(**_kwargs({"target_modules": ["q_proj"], "mask_type": "band"}))
    config.mask_fn = diagonal_band
    ref = peft.get_peft_model(build(), config)
    ref.save_pretrained(tmp_path)
    expected = run(ref, inputs)
    with no_peftkit_warnings():
        ours = peftkit.PeftModel.from_pretrained(build(), tmp_path)
    assert ours.peft_config["default"].mask_type == "band"
    assert_same(run(ours, inputs), expected)


def _saved(folder: Path) -> tuple[dict[str, tuple[tuple[int, ...], torch.dtype]], dict[str, Any]]:
    from safetensors.torch import load_file

    tensors = {
        key: (tuple(t.shape), t.dtype) for key, t in load_file(folder / "adapter_model.safetensors").items()
    }
    return tensors, json.loads((folder / "adapter_config.json").read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_saved_files_match_peft(case: str, tmp_path: Path) -> None:
    """Both libraries train as many parameters and write the same keys, shapes, dtypes and config fields."""
    model, extra = CASES[case]
    build, _ = MODELS[model]
    kwargs = _kwargs(extra)
    ref = peft.get_peft_model(build(), peft.ShiraConfig(**kwargs))
    ours = peftkit.get_peft_model(build(), peftkit.config("shira", **kwargs))
    assert ours.get_nb_trainable_parameters()[0] == ref.get_nb_trainable_parameters()[0]
    ref.save_pretrained(tmp_path / "peft")
    ours.save_pretrained(tmp_path / "ours")
    peft_tensors, peft_config = _saved(tmp_path / "peft")
    our_tensors, our_config = _saved(tmp_path / "ours")
    assert our_tensors == peft_tensors
    assert set(peft_config) == set(our_config)
    for name in ("r", "mask_type", "random_seed", "init_weights", "fan_in_fan_out", "peft_type", "task_type"):
        assert our_config[name] == peft_config[name], name
    assert sorted(our_config["target_modules"]) == sorted(peft_config["target_modules"])

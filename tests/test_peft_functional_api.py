"""PEFT's low-level API on peftkit: the same names, keyword arguments, keys and results as Hugging Face ``peft``."""

from __future__ import annotations

import peft
import pytest
import torch
from _models import MLP, run, text_inputs, tiny_llama
from torch import nn

import peftkit
from peftkit_lora import LoraConfig
from peftkit_vera import VeraConfig

LORA = {"r": 4, "lora_alpha": 8, "init_lora_weights": False, "target_modules": ["q_proj", "v_proj"]}


def test_peft_model_state_dict_keys_equal_peft_for_a_peft_model() -> None:
    ours = peftkit.get_peft_model(tiny_llama(), LoraConfig(**LORA))
    theirs = peft.get_peft_model(tiny_llama(), peft.LoraConfig(**LORA))
    assert set(peftkit.get_peft_model_state_dict(ours)) == set(peft.get_peft_model_state_dict(theirs))


def test_injected_model_state_dict_keys_equal_peft_and_carry_no_prefix() -> None:
    ours = peftkit.inject_adapter_in_model(LoraConfig(**LORA), tiny_llama(), adapter_name="other")
    theirs = peft.inject_adapter_in_model(peft.LoraConfig(**LORA), tiny_llama(), adapter_name="other")
    keys = set(peftkit.get_peft_model_state_dict(ours, adapter_name="other"))
    assert keys == set(peft.get_peft_model_state_dict(theirs, adapter_name="other"))
    assert not any(k.startswith("base_model.") for k in keys)


def test_injected_model_is_the_same_object_with_a_trainable_active_adapter() -> None:
    base = MLP()
    x = torch.randn(3, 10)
    before = base(x)
    model = peftkit.inject_adapter_in_model(
        LoraConfig(target_modules=["lin0"], init_lora_weights=False), base
    )
    assert model is base and not isinstance(model, peftkit.PeftModel)
    assert not torch.allclose(model(x), before)  # the adapter is active
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["lin0.lora_A.default.weight", "lin0.lora_B.default.weight"]


def test_state_dict_from_peft_loads_into_an_injected_model_with_the_same_outputs() -> None:
    theirs = peft.inject_adapter_in_model(peft.LoraConfig(**LORA), tiny_llama())
    ours = peftkit.inject_adapter_in_model(LoraConfig(**LORA), tiny_llama(), adapter_name="renamed")
    result = peftkit.set_peft_model_state_dict(
        ours, peft.get_peft_model_state_dict(theirs), adapter_name="renamed"
    )
    assert result.missing_keys == [] and result.unexpected_keys == []
    inputs = text_inputs()
    torch.testing.assert_close(run(ours, inputs), run(theirs, inputs), atol=1e-5, rtol=0)


def test_set_peft_model_state_dict_reports_missing_and_unexpected_keys_like_load_state_dict() -> None:
    model = peftkit.get_peft_model(MLP(), LoraConfig(target_modules=["lin0", "lin1"]))
    state = peftkit.get_peft_model_state_dict(model)
    del state["base_model.model.lin1.lora_B.weight"]
    state["base_model.model.lin9.lora_A.weight"] = torch.zeros(1)
    missing, unexpected = peftkit.set_peft_model_state_dict(model, state)
    assert missing == ["base_model.model.lin1.lora_B.weight"]
    assert unexpected == ["base_model.model.lin9.lora_A.weight"]


def test_set_peft_model_state_dict_refuses_other_shapes_unless_told_to_ignore_them() -> None:
    model = peftkit.get_peft_model(MLP(), LoraConfig(target_modules=["lin0"], r=4))
    wrong = {k: torch.ones(2, 2) for k in peftkit.get_peft_model_state_dict(model)}
    before = {k: v.clone() for k, v in peftkit.get_peft_model_state_dict(model).items()}
    with pytest.raises(peftkit.CheckpointError, match="expects shape"):
        peftkit.set_peft_model_state_dict(model, wrong)
    with pytest.warns(UserWarning, match="ignore_mismatched_sizes"):
        result = peftkit.set_peft_model_state_dict(model, wrong, ignore_mismatched_sizes=True)
    assert result.missing_keys == []
    after = peftkit.get_peft_model_state_dict(model)
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_model_level_tensors_round_trip_through_the_state_dict_functions() -> None:
    config = VeraConfig(r=4, target_modules=["lin0", "lin1"], save_projection=True)
    source = peftkit.get_peft_model(MLP(), config)
    state = peftkit.get_peft_model_state_dict(source)
    assert {"base_model.vera_A", "base_model.vera_B"} <= set(state)
    target = peftkit.get_peft_model(MLP(), config)
    assert peftkit.set_peft_model_state_dict(target, state) == ([], [])


def test_inject_with_a_state_dict_adapts_the_modules_its_keys_name() -> None:
    state = {"lin1.lora_A.weight": torch.zeros(8, 20), "lin1.lora_B.weight": torch.zeros(2, 8)}
    model = peftkit.inject_adapter_in_model(LoraConfig(r=8, target_modules=["lin0"]), MLP(), state_dict=state)
    assert isinstance(model.lin1, peftkit.AdapterLayer) and isinstance(model.lin0, nn.Linear)


def test_inject_refuses_a_method_without_layers_and_an_existing_name() -> None:
    from peftkit_prompt import PromptTuningConfig

    with pytest.raises(ValueError, match="get_peft_model"):
        peftkit.inject_adapter_in_model(PromptTuningConfig(num_virtual_tokens=2), tiny_llama())
    model = peftkit.inject_adapter_in_model(LoraConfig(target_modules=["lin0"]), MLP())
    with pytest.raises(ValueError, match="already has an adapter named 'default'"):
        peftkit.inject_adapter_in_model(LoraConfig(target_modules=["lin1"]), model)
    assert isinstance(model.lin1, nn.Linear)


def test_state_dict_of_a_plain_model_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="holds no peftkit adapters"):
        peftkit.get_peft_model_state_dict(MLP())


def test_base_model_state_dict_has_the_original_keys_and_values_as_in_peft() -> None:
    config = {"target_modules": ["lin0"], "modules_to_save": ["lin1"]}
    original = MLP().state_dict()
    ours = peftkit.get_peft_model(MLP(), LoraConfig(**config))
    theirs = peft.get_peft_model(MLP(), peft.LoraConfig(**config))
    state = peftkit.get_base_model_state_dict(ours)
    assert set(state) == set(original) == set(peft.get_base_model_state_dict(theirs))
    assert all(torch.equal(state[k], v) for k, v in original.items())


def test_set_base_model_state_dict_restores_base_weights_and_refuses_unknown_keys_when_strict() -> None:
    model = peftkit.get_peft_model(MLP(), LoraConfig(target_modules=["lin0"], init_lora_weights=False))
    original = MLP().state_dict()
    with torch.no_grad():
        model.get_base_model().lin0.base_layer.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="nothing was loaded"):
        peftkit.set_base_model_state_dict(model, {**original, "extra.weight": torch.zeros(1)})
    assert not torch.equal(model.get_base_model().lin0.base_layer.weight, original["lin0.weight"])
    result = peftkit.set_base_model_state_dict(model, original)
    assert result == ([], [])
    assert torch.equal(model.get_base_model().lin0.base_layer.weight, original["lin0.weight"])

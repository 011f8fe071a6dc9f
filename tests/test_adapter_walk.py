"""The walk that finds a model's adapter layers and modules-to-save wrappers (used by set_adapter, merging)."""

import pytest
from _models import tiny_llama
from torch import nn

import peftkit
from peftkit._injection import adapter_modules
from peftkit.layer import AdapterLayer, ModulesToSave


def every_adapter_module(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (AdapterLayer, ModulesToSave))]


@pytest.mark.parametrize(
    "options",
    [
        {"target_modules": ["q_proj", "v_proj", "down_proj"]},
        {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]},
        # the wrapped attention blocks hold adapted layers: those are found too
        {"target_modules": ["q_proj"], "modules_to_save": ["self_attn"]},
    ],
)
def test_finds_what_modules_finds_in_the_same_order(options):
    model = peftkit.get_peft_model(tiny_llama(), peftkit.config("lora", r=2, **options)).get_base_model()
    found = list(adapter_modules(model))
    assert found == every_adapter_module(model)
    assert any(isinstance(m, AdapterLayer) for m in found)


def test_a_module_registered_twice_is_found_once():
    model = peftkit.get_peft_model(tiny_llama(), peftkit.config("lora", r=2, target_modules=["q_proj"]))
    base = model.get_base_model()
    base.model.layers[1].self_attn.q_proj = base.model.layers[0].self_attn.q_proj
    found = list(adapter_modules(base))
    assert len(found) == len({id(m) for m in found}) == 1
    model.merge_adapter()  # merged once, not twice
    assert base.model.layers[0].self_attn.q_proj.merged_adapters == ["default"]

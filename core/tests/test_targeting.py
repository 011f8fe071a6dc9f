"""Which modules a config targets: names, suffixes, regexes, all-linear, exclusions, layer indices."""

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

import peftkit
from peftkit._targeting import NoTargetError


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(cfg)


def adapted(model: nn.Module, **kw) -> list[str]:
    peft_model = peftkit.get_peft_model(model, peftkit.config("lora", r=2, **kw))
    return [status.name for status in peft_model.get_layer_status()]


def test_names_match_exactly_or_as_dotted_suffix():
    names = adapted(tiny_llama(), target_modules=["q_proj", "layers.1.self_attn.v_proj"])
    assert names == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj",
        "model.layers.2.self_attn.q_proj",
    ]


def test_regex_must_match_the_whole_name():
    assert adapted(tiny_llama(), target_modules=r".*\.0\.mlp\.(up|down)_proj") == [
        "model.layers.0.mlp.up_proj",
        "model.layers.0.mlp.down_proj",
    ]
    with pytest.raises(NoTargetError):
        adapted(tiny_llama(), target_modules=r"up_proj")  # a partial match is no match


def test_all_linear_never_takes_the_output_head():
    names = adapted(tiny_llama(), target_modules="all-linear")
    assert "lm_head" not in names
    assert len(names) == 3 * 7


def test_exclude_modules_and_layers_to_transform():
    names = adapted(
        tiny_llama(),
        target_modules=["q_proj", "v_proj"],
        exclude_modules=["v_proj"],
        layers_to_transform=[0, 2],
    )
    assert names == ["model.layers.0.self_attn.q_proj", "model.layers.2.self_attn.q_proj"]
    names = adapted(tiny_llama(), target_modules=["q_proj"], layers_to_transform=1, layers_pattern="layers")
    assert names == ["model.layers.1.self_attn.q_proj"]


def test_default_targets_come_from_the_method_per_model_type():
    assert adapted(tiny_llama()) == [
        f"model.layers.{i}.self_attn.{p}" for i in range(3) for p in ("q_proj", "v_proj")
    ]


def test_nothing_matched_names_what_was_asked_and_what_exists():
    with pytest.raises(NoTargetError, match=r"q_prj.*matched no module.*model\.embed_tokens"):
        adapted(tiny_llama(), target_modules=["q_prj"])


def test_modules_inside_adapter_layers_are_never_targeted():
    model = peftkit.get_peft_model(tiny_llama(), peftkit.config("lora", r=2, target_modules=["q_proj"]))
    model.add_adapter("second", peftkit.config("lora", r=2, target_modules=r".*q_proj.*"))
    # the regex would also match q_proj.base_layer and q_proj.lora_A.*, which must stay untouched
    q = model.get_base_model().model.layers[0].self_attn.q_proj
    assert isinstance(q.base_layer, nn.Linear)
    assert sorted(q.adapter_names) == ["default", "second"]

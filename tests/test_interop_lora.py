"""LoRA checkpoints move between peftkit and Hugging Face ``peft`` (the test-only oracle) unchanged.

Each case builds two identical tiny base models, puts a randomly initialised LoRA adapter
(``init_lora_weights=False``, so the adapter really changes the output) on one with one library,
saves it, loads it onto the other copy with the other library, and compares logits.
Fully trained copies (``modules_to_save``, biases) are perturbed before saving so that loading
them is tested too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
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
from _models import MODELS, conv_inputs, run, tiny_convnet
from torch import nn

import peftkit

BASE = {"r": 4, "lora_alpha": 8, "init_lora_weights": False}

# id -> (model, LoraConfig keyword arguments shared by both libraries)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("llama", {"target_modules": ["q_proj", "v_proj", "down_proj"], "task_type": "CAUSAL_LM"}),
    "gpt2-conv1d": ("gpt2", {"target_modules": ["c_attn", "c_fc"], "fan_in_fan_out": True}),
    "opt": ("opt", {"target_modules": ["q_proj", "v_proj", "fc1"]}),
    "bert-seq-cls": ("bert", {"task_type": "SEQ_CLS"}),
    "t5": ("t5", {"target_modules": ["q", "v", "wo"], "task_type": "SEQ_2_SEQ_LM"}),
    "rslora": ("llama", {"target_modules": ["q_proj", "o_proj"], "use_rslora": True, "lora_alpha": 16}),
    "lora-bias": ("opt", {"target_modules": ["q_proj", "fc2"], "lora_bias": True}),
    "gpt2-lora-bias": ("gpt2", {"target_modules": ["c_attn"], "fan_in_fan_out": True, "lora_bias": True}),
    "modules-to-save": ("llama", {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]}),
    "patterns": (
        "llama",
        {
            "target_modules": ["q_proj", "v_proj", "up_proj"],
            "rank_pattern": {"v_proj": 2, "layers.1.self_attn.q_proj": 6},
            "alpha_pattern": {"up_proj": 3, "layers.0.self_attn.v_proj": 5},
        },
    ),
    "embedding": ("llama", {"target_modules": ["embed_tokens", "q_proj"]}),
    "gpt2-embedding": ("gpt2", {"target_modules": ["wte", "wpe"]}),
    "bias-all": ("opt", {"target_modules": ["q_proj", "v_proj"], "bias": "all"}),
    "bias-lora-only": ("opt", {"target_modules": ["q_proj", "fc1"], "bias": "lora_only"}),
    "t5-modules-to-save": (
        "t5",
        {"target_modules": ["q", "k"], "modules_to_save": ["wi"], "task_type": "SEQ_2_SEQ_LM"},
    ),
    "opt-embedding": ("opt", {"target_modules": ["embed_tokens", "embed_positions"]}),
    "layers-to-transform": (
        "llama",
        {"target_modules": ["q_proj", "v_proj"], "layers_to_transform": [1], "layers_pattern": "layers"},
    ),
    "exclude-modules": (
        "opt",
        {
            "target_modules": ["q_proj", "k_proj"],
            "exclude_modules": ["model.decoder.layers.0.self_attn.k_proj"],
        },
    ),
    "regex-targets": ("llama", {"target_modules": r".*\.1\.(self_attn\.q_proj|mlp\.up_proj)"}),
    "all-linear": ("opt", {"target_modules": "all-linear"}),
    "conv": ("conv", {"target_modules": ["conv2d", "conv1d"]}),
    "conv-lora-bias": (
        "conv",
        {"target_modules": ["conv2d", "conv1d", "head"], "lora_bias": True, "use_rslora": True},
    ),
}
BUILDERS = {**MODELS, "conv": (tiny_convnet, conv_inputs)}

# Multi-adapter cases: a second adapter with other targets, rank and options.
SECOND = {
    "llama": (
        "llama",
        {"target_modules": ["q_proj", "v_proj"]},
        {"target_modules": ["k_proj", "v_proj"], "r": 2},
    ),
    "bert": (
        "bert",
        {"task_type": "SEQ_CLS"},
        {"task_type": "SEQ_CLS", "target_modules": ["key", "dense"], "r": 6, "use_rslora": True},
    ),
    "gpt2": ("gpt2", {"target_modules": ["c_attn"]}, {"target_modules": ["c_proj"], "lora_bias": True}),
}


def _kwargs(extra: dict[str, Any]) -> dict[str, Any]:
    return {**BASE, **extra}


def _peft_to_peftkit(
    build: Callable[[], nn.Module], inputs: Any, kwargs: dict[str, Any], path: Path, **load_kwargs: Any
) -> None:
    base_out = run(build(), inputs)
    ref = peft.get_peft_model(build(), peft.LoraConfig(**kwargs))
    perturb_trainable(ref)
    ref.save_pretrained(path)
    expected = run(ref, inputs)
    assert_adapter_matters(expected, base_out)
    with no_peftkit_warnings():
        ours = peftkit.PeftModel.from_pretrained(build(), path, **load_kwargs)
    assert_same(run(ours, inputs), expected)
    if kwargs.get("bias", "none") == "none":  # trained base biases stay in place when adapters are off
        with ours.disable_adapter():
            assert_same(run(ours, inputs), base_out)


def _peftkit_to_peft(build: Callable[[], nn.Module], inputs: Any, kwargs: dict[str, Any], path: Path) -> None:
    base_out = run(build(), inputs)
    ours = peftkit.get_peft_model(build(), peftkit.config("lora", **kwargs))
    perturb_trainable(ours)
    ours.save_pretrained(path)
    expected = run(ours, inputs)
    assert_adapter_matters(expected, base_out)
    ref = peft.PeftModel.from_pretrained(build(), path)
    assert_same(run(ref, inputs), expected)


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_adapter_loads_in_peftkit(case: str, tmp_path: Path) -> None:
    model, extra = CASES[case]
    build, make_inputs = BUILDERS[model]
    _peft_to_peftkit(build, make_inputs(), _kwargs(extra), tmp_path)


@pytest.mark.parametrize(
    "case", ["gpt2-conv1d", "bias-all", "embedding", "modules-to-save", "conv-lora-bias"]
)
def test_peft_adapter_loads_in_peftkit_low_cpu_mem(case: str, tmp_path: Path) -> None:
    """Adapter tensors created on the meta device and assigned from the checkpoint give the same outputs."""
    model, extra = CASES[case]
    build, make_inputs = BUILDERS[model]
    _peft_to_peftkit(build, make_inputs(), _kwargs(extra), tmp_path, low_cpu_mem_usage=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_peftkit_adapter_loads_in_peft(case: str, tmp_path: Path) -> None:
    model, extra = CASES[case]
    build, make_inputs = BUILDERS[model]
    _peftkit_to_peft(build, make_inputs(), _kwargs(extra), tmp_path)


@pytest.mark.parametrize("case", sorted(SECOND))
def test_two_adapters_from_peft(case: str, tmp_path: Path) -> None:
    model, first, second = SECOND[case]
    build, make_inputs = BUILDERS[model]
    inputs = make_inputs()
    ref = peft.get_peft_model(build(), peft.LoraConfig(**_kwargs(first)))
    ref.add_adapter("other", peft.LoraConfig(**_kwargs(second)))
    ref.set_requires_grad(["default", "other"], requires_grad=True)
    perturb_trainable(ref)
    ref.save_pretrained(tmp_path)
    assert (tmp_path / "other" / "adapter_config.json").is_file()
    expected = outputs_per_adapter(ref, inputs, ["default", "other"])
    assert_adapter_matters(expected["other"], expected["default"])

    with no_peftkit_warnings():
        ours = peftkit.PeftModel.from_pretrained(build(), tmp_path)
        ours.load_adapter(tmp_path / "other", adapter_name="other")
    got = outputs_per_adapter(ours, inputs, ["other", "default"])
    for name in ("default", "other"):
        assert_same(got[name], expected[name])


@pytest.mark.parametrize("case", sorted(SECOND))
def test_two_adapters_from_peftkit(case: str, tmp_path: Path) -> None:
    model, first, second = SECOND[case]
    build, make_inputs = BUILDERS[model]
    inputs = make_inputs()
    ours = peftkit.get_peft_model(build(), peftkit.config("lora", **_kwargs(first)))
    ours.add_adapter("other", peftkit.config("lora", **_kwargs(second)))
    perturb_trainable(ours)
    ours.save_pretrained(tmp_path)
    expected = outputs_per_adapter(ours, inputs, ["default", "other"])
    assert_adapter_matters(expected["other"], expected["default"])

    assert (tmp_path / "other" / "adapter_model.safetensors").is_file()
    ref = peft.PeftModel.from_pretrained(build(), tmp_path)
    ref.load_adapter(tmp_path / "other", adapter_name="other")
    got = outputs_per_adapter(ref, inputs, ["other", "default"])
    for name in ("default", "other"):
        assert_same(got[name], expected[name])


CONFIG_FIELDS = (
    "r",
    "lora_alpha",
    "use_rslora",
    "lora_bias",
    "bias",
    "rank_pattern",
    "alpha_pattern",
    "task_type",
)


def _saved(folder: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, Any]]:
    from safetensors.torch import load_file

    shapes = {key: tuple(t.shape) for key, t in load_file(folder / "adapter_model.safetensors").items()}
    return shapes, json.loads((folder / "adapter_config.json").read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_saved_files_match_peft(case: str, tmp_path: Path) -> None:
    """For one config both libraries train as many parameters and write the same tensor keys and shapes
    and the same config fields."""
    model, extra = CASES[case]
    build, _ = BUILDERS[model]
    kwargs = _kwargs(extra)
    ref = peft.get_peft_model(build(), peft.LoraConfig(**kwargs))
    ours = peftkit.get_peft_model(build(), peftkit.config("lora", **kwargs))
    assert ours.get_nb_trainable_parameters() == ref.get_nb_trainable_parameters()
    ref.save_pretrained(tmp_path / "peft")
    ours.save_pretrained(tmp_path / "ours")
    peft_shapes, peft_config = _saved(tmp_path / "peft")
    our_shapes, our_config = _saved(tmp_path / "ours")
    assert our_shapes == peft_shapes
    assert set(peft_config) <= set(our_config)
    for name in CONFIG_FIELDS:
        assert our_config[name] == peft_config[name], name
    targets = our_config["target_modules"]
    if isinstance(targets, list):
        assert sorted(targets) == sorted(peft_config["target_modules"])
    elif targets != "all-linear":  # peft writes the names all-linear expanded to
        assert targets == peft_config["target_modules"]


def test_peft_saved_embedding_weights_are_loaded(tmp_path: Path) -> None:
    """peft saves a targeted ``embed_tokens`` whole (for resized vocabularies); loading restores it, as peft does."""
    build, make_inputs = MODELS["llama"]
    inputs = make_inputs()
    ref = peft.get_peft_model(
        build(), peft.LoraConfig(**_kwargs({"target_modules": ["embed_tokens", "q_proj"]}))
    )
    with torch.no_grad():  # stands in for rows of newly added tokens
        ref.base_model.model.model.embed_tokens.base_layer.weight[-5:] += 1.0
    ref.save_pretrained(tmp_path)
    expected = run(ref, inputs)
    with no_peftkit_warnings():
        ours = peftkit.PeftModel.from_pretrained(build(), tmp_path)
    assert_same(run(ours, inputs), expected)


def test_bias_all_adapter_from_peft_is_refused_beside_another_adapter(tmp_path: Path) -> None:
    """Base biases are shared by every adapter, so a ``bias="all"`` adapter is refused as a model's second one
    (it would overwrite the biases the first adapter runs with); as the only adapter it loads with them."""
    build, make_inputs = MODELS["opt"]
    inputs = make_inputs()
    ref = peft.get_peft_model(
        build(), peft.LoraConfig(**_kwargs({"target_modules": ["q_proj"], "bias": "all"}))
    )
    perturb_trainable(ref)
    ref.save_pretrained(tmp_path)
    expected = run(ref, inputs)
    ours = peftkit.get_peft_model(build(), peftkit.config("lora", **_kwargs({"target_modules": ["k_proj"]})))
    before = run(ours, inputs)
    with pytest.raises(peftkit.ConfigError, match="only a model's first adapter may train them"):
        ours.load_adapter(tmp_path, adapter_name="b")
    assert list(ours.peft_config) == ["default"]
    assert_same(run(ours, inputs), before)
    # Loaded as the only adapter, the biases it trained come with it.
    alone = peftkit.PeftModel.from_pretrained(build(), tmp_path)
    assert_same(run(alone, inputs), expected)


def test_seq_cls_head_is_saved_automatically(tmp_path: Path) -> None:
    """peft puts the classifier into modules_to_save for SEQ_CLS; peftkit must save and load it the same way."""
    build, _ = MODELS["bert"]
    ours = peftkit.get_peft_model(build(), peftkit.config("lora", **_kwargs({"task_type": "SEQ_CLS"})))
    assert isinstance(ours, peftkit.PeftModelForSequenceClassification)
    assert "classifier" in ours.peft_config["default"].modules_to_save
    ours.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert {"base_model.model.classifier.weight", "base_model.model.classifier.bias"} <= keys
    ref = peft.PeftModel.from_pretrained(build(), tmp_path)
    assert type(ref).__name__ == "PeftModelForSequenceClassification"


def test_peft_saved_config_loads_without_warnings(tmp_path: Path) -> None:
    """Every field peft writes is known to peftkit's LoraConfig (none dropped with a warning)."""
    build, _ = MODELS["opt"]
    peft.get_peft_model(build(), peft.LoraConfig(target_modules=["q_proj"])).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "adapter_config.json").read_text())
    from peftkit_lora import LoraConfig

    with no_peftkit_warnings():
        config = LoraConfig.from_dict(data)
    assert config.target_modules == ["q_proj"]
    assert set(data) <= set(LoraConfig.field_names())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("layer_replication", [[0, 1]]),
        ("target_parameters", ["mlp.experts.gate_up_proj"]),
        ("trainable_token_indices", [1, 2]),
        ("loftq_config", {"loftq_bits": 4}),
        ("init_lora_weights", "loftq"),
        ("use_qalora", True),
        ("alora_invocation_tokens", [5]),
        ("megatron_config", {"tensor_model_parallel_size": 2}),
    ],
)
def test_unsupported_peft_features_are_refused(field: str, value: Any) -> None:
    with pytest.raises(peftkit.ConfigError, match="not supported yet"):
        peftkit.config("lora", target_modules=["q_proj"], **{field: value})

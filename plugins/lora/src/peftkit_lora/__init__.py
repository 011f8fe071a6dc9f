"""peftkit-lora: the LoRA method plugin. Importing this module loads neither torch nor transformers."""

from __future__ import annotations

from typing import Any

from peftkit import Method, hookimpl

__all__ = ["LoraConfig", "add_weighted_adapter"]

_LLAMA_LIKE = ["q_proj", "v_proj"]
DEFAULT_TARGETS = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "opt": _LLAMA_LIKE,
    "gpt2": ["c_attn"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "t5": ["q", "v"],
    "bart": _LLAMA_LIKE,
    "gpt_neox": ["query_key_value"],
    "falcon": ["query_key_value"],
    "bloom": ["query_key_value"],
    "phi": ["q_proj", "v_proj", "fc1", "fc2"],
}


@hookimpl
def peftkit_register_methods(register: Any) -> None:
    register(
        Method(
            name="lora",
            peft_type="LORA",
            config="peftkit_lora.config:LoraConfig",
            layer="peftkit_lora.layer:LoraLayer",
            prefix="lora_",
            default_targets=DEFAULT_TARGETS,
            layer_types=("Linear", "Conv1D", "Embedding", "Conv1d", "Conv2d", "Conv3d"),
            model_methods={"add_weighted_adapter": "peftkit_lora.weighted:add_weighted_adapter"},
            hooks={"convert_for_initial_model": "peftkit_lora.pissa:convert_for_initial_model"},
        )
    )


def __getattr__(name: str) -> Any:
    if name == "LoraConfig":
        from peftkit_lora.config import LoraConfig

        return LoraConfig
    if name == "add_weighted_adapter":
        from peftkit_lora.weighted import add_weighted_adapter

        return add_weighted_adapter
    raise AttributeError(name)

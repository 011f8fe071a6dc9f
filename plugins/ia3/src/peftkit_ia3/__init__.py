"""peftkit-ia3: the (IA)^3 method plugin. Importing this module loads neither torch nor transformers."""

from __future__ import annotations

from typing import Any

from peftkit import Method, hookimpl

__all__ = ["IA3Config"]

# Hugging Face PEFT's defaults by transformers model_type: the adapted modules, and which of them
# are feed-forward (scaled on their input).
DEFAULT_TARGETS = {
    "llama": ["k_proj", "v_proj", "down_proj"],
    "mistral": ["k_proj", "v_proj", "down_proj"],
    "qwen2": ["q_proj", "v_proj", "down_proj"],
    "gemma": ["q_proj", "v_proj", "down_proj"],
    "gpt2": ["c_attn", "mlp.c_proj"],
    "bert": ["key", "value", "output.dense"],
    "roberta": ["key", "value", "output.dense"],
    "t5": ["k", "v", "wo"],
    "opt": ["q_proj", "k_proj", "fc2"],
    "bart": ["q_proj", "v_proj", "fc2"],
    "phi": ["q_proj", "v_proj", "fc2"],
    "gpt_neox": ["query_key_value", "dense_4h_to_h"],
    "falcon": ["query_key_value", "dense_4h_to_h"],
    "bloom": ["query_key_value", "mlp.dense_4h_to_h"],
}
DEFAULT_FEEDFORWARD = {model_type: targets[-1:] for model_type, targets in DEFAULT_TARGETS.items()}


@hookimpl
def peftkit_register_methods(register: Any) -> None:
    register(
        Method(
            name="ia3",
            peft_type="IA3",
            config="peftkit_ia3.config:IA3Config",
            layer="peftkit_ia3.layer:IA3Layer",
            prefix="ia3_",
            default_targets=DEFAULT_TARGETS,
            layer_types=("Linear", "Conv1D"),
            hooks={"prepare_config": "peftkit_ia3.config:prepare_config"},
        )
    )


def __getattr__(name: str) -> Any:
    if name == "IA3Config":
        from peftkit_ia3.config import IA3Config

        return IA3Config
    raise AttributeError(name)

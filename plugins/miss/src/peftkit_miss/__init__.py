"""peftkit-miss: the MiSS method plugin (balance, bat, mini) and Bone checkpoints.

Importing this module loads neither torch nor transformers.
"""

from __future__ import annotations

from typing import Any

from peftkit import Method, hookimpl

__all__ = ["MissConfig"]

_QV = ["q_proj", "v_proj"]
# Default targets per transformers model_type (the same modules Hugging Face PEFT picks for MiSS).
DEFAULT_TARGETS = {
    "llama": _QV,
    "mistral": _QV,
    "mixtral": _QV,
    "qwen2": _QV,
    "qwen3": _QV,
    "gemma": _QV,
    "gemma2": _QV,
    "stablelm": _QV,
    "opt": _QV,
    "bart": _QV,
    "gptj": _QV,
    "gpt_neo": _QV,
    "gpt2": ["c_attn"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "t5": ["q", "v"],
    "mt5": ["q", "v"],
    "gpt_neox": ["query_key_value"],
    "falcon": ["query_key_value"],
    "bloom": ["query_key_value"],
    "phi": ["q_proj", "v_proj", "fc1", "fc2"],
}


@hookimpl
def peftkit_register_methods(register: Any) -> None:
    register(
        Method(
            name="miss",
            peft_type="MISS",
            config="peftkit_miss.config:MissConfig",
            layer="peftkit_miss.layer:MissLayer",
            prefix="miss_",
            default_targets=DEFAULT_TARGETS,
            layer_types=("Linear", "Conv1D"),
        )
    )


@hookimpl
def peftkit_translate_checkpoint(config: dict[str, Any], tensors: dict[str, Any]) -> Any:
    from peftkit_miss.bone import translate

    return translate(config, tensors)


@hookimpl
def peftkit_register_converters(register: Any) -> None:
    from peftkit_miss.bone import convert_bone_to_miss

    register(
        "bone-to-miss",
        convert_bone_to_miss,
        "rewrite a Bone adapter folder (peft_type BONE, bone_block tensors) as a MiSS adapter",
    )


def __getattr__(name: str) -> Any:
    if name == "MissConfig":
        from peftkit_miss.config import MissConfig

        return MissConfig
    raise AttributeError(name)

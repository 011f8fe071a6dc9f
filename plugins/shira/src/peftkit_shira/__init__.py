"""peftkit-shira: the SHiRA method plugin (sparse high-rank adapters).

Importing this module loads neither torch nor transformers.
"""

from __future__ import annotations

from typing import Any

from peftkit import Method, hookimpl

__all__ = ["ShiraConfig"]

_QV = ["q_proj", "v_proj"]
# Default targets per transformers model_type (the modules Hugging Face PEFT picks for SHiRA).
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
    "phi": _QV,
    "gpt2": ["c_attn"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "t5": ["q", "v"],
    "mt5": ["q", "v"],
    "gpt_neox": ["query_key_value"],
    "falcon": ["query_key_value"],
    "bloom": ["query_key_value"],
}


@hookimpl
def peftkit_register_methods(register: Any) -> None:
    register(
        Method(
            name="shira",
            peft_type="SHIRA",
            config="peftkit_shira.config:ShiraConfig",
            layer="peftkit_shira.layer:ShiraLayer",
            prefix="shira_",
            default_targets=DEFAULT_TARGETS,
            layer_types=("Linear", "Conv1D"),
        )
    )


@hookimpl
def peftkit_translate_checkpoint(config: dict[str, Any], tensors: dict[str, Any]) -> Any:
    if config.get("peft_type") != "SHIRA":
        return None
    from peftkit_shira.layer import integer_indices

    return integer_indices(config, tensors)


def __getattr__(name: str) -> Any:
    if name == "ShiraConfig":
        from peftkit_shira.config import ShiraConfig

        return ShiraConfig
    raise AttributeError(name)

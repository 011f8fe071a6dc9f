"""peftkit-oft: the OFT method plugin. Importing this module loads neither torch nor transformers."""

from __future__ import annotations

from typing import Any

from peftkit import Method, hookimpl

__all__ = ["OFTConfig"]

_QV = ["q_proj", "v_proj"]
# Default targets per transformers model_type (the modules Hugging Face PEFT picks for OFT).
DEFAULT_TARGETS = {
    "llama": _QV,
    "mistral": _QV,
    "qwen2": _QV,
    "gemma": _QV,
    "opt": _QV,
    "bart": _QV,
    "gpt2": ["c_attn"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "t5": ["q", "v"],
    "gpt_neox": ["query_key_value"],
    "falcon": ["query_key_value"],
    "bloom": ["query_key_value"],
    "phi": ["q_proj", "v_proj", "fc1", "fc2"],
}


@hookimpl
def peftkit_register_methods(register: Any) -> None:
    register(
        Method(
            name="oft",
            peft_type="OFT",
            config="peftkit_oft.config:OFTConfig",
            layer="peftkit_oft.layer:OFTLayer",
            prefix="oft_",
            default_targets=DEFAULT_TARGETS,
            layer_types=("Linear", "Conv1D", "Embedding", "Conv1d", "Conv2d", "Conv3d"),
        )
    )


@hookimpl
def peftkit_translate_checkpoint(config: dict[str, Any], tensors: dict[str, Any]) -> Any:
    # OFT checkpoints need no translation; the hook only refuses formats that cannot be read.
    from peftkit_oft.legacy import check_checkpoint

    check_checkpoint(config, tensors)
    return None


def __getattr__(name: str) -> Any:
    if name == "OFTConfig":
        from peftkit_oft.config import OFTConfig

        return OFTConfig
    raise AttributeError(name)

"""peftkit-vera: the VeRA method plugin. Importing this module loads neither torch nor transformers."""

from __future__ import annotations

from typing import Any

from peftkit import Method, hookimpl

__all__ = ["VeraConfig"]

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
    "phi": _LLAMA_LIKE,
}
PROJECTION_KEYS = ("base_model.vera_A", "base_model.vera_B")


@hookimpl
def peftkit_register_methods(register: Any) -> None:
    register(
        Method(
            name="vera",
            peft_type="VERA",
            config="peftkit_vera.config:VeraConfig",
            layer="peftkit_vera.layer:VeraLayer",
            prefix="vera_lambda_",
            default_targets=DEFAULT_TARGETS,
            layer_types=("Linear", "Conv1D"),
            model_level=("vera_A", "vera_B"),
        )
    )


@hookimpl
def peftkit_translate_checkpoint(config: dict[str, Any], tensors: dict[str, Any]) -> Any:
    """Refuse a VeRA checkpoint whose config promises saved projections that the file does not hold."""
    if config.get("peft_type") != "VERA" or not config.get("save_projection", True):
        return None
    missing = [key for key in PROJECTION_KEYS if key not in tensors]
    if missing:
        from peftkit import CheckpointError

        raise CheckpointError(
            f"this VeRA adapter's config has save_projection=True but its weights file lacks {missing}; "
            "the file is incomplete. If the projections were deliberately left out, load it with "
            "config=VeraConfig(..., save_projection=False) to regenerate them from projection_prng_key"
        )
    return None


def __getattr__(name: str) -> Any:
    if name == "VeraConfig":
        from peftkit_vera.config import VeraConfig

        return VeraConfig
    raise AttributeError(name)

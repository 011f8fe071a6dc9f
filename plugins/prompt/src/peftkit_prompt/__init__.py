"""peftkit-prompt: prompt tuning, prefix tuning and p-tuning. Importing this module loads neither torch nor transformers."""

from __future__ import annotations

from typing import Any

from peftkit import Method, hookimpl

__all__ = ["PrefixTuningConfig", "PromptEncoderConfig", "PromptTuningConfig"]

# The hooks the core calls for a method without layers (see peftkit.hookspecs.MethodHooks).
_HOOKS = {
    "prepare_config": "peftkit_prompt.setup:prepare_config",
    "create_adapter": "peftkit_prompt.setup:create_adapter",
    "state_slots": "peftkit_prompt.setup:state_slots",
    "forward": "peftkit_prompt.forward:forward",
    "generate": "peftkit_prompt.generate:generate",
}

_METHODS = (
    ("prompt_tuning", "PROMPT_TUNING", "PromptTuningConfig"),
    ("prefix_tuning", "PREFIX_TUNING", "PrefixTuningConfig"),
    ("p_tuning", "P_TUNING", "PromptEncoderConfig"),
)


@hookimpl
def peftkit_register_methods(register: Any) -> None:
    for name, peft_type, config in _METHODS:
        register(
            Method(
                name=name,
                peft_type=peft_type,
                config=f"peftkit_prompt.config:{config}",
                layer=None,
                prefix="prompt_encoder",
                model_level=("prompt_encoder",),
                hooks=_HOOKS,
            )
        )


def __getattr__(name: str) -> Any:
    if name in __all__:
        from peftkit_prompt import config

        return getattr(config, name)
    raise AttributeError(name)

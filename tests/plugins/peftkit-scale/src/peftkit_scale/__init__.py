"""peftkit-scale: a third-party method written only against peftkit's public API.

This module is what the ``scale`` entry point names, so it imports nothing heavy: the config and
layer classes are named as ``"module:attr"`` strings and imported on first use.
"""

from __future__ import annotations

from typing import Any

import peftkit

__all__ = ["ScaleConfig"]


@peftkit.hookimpl
def peftkit_register_methods(register: Any) -> None:
    register(
        peftkit.Method(
            name="scale",
            peft_type="SCALE",
            config="peftkit_scale.config:ScaleConfig",
            layer="peftkit_scale.layer:ScaleLayer",
            prefix="scale_",
            default_targets={"llama": ["q_proj", "v_proj"]},
            layer_types=("Linear", "Conv1D"),
        )
    )


def __getattr__(name: str) -> Any:
    if name == "ScaleConfig":
        from peftkit_scale.config import ScaleConfig

        return ScaleConfig
    raise AttributeError(name)

"""Selecting methods by name."""

from __future__ import annotations

from typing import Any

from peftkit._config import PeftConfig, make_config
from peftkit._plugins import registry


def config(name: str, **kwargs: Any) -> PeftConfig:
    """The config of the installed method ``name`` (``"lora"``, ``"miss"``...), from keyword arguments."""
    return make_config(name, **kwargs)


def list_methods() -> list[dict[str, Any]]:
    """The installed methods: name, PEFT type, distribution, version, adaptable layer types and view kinds."""
    return [
        {
            "method": m.name,
            "peft_type": m.peft_type,
            "distribution": m.dist,
            "version": m.version,
            "layer_types": list(m.layer_types),
            "view_kinds": list(m.view_kinds),
        }
        for m in sorted(registry().methods.values(), key=lambda m: m.name)
    ]

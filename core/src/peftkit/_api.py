"""Selecting methods, and their configs, by name or by a saved config's ``peft_type``."""

from __future__ import annotations

from typing import Any

from peftkit._config import ConfigError, PeftConfig, build_checked, lacking_fields, lacking_message
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


def config_from_dict(data: dict[str, Any]) -> PeftConfig:
    """The right method's config for a dict carrying ``peft_type``; unknown methods name the package to install."""
    if not data.get("peft_type"):
        raise ConfigError("the adapter config has no 'peft_type'; cannot tell which method it is for")
    method = registry().by_peft_type(str(data["peft_type"]))
    return method.config_class.from_dict(data)


def make_config(name: str, **kwargs: Any) -> PeftConfig:
    """The config of the method called ``name`` (``"lora"``, ``"miss"``...), built from keyword arguments.

    A misspelled field is an error that lists the valid ones.
    """
    cls = registry().by_name(name).config_class
    lacking = {key: kwargs[key] for key in lacking_fields(cls) if key in kwargs}
    if lacking:
        raise ConfigError(lacking_message(cls, lacking))
    unknown = sorted(set(kwargs) - set(cls.field_names()))
    if unknown:
        raise ConfigError(
            f"{cls.__name__} has no field(s) {unknown}; valid fields: {', '.join(sorted(cls.field_names()))}"
        )
    return build_checked(cls, kwargs)

"""Checks a new adapter must pass against those already on the model, before anything changes."""

from __future__ import annotations

from typing import Any

from peftkit._config import ConfigError


def check_bias_sharing(existing: dict[str, Any], adapter_name: str, config: Any) -> None:
    """Refuse a second adapter that trains base biases: every adapter shares them, so one would overwrite the other's."""
    bias = getattr(config, "bias", "none")
    if bias == "none" or not existing:
        return
    raise ConfigError(
        f"adapter {adapter_name!r} has bias={bias!r}, but this model already holds {list(existing)}; "
        "base biases are shared by all adapters, so only a model's first adapter may train them. "
        "Set bias='none' for this adapter"
    )

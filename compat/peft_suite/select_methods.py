"""A pytest plugin for PEFT's own test files: keep only the cases of the methods peftkit implements.

Loaded with ``-p select_methods``. A case is kept when one of its parameters is one of the config
classes below (or an instance of one), whichever ``peft`` the run imports: the real one (the
baseline) or the shim that maps PEFT's names onto peftkit.
"""

from __future__ import annotations

from typing import Any

METHODS = ("LoraConfig", "MissConfig", "OFTConfig", "ShiraConfig", "VeraConfig")


def _config_name(value: Any) -> str | None:
    if isinstance(value, type):
        return value.__name__
    name = type(value).__name__
    return name if name.endswith("Config") else None


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    kept, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        names = {_config_name(v) for v in params.values()}
        (kept if names & set(METHODS) else dropped).append(item)
    items[:] = kept
    config.hook.pytest_deselected(items=dropped)

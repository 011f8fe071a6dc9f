"""The method registry: what plugins register, validated and owned by the core."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


def resolve(target: str | Any) -> Any:
    """Import ``"package.module:attr"`` on first use; any other object is returned as is.

    Plugins name their classes this way so that discovery never imports torch.
    """
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


@dataclass(frozen=True)
class Method:
    """One PEFT method as a plugin registers it.

    ``config`` and ``layer`` may be classes or lazy ``"module:attr"`` strings. ``prefix`` starts the
    names of the method's parameters (``"lora_"``); the core uses it to find them for saving,
    freezing and counting. ``default_targets`` maps a transformers ``model_type`` to module names.
    ``layer_types`` names the base layers the method can adapt (for ``list-methods``).
    ``model_level`` names adapter tensors that live on the model, not a layer (VeRA's projections).
    """

    name: str
    peft_type: str
    config: Any
    layer: Any = None
    prefix: str = ""
    default_targets: Mapping[str, Sequence[str]] = field(default_factory=dict)
    layer_types: Sequence[str] = ()
    model_level: Sequence[str] = ()
    dist: str = "unknown"
    version: str = "0"

    @property
    def config_class(self) -> type:
        return resolve(self.config)

    @property
    def layer_class(self) -> type:
        return resolve(self.layer)

    @property
    def origin(self) -> str:
        return f"{self.dist}=={self.version}"


class DuplicateMethodError(RuntimeError):
    """Two installed distributions register the same method name or PEFT type."""


class UnknownMethodError(KeyError):
    """No installed plugin serves the requested method name or PEFT type."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class Registry:
    """Methods by name and by PEFT type, plus plugins that failed to load."""

    methods: dict[str, Method] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)
    conflicts: dict[str, str] = field(default_factory=dict)
    backends: list[tuple[str, list[str], str]] = field(default_factory=list)

    def add(self, method: Method) -> None:
        """Add a method; a second registration of a name or PEFT type makes that name unusable.

        Both claimants are withdrawn rather than one silently winning, because the name is
        written into saved adapters; using the name then raises an error naming both.
        """
        for other in list(self.methods.values()):
            if other.name == method.name or other.peft_type == method.peft_type:
                del self.methods[other.name]
                self.conflicts[method.name] = self.conflicts[other.name] = (
                    f"method {method.name!r} (PEFT type {method.peft_type}) is registered by both "
                    f"{other.origin} and {method.origin}; uninstall one of them"
                )
                return
        if method.name in self.conflicts:
            return
        self.methods[method.name] = method

    def by_name(self, name: str) -> Method:
        key = name.lower()
        if key in self.conflicts:
            raise DuplicateMethodError(self.conflicts[key])
        if key in self.methods:
            return self.methods[key]
        for method in self.methods.values():
            if method.peft_type == name.upper():
                return method
        raise UnknownMethodError(
            f"no installed plugin provides the method {name!r}; installed: "
            f"{sorted(self.methods) or 'none'}. Install it with `pip install peftkit-{key.replace('_', '-')}`"
            f"{self._broken_hint()}"
        )

    def by_peft_type(self, peft_type: str) -> Method:
        for method in self.methods.values():
            if method.peft_type == peft_type:
                return method
        if peft_type.lower() in self.conflicts:
            raise DuplicateMethodError(self.conflicts[peft_type.lower()])
        guess = peft_type.lower().replace("_", "-")
        raise UnknownMethodError(
            f"this adapter has peft_type {peft_type!r}, which no installed plugin serves; "
            f"install the distribution that provides it (for example `pip install peftkit-{guess}`)"
            f"{self._broken_hint()}"
        )

    def _broken_hint(self) -> str:
        if not self.broken:
            return ""
        return "; plugins that failed to load: " + ", ".join(f"{k} ({v})" for k, v in self.broken.items())

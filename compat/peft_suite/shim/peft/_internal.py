"""Placeholders for PEFT internals peftkit has no counterpart of.

A test that touches one (calls it, reads an attribute, or checks ``isinstance`` against it) fails
with :class:`ReadsPeftInternals`; the comparison counts such cases as reading PEFT internals
rather than as peftkit failures.
"""

from __future__ import annotations

from typing import Any


class ReadsPeftInternals(Exception):
    """The test used a PEFT internal that the shim does not map onto peftkit."""


class _Refusing(type):
    def __instancecheck__(cls, obj: object) -> bool:
        raise ReadsPeftInternals(f"isinstance(..., {cls.__qualname__})")

    def __subclasscheck__(cls, sub: type) -> bool:
        raise ReadsPeftInternals(f"issubclass(..., {cls.__qualname__})")

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise ReadsPeftInternals(f"{cls.__qualname__}(...)")

    def __getattr__(cls, name: str) -> Any:
        raise ReadsPeftInternals(f"{cls.__qualname__}.{name}")


def internal(name: str) -> type:
    """A class standing for the PEFT internal ``name``."""
    return _Refusing(name, (), {})


def unsupported_method(name: str) -> type:
    """A config class of a method peftkit does not implement: it can be built (the test modules build
    some at import time), and its cases are not selected."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        self.kwargs = kwargs

    return type(name, (), {"__init__": __init__})


class _RefusingMapping(dict):
    def __getitem__(self, key: Any) -> Any:
        raise ReadsPeftInternals(f"a PEFT target-module table[{key!r}]")

    def get(self, key: Any, default: Any = None) -> Any:
        raise ReadsPeftInternals(f"a PEFT target-module table.get({key!r})")


def internal_mapping() -> dict:
    return _RefusingMapping()


def internal_function(name: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise ReadsPeftInternals(f"{name}(...)")

    refuse.__name__ = name
    return refuse

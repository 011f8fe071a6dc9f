"""Discovery: load plugins from installed distributions' entry points into a plugin manager."""

from __future__ import annotations

import os
import sys
import warnings
from functools import lru_cache
from typing import Any

import pluggy

from peftkit import hookspecs
from peftkit._registry import Method, Registry

if sys.version_info >= (3, 10):
    from importlib import metadata
else:  # pragma: no cover - the backport is only needed before 3.10
    import importlib_metadata as metadata

GROUP = "peftkit"
ALLOW_ENV = "PEFTKIT_LOAD_PLUGINS"
BUILTINS = ("peftkit._dense",)


def _allowed(name: str) -> bool:
    allow = os.environ.get(ALLOW_ENV)
    if allow is None:
        return True
    return name in {part.strip() for part in allow.split(",") if part.strip()}


def make_plugin_manager(entry_points: Any = None) -> pluggy.PluginManager:
    """A fresh plugin manager with the built-ins and every allowed, importable entry point.

    A plugin that fails to import is recorded in ``pm.peftkit_broken`` and skipped.
    """
    pm = pluggy.PluginManager("peftkit")
    pm.add_hookspecs(hookspecs)
    pm.peftkit_broken = {}
    pm.peftkit_dists = {}
    for module_name in BUILTINS:
        module = __import__(module_name, fromlist=["_"])
        pm.register(module, name=module_name)
        pm.peftkit_dists[module_name] = ("peftkit", _version("peftkit"))
    if entry_points is None:
        entry_points = metadata.entry_points(group=GROUP)
    for ep in entry_points:
        if not _allowed(ep.name) or pm.get_plugin(ep.name) is not None:
            continue
        dist = getattr(ep, "dist", None)
        origin = (dist.name, dist.version) if dist is not None else (ep.value, "0")
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # one broken plugin must not take the others down
            pm.peftkit_broken[ep.name] = f"{origin[0]}=={origin[1]}: {type(exc).__name__}: {exc}"
            continue
        pm.peftkit_dists[ep.name] = origin
    return pm


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "0"


def build_registry(pm: pluggy.PluginManager) -> Registry:
    """Ask every plugin to register its methods; the core owns naming and collisions."""
    registry = Registry(broken=dict(pm.peftkit_broken))
    for impl in reversed(pm.hook.peftkit_register_methods.get_hookimpls()):
        dist, version = pm.peftkit_dists.get(impl.plugin_name, ("unknown", "0"))

        def register(method: Method, _dist: str = dist, _version: str = version) -> None:
            if not isinstance(method, Method):
                raise TypeError(f"register() expects a peftkit.Method, got {type(method).__name__}")
            registry.add(_with_origin(method, _dist, _version))

        try:
            impl.function(register=register)
        except Exception as exc:
            registry.broken[impl.plugin_name] = f"{dist}=={version}: {type(exc).__name__}: {exc}"
    for impl in pm.hook.peftkit_describe_backends.get_hookimpls():
        dist, version = pm.peftkit_dists.get(impl.plugin_name, ("unknown", "0"))
        for name, layer_types in impl.function():
            registry.backends.append((name, list(layer_types), f"{dist}=={version}"))
    return registry


def _with_origin(method: Method, dist: str, version: str) -> Method:
    from dataclasses import replace

    return replace(method, dist=dist, version=version)


@lru_cache(maxsize=1)
def _default_state() -> tuple[pluggy.PluginManager, Registry]:
    pm = make_plugin_manager()
    return pm, build_registry(pm)


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use."""
    return _default_state()[0]


def registry() -> Registry:
    """The process-wide method registry, built on first use."""
    return _default_state()[1]


def reset() -> None:
    """Forget the discovered plugins so the next call rediscovers them (tests, notebooks)."""
    _default_state.cache_clear()


def warn_broken() -> None:
    for name, error in registry().broken.items():
        warnings.warn(f"peftkit plugin {name!r} failed to load and was skipped: {error}")

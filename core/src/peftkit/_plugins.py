"""Discovery: load plugins from installed distributions' entry points into a plugin manager.

Nothing here imports torch: listing methods must stay fast. One plugin failing (at import, at
registration, or by implementing a hook peftkit does not define) is recorded as broken and the
others keep working.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from importlib import metadata  # 3.10+ has entry_points(group=...): no backport needed
from typing import Any

import pluggy

from peftkit import hookspecs
from peftkit._registry import Backend, Converter, Method, Registry, view_kinds_of

GROUP = "peftkit"
ALLOW_ENV = "PEFTKIT_LOAD_PLUGINS"
BUILTINS = ("peftkit._dense",)


def allowed_plugins() -> set[str] | None:
    """Entry-point names ``PEFTKIT_LOAD_PLUGINS`` allows (comma-separated), or None when unset (all).

    An empty value loads only the built-ins.
    """
    allow = os.environ.get(ALLOW_ENV)
    if allow is None:
        return None
    return {part.strip() for part in allow.split(",") if part.strip()}


class PluginManager(pluggy.PluginManager):
    """pluggy's manager of the ``peftkit`` hooks, with what loading the plugins found out."""

    def __init__(self) -> None:
        super().__init__("peftkit")
        self.peftkit_broken: dict[str, str] = {}  # plugin name -> why it could not be loaded
        self.peftkit_dists: dict[str, tuple[str, str]] = {}  # plugin name -> (distribution, version)


def make_plugin_manager(entry_points: Iterable[Any] | None = None) -> PluginManager:
    """A fresh plugin manager with the built-ins and every allowed, loadable entry point.

    ``entry_points`` defaults to the installed ones in group ``peftkit``; tests pass fakes (objects
    with ``name``, ``value``, ``dist`` and ``load()``). Failures are kept in ``pm.peftkit_broken``,
    and each plugin's ``(distribution, version)`` in ``pm.peftkit_dists``.
    """
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTINS:
        pm.register(importlib.import_module(module_name), name=module_name)
        pm.peftkit_dists[module_name] = ("peftkit", _version("peftkit"))
    if entry_points is None:
        entry_points = metadata.entry_points(group=GROUP)
    allow = allowed_plugins()
    for ep in entry_points:
        if allow is None or ep.name in allow:
            _load_entry_point(pm, ep)
    return pm


def _origin(ep: Any) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ep.value, "0"
    return dist.name, dist.version


def _load_entry_point(pm: PluginManager, ep: Any) -> None:
    origin = _origin(ep)
    # Two distributions may pick the same entry-point name; load both so their methods meet in
    # the registry, where a clash is reported with both names instead of one being skipped.
    taken = pm.get_plugin(ep.name) is not None or ep.name in pm.peftkit_broken
    name = f"{ep.name} ({origin[0]})" if taken else ep.name
    try:
        plugin = ep.load()
        if pm.is_registered(plugin):  # one module behind two entry points: already loaded
            return
        pm.register(plugin, name=name)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit too: one broken plugin must not take the others down
        pm.peftkit_broken[name] = _failure(origin, exc)
        return
    pm.peftkit_dists[name] = origin
    unknown = [hc.name for hc in pm.get_hookcallers(plugin) or [] if not hc.has_spec()]
    if unknown:
        pm.unregister(plugin)
        del pm.peftkit_dists[name]
        pm.peftkit_broken[name] = (
            f"{origin[0]}=={origin[1]}: implements {', '.join(unknown)}, which peftkit does not define "
            "(a typo, or written for a newer peftkit?); mark optional hooks @hookimpl(optionalhook=True)"
        )


def _failure(origin: tuple[str, str], exc: BaseException) -> str:
    return f"{origin[0]}=={origin[1]}: {type(exc).__name__}: {exc}"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "0"


def build_registry(pm: PluginManager) -> Registry:
    """Ask every plugin to register its methods, converters and backends; the core owns naming and collisions.

    A plugin any of whose hooks raises (or registers something malformed) contributes nothing, is
    unregistered from ``pm`` and is recorded in ``registry.broken``.
    """
    registry = Registry(broken=dict(pm.peftkit_broken))
    methods = _collect(pm, registry, "peftkit_register_methods", _method_register)
    converters = _collect(pm, registry, "peftkit_register_converters", _converter_register)
    backends = _collect(pm, registry, "peftkit_describe_backends", None)
    for plugin, origin, items in methods:
        if plugin not in registry.broken:
            for method in items:
                registry.add(_with_origin(method, origin))
    for plugin, origin, items in converters:
        if plugin not in registry.broken:
            for converter in items:
                registry.add_converter(_with_origin(converter, origin))
    for plugin, origin, items in backends:
        if plugin not in registry.broken:
            registry.backends.extend(
                Backend(name, types, *origin, kinds=kinds) for name, types, kinds in items
            )
    return registry


def _collect(
    pm: PluginManager, registry: Registry, hook: str, make_register: Callable[[list[Any]], Any] | None
) -> list[tuple[str, tuple[str, str], list[Any]]]:
    """Call ``hook`` on each plugin in registration order: ``[(plugin name, origin, what it registered)]``.

    Hooks that take ``register`` get one that collects into a list; the others return their items.
    """
    results = []
    for impl in getattr(pm.hook, hook).get_hookimpls():
        origin = pm.peftkit_dists.get(impl.plugin_name, ("unknown", "0"))
        items: list[Any] = []
        try:
            if make_register is None:
                items = [_backend_entry(entry) for entry in impl.function() or []]
            else:
                kwargs = {"register": make_register(items)}
                impl.function(*[kwargs[arg] for arg in impl.argnames])
        except Exception as exc:
            # A half-working plugin is treated as not loaded, so none of its hooks answer later.
            registry.broken[impl.plugin_name] = _failure(origin, exc)
            pm.unregister(name=impl.plugin_name)
            continue
        results.append((impl.plugin_name, origin, items))
    return results


def _backend_entry(entry: Any) -> tuple[str, list[str], dict[str, str]]:
    """One ``peftkit_describe_backends`` entry as ``(name, layer types, {layer type: view kind})``.

    The older form, a list of layer types, declares no kinds: :class:`Backend` guesses them.
    """
    if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)):
        raise TypeError(
            f"peftkit_describe_backends returned {entry!r}; each entry must be "
            "(backend name, {layer type name: view kind}), like ('bnb', {'Linear4bit': 'linear'})"
        )
    name, served = entry
    if isinstance(served, Mapping):
        kinds = {str(layer): kind for layer, kind in served.items()}
        view_kinds_of(list(kinds.values()), f"backend {name!r}")
        return name, list(kinds), kinds
    if isinstance(served, (list, tuple)):
        return name, [str(layer) for layer in served], {}
    raise TypeError(f"backend {name!r}: layer types must be a dict {{layer type: view kind}}, got {served!r}")


def _method_register(sink: list[Any]) -> Callable[[Method], None]:
    def register(method: Method) -> None:
        if not isinstance(method, Method):
            raise TypeError(f"register() expects a peftkit.Method, got {type(method).__name__}")
        sink.append(method)

    return register


def _converter_register(sink: list[Any]) -> Callable[..., None]:
    def register(name: str, convert: Callable[[str, str], None] | str, help: str = "") -> None:
        sink.append(Converter(name, convert, help))

    return register


def _with_origin(item: Any, origin: tuple[str, str]) -> Any:
    from dataclasses import replace

    return replace(item, dist=origin[0], version=origin[1])


@lru_cache(maxsize=1)
def _default_state() -> tuple[PluginManager, Registry]:
    pm = make_plugin_manager()
    return pm, build_registry(pm)


def plugin_manager() -> PluginManager:
    """The process-wide plugin manager, built on first use."""
    return _default_state()[0]


def registry() -> Registry:
    """The process-wide method registry, built on first use."""
    return _default_state()[1]


def reset() -> None:
    """Forget the discovered plugins so the next call rediscovers them (tests, notebooks)."""
    _default_state.cache_clear()


def first_answer(hook: str, valid: Callable[[Any], bool], expected: str, **kwargs: Any) -> Any:
    """The first non-None answer to a first-result ``hook``, asking plugins in pluggy's order.

    Unlike calling the hook directly, one plugin cannot take the others down: an implementation
    that raises, or returns something ``valid`` rejects (``expected`` says what it should have
    returned), is disabled with a warning that names it, listed in ``registry().broken`` (so
    ``peftkit list-methods`` shows it), and the next plugin answers. A ``CheckpointError`` or
    ``ConfigError`` is the plugin refusing this input on purpose, with its reason: it propagates.
    """
    from peftkit._config import ConfigError
    from peftkit._io import CheckpointError

    pm = plugin_manager()
    for impl in reversed(getattr(pm.hook, hook).get_hookimpls()):
        try:
            result = impl.function(*[kwargs[arg] for arg in impl.argnames])
        except (CheckpointError, ConfigError):
            raise  # the plugin's deliberate, explained refusal of this input (a checkpoint it cannot read)
        except Exception as exc:
            _disable(impl.plugin_name, f"its {hook} raised {type(exc).__name__}: {exc}")
            continue
        if result is None:
            continue
        if valid(result):
            return result
        _disable(impl.plugin_name, f"its {hook} returned a {type(result).__name__}, not {expected}")
    return None


def _disable(plugin: str, why: str) -> None:
    """Take a plugin that failed at use time out of the process-wide manager and list it as broken."""
    pm = plugin_manager()
    dist, version = pm.peftkit_dists.get(plugin, ("unknown", "0"))
    message = f"{dist}=={version}: {why}"
    registry().broken[plugin] = message
    if pm.get_plugin(plugin) is not None:
        pm.unregister(name=plugin)
    warnings.warn(f"peftkit plugin {plugin!r} failed and was disabled ({message}); the other plugins answer")


def warn_broken() -> None:
    """Warn once per broken plugin of the process-wide registry."""
    for name, error in registry().broken.items():
        warnings.warn(f"peftkit plugin {name!r} failed to load and was skipped: {error}")

"""Which modules of a model a config targets."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from peftkit._config import ConfigError

ALL_LINEAR = "all-linear"
REGEX_BUDGET_S = 2.0  # total time a config's regex may spend matching one model's module names
_DEFAULT_LAYER_INDEX = re.compile(r".*\.[^.]*\.(\d+)\.")


class NoTargetError(ConfigError):
    """The config's targets matched no module of the model."""


def name_matcher(spec: str | Sequence[str] | None) -> Callable[[str], bool]:
    """A test of a module path against a ``target_modules``-style spec, compiled once.

    ``spec`` is a list of names (a path matches the exact name, its last segment, or a dotted
    suffix) or a regex the whole path must match; None matches nothing. Public as
    ``peftkit.name_matcher`` for methods with module lists of their own (IA3's ``feedforward_modules``).
    """
    if spec is None:
        return lambda _name: False
    if isinstance(spec, str):
        return _bounded_regex(spec)
    exact = set(spec)
    return lambda name: (
        name in exact
        or name.rsplit(".", 1)[-1] in exact
        or any(name.endswith("." + t) for t in exact if "." in t)
    )


def _bounded_regex(spec: str) -> Callable[[str], bool]:
    """A full-match test for the regex ``spec`` that gives up after ``REGEX_BUDGET_S`` over all names.

    A config is a stranger's text, and a pattern with catastrophic backtracking would otherwise
    hang the load; the ``regex`` engine (``re``'s syntax) can stop a match midway.
    """
    import time

    import regex

    try:
        pattern = regex.compile(spec)
    except regex.error as exc:
        raise ConfigError(f"target_modules / exclude_modules {spec!r} is not a valid regex: {exc}") from None
    deadline: list[float] = []

    def match(name: str) -> bool:
        if not deadline:
            deadline.append(time.monotonic() + REGEX_BUDGET_S)
        try:
            return pattern.fullmatch(name, timeout=max(deadline[0] - time.monotonic(), 1e-3)) is not None
        except TimeoutError:
            raise ConfigError(
                f"the regex {spec!r} (target_modules / exclude_modules) took over {REGEX_BUDGET_S:g} s to match "
                "this model's module names, so matching was stopped (catastrophic backtracking?); use a simpler "
                "pattern or a list of module names"
            ) from None

    return match


def _layer_index_matcher(config: Any) -> Callable[[str], bool]:
    layers = config.layers_to_transform
    if layers is None:
        return lambda _name: True
    wanted = {layers} if isinstance(layers, int) else set(layers)
    patterns = config.layers_pattern
    if patterns:
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        regexes = [re.compile(rf".*\.{re.escape(p)}\.(\d+)\.") for p in patterns]
    else:
        regexes = [_DEFAULT_LAYER_INDEX]

    def match(name: str) -> bool:
        for regex in regexes:
            found = regex.match(name)
            if found:
                return int(found.group(1)) in wanted
        return False

    return match


def _output_head_names(model: nn.Module) -> set[str]:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return {name for name, module in model.named_modules() if head is not None and module is head}


def resolve_target_spec(config: Any, model: nn.Module, default_targets: dict[str, Sequence[str]]) -> Any:
    """The config's ``target_modules``, or the method's default for the model's ``model_type``."""
    if config.target_modules is not None:
        return config.target_modules
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in default_targets:
        return list(default_targets[model_type])
    raise ConfigError(
        f"target_modules is not set and the method has no default for model_type {model_type!r}; "
        "pass target_modules=[...] (module names) or 'all-linear'"
    )


def find_targets(
    model: nn.Module,
    config: Any,
    default_targets: dict[str, Sequence[str]],
    is_linear: Callable[[str, nn.Module], bool],
    skip: Callable[[nn.Module], bool],
) -> list[str]:
    """Names of the modules to adapt, in model order; an error lists what was asked when nothing matches.

    ``is_linear(name, module)`` decides ``"all-linear"``; ``skip`` says which modules are adapter
    layers: their children are never targets.
    """
    spec = resolve_target_spec(config, model, default_targets)
    heads = _output_head_names(model) if spec == ALL_LINEAR else set()
    wanted = (
        (lambda n, m: n not in heads and is_linear(n, m)) if spec == ALL_LINEAR else _wrap(name_matcher(spec))
    )
    excluded = name_matcher(config.exclude_modules)
    in_layer = _layer_index_matcher(config)
    found: list[str] = []
    inside: list[str] = []  # prefixes of adapter layers, whose children are never targets
    for name, module in model.named_modules():
        if not name or any(name.startswith(p) for p in inside):
            continue
        if skip(module):
            inside.append(name + ".")
        if wanted(name, module) and not excluded(name) and in_layer(name):
            found.append(name)
    if not found:
        names = [n for n, _ in model.named_modules() if n][:12]
        raise NoTargetError(
            f"target_modules={spec!r} (exclude_modules={config.exclude_modules!r}, "
            f"layers_to_transform={config.layers_to_transform!r}) matched no module; "
            f"some module names in this model: {names}"
        )
    return found


def _wrap(match: Callable[[str], bool]) -> Callable[[str, nn.Module], bool]:
    return lambda name, _module: match(name)

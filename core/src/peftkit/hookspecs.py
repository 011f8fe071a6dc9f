"""The plugin contract: every hook a peftkit plugin can implement.

A plugin is a module named by an entry point in the ``peftkit`` group. It implements any of
these hooks with ``@peftkit.hookimpl``. Heavy imports (torch, transformers) belong inside the
objects a hook hands over, never at the plugin module's top level. A plugin that fails to import,
whose hook raises, or that implements a hook not listed here (mark hooks from a newer peftkit
``@hookimpl(optionalhook=True)``) is skipped and shown as broken by ``peftkit list-methods``; the
other plugins keep answering. To refuse an input on purpose (a checkpoint you recognise but cannot
read), raise ``peftkit.CheckpointError`` or ``peftkit.ConfigError`` with the reason: those reach the
user and do not mark the plugin broken.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from torch import nn

    from peftkit._registry import Method
    from peftkit.views import BaseLayerView

hookspec = pluggy.HookspecMarker("peftkit")


@hookspec
def peftkit_register_methods(register: Callable[[Method], None]) -> None:
    """Called once at discovery: call ``register(Method(...))`` for each method the plugin provides.

    If this hook raises, the plugin registers nothing and is listed as broken.
    """


@hookspec(firstresult=True)
def peftkit_base_layer_view(module: nn.Module, path: str, model: nn.Module | None) -> BaseLayerView | None:
    """Called for each module to adapt: return a ``BaseLayerView`` for it, or None to let others answer.

    ``path`` is the module's dotted name in ``model``, the model being adapted (a transformers model
    keeps its ``quantization_config`` in ``model.config``); both are ``""`` / None when a view is
    asked for a bare module. Take only the arguments you use: ``peftkit_base_layer_view(module)``
    is a valid implementation. Targeting may ask more than once per module, so keep state in the
    view. The core's dense view answers last (``trylast``), so backends such as bitsandbytes answer first.
    """


@hookspec(firstresult=True)
def peftkit_translate_checkpoint(config: dict[str, Any], tensors: dict[str, Any]) -> Any:
    """Called when loading an adapter: return ``(config, tensors)`` rewritten into a current format
    (for example a legacy Bone folder read as MiSS), or None when the checkpoint is not yours."""


@hookspec
def peftkit_describe_backends() -> list[tuple[str, dict[str, str] | list[str]]]:
    """Called at discovery: return ``[(backend name, {layer type name: view kind})]`` for the views served here.

    The kind is the ``kind`` of the views (``"linear"``, ``"conv"``, ``"embedding"``); ``list-methods``
    matches methods to backends by it. A plain list of layer type names is still read, its kinds
    guessed from the names (``Linear4bit`` is linear).
    """


@hookspec
def peftkit_register_converters(
    register: Callable[[str, Callable[[str, str], None] | str, str], None],
) -> None:
    """Called at discovery: ``register(name, convert, help)`` for each format converter that ``peftkit convert``
    runs as ``convert(in_path, out_path)`` (for example ``"bone-to-miss"``); ``convert`` may be a lazy
    ``"module:attr"`` string."""

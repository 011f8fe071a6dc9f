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
    import torch
    from torch import nn

    from peftkit._config import PeftConfig
    from peftkit._registry import Method
    from peftkit.peft_model import PeftModel
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
    raise NotImplementedError  # a specification: pluggy never calls it


@hookspec
def peftkit_register_converters(
    register: Callable[[str, Callable[[str, str], None] | str, str], None],
) -> None:
    """Called at discovery: ``register(name, convert, help)`` for each format converter that ``peftkit convert``
    runs as ``convert(in_path, out_path)`` (for example ``"bone-to-miss"``); ``convert`` may be a lazy
    ``"module:attr"`` string."""


class MethodHooks:
    """The model-level hooks a method may provide: the keys of ``Method.hooks``, each with its signature.

    ``Method(hooks={"forward": "my_plugin.forward:forward", ...})`` maps a name below to a function
    (or a lazy ``"module:attr"`` string). The core calls it as ``fn(model, ...)``, where ``model`` is
    the :class:`peftkit.PeftModel` (or, for :func:`peftkit.inject_adapter_in_model`, an object with
    the same lookups). A key not listed here, or a function whose parameters cannot take the call
    below, is refused with :class:`peftkit.PluginContractError` naming the method, the hook and the
    expected signature: at registration for functions, when first resolved (and by
    ``peftkit list-methods``) for lazy names. Functions that are not hooks but new public methods of
    the model (LoRA's ``add_weighted_adapter``) go in ``Method.model_methods`` instead.

    These stubs are the specification; they are never called.
    """

    @staticmethod
    def prepare_config(model: PeftModel, config: PeftConfig) -> PeftConfig:
        """In ``add_adapter``, before targets are found: return the config to use (e.g. sizes read from the model).

        Must return a config of the same class; returning None is refused at once.
        """
        raise NotImplementedError

    @staticmethod
    def create_adapter(model: PeftModel, adapter_name: str, config: PeftConfig) -> None:
        """In ``add_adapter``, after any layers got the adapter: build model-level modules (prompt encoders)."""
        raise NotImplementedError

    @staticmethod
    def forward(model: PeftModel, *args: Any, **kwargs: Any) -> Any:
        """Replaces the wrapped model's forward while an adapter of this method is active (not when disabled)."""
        raise NotImplementedError

    @staticmethod
    def generate(model: PeftModel, *args: Any, **kwargs: Any) -> Any:
        """Replaces the wrapped model's ``generate`` while an adapter of this method is active."""
        raise NotImplementedError

    @staticmethod
    def state_slots(
        model: PeftModel, adapter_name: str, slots: dict[str, Any], for_load: bool
    ) -> dict[str, Any]:
        """Rewrite the disk key -> ``(module, key, tensor)`` slots of an adapter before saving or loading.

        ``for_load`` is True when the slots receive a checkpoint. Return the slots to use.
        """
        raise NotImplementedError

    @staticmethod
    def convert_for_initial_model(
        model: PeftModel,
        adapter_name: str,
        config: PeftConfig,
        tensors: dict[str, torch.Tensor],
        initial_path: str,
    ) -> tuple[PeftConfig, dict[str, torch.Tensor]]:
        """``save_pretrained(path_initial_model_for_weight_conversion=...)``: return ``(config, tensors)`` of
        the equivalent adapter on the original base model (LoRA's PiSSA/OLoRA conversion)."""
        raise NotImplementedError


#: The hook names of :class:`MethodHooks`.
METHOD_HOOK_NAMES = tuple(
    name for name, value in vars(MethodHooks).items() if isinstance(value, staticmethod)
)

"""Putting adapter layers into a model and taking them out again, all or nothing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import nn

from peftkit._registry import Method
from peftkit._targeting import find_targets
from peftkit.errors import UnsupportedLayerError
from peftkit.layer import AdapterLayer, ModulesToSave
from peftkit.views import BaseLayerView


def get_view(module: nn.Module, path: str = "", model: nn.Module | None = None) -> BaseLayerView | None:
    """The base-layer view a backend offers for ``module``, the one at ``path`` in ``model``, or None.

    A failing backend is disabled (see first_answer); ``path`` and ``model`` reach backends that ask for them.
    """
    from peftkit._plugins import first_answer

    return first_answer(
        "peftkit_base_layer_view",
        lambda view: isinstance(view, BaseLayerView),
        "a peftkit.BaseLayerView",
        module=module,
        path=path,
        model=model,
    )


def _is_linear(model: nn.Module, path: str, module: nn.Module) -> bool:
    if isinstance(module, (AdapterLayer, nn.Embedding)) or not hasattr(module, "weight"):
        return False
    view = get_view(module, path, model)
    return view is not None and view.kind == "linear"


def _skip(module: nn.Module) -> bool:
    return isinstance(module, (AdapterLayer, ModulesToSave))


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@contextmanager
def _maybe_meta(enabled: bool) -> Iterator[None]:
    if enabled:
        with torch.device("meta"):
            yield
    else:
        yield


def inject_adapter(
    model: nn.Module,
    method: Method,
    config: Any,
    name: str,
    low_cpu_mem_usage: bool = False,
    owner: nn.Module | None = None,
) -> list[str]:
    """Add adapter ``name`` of ``method`` to every targeted module; on any error the model is left as it was.

    ``owner`` holds the method's model-level tensors (default: ``model``). Returns the adapted module names.
    """
    is_linear = partial(_is_linear, model)
    targets = find_targets(model, config, dict(method.default_targets), is_linear, _skip)
    layer_cls = method.layer_class
    plans: list[tuple[str, AdapterLayer[Any], bool]] = []
    for target in targets:
        module = model.get_submodule(target)
        if isinstance(module, AdapterLayer):
            if not isinstance(module, layer_cls):
                raise UnsupportedLayerError(
                    f"{target} already holds a {type(module).__name__} adapter; one model mixes no methods "
                    f"(cannot add {method.name!r})"
                )
            plans.append((target, module, False))
            continue
        view = get_view(module, target, model)
        if view is None:
            raise UnsupportedLayerError(
                f"{method.name}: module {target!r} of type {type(module).__name__} cannot be adapted; "
                f"supported: {', '.join(method.layer_types) or 'see peftkit list-methods'}"
                f"{_backend_hint(module)}"
            )
        plans.append((target, layer_cls(module, view), True))
    done: list[tuple[str, AdapterLayer[Any], bool]] = []
    try:
        for target, layer, _ in plans:
            layer.path = target
        layer_cls.before_inject(model if owner is None else owner, config, name, [p[1] for p in plans])
        for plan in plans:
            layer = plan[1]
            with _maybe_meta(low_cpu_mem_usage):
                layer.add_adapter(name, config)
            if not low_cpu_mem_usage:
                _move_like_base(layer, name)
            done.append(plan)
    except Exception:
        for _, layer, _ in done:
            layer.delete_adapter(name)
        raise
    for target, layer, fresh in plans:
        if fresh:
            set_submodule(model, target, layer)
    return targets


def _backend_hint(module: nn.Module) -> str:
    """Where quantized layers are served from, for the error about a layer nobody could view."""
    if type(module).__module__.startswith("bitsandbytes"):
        return (
            "; bitsandbytes layers are served by the peftkit-bnb backend (`pip install peftkit-bnb`; "
            "`peftkit list-methods` shows the layer types each installed backend serves)"
        )
    return ""


def _move_like_base(layer: AdapterLayer[Any], name: str) -> None:
    """Put the new adapter's tensors on the base layer's device (dtype is the method's choice)."""
    device = layer.view.device
    if device.type == "meta":
        return
    for param in layer.adapter_parameters(name):
        if param.device != device:
            param.data = param.data.to(device)


def check_name_free(model: nn.Module, name: str) -> None:
    """Refuse ``name`` when an adapter layer of ``model`` already holds an adapter so called.

    That happens when a second ``PeftModel`` wraps a model the first one adapted: reusing the name
    would re-initialise (and a failed load would delete) the first wrapper's trained adapter.
    """
    holders = [
        path
        for path, module in model.named_modules()
        if isinstance(module, (AdapterLayer, ModulesToSave)) and name in module.adapter_names
    ]
    if holders:
        raise ValueError(
            f"this model already holds an adapter named {name!r} (in {holders[0]}"
            f"{f' and {len(holders) - 1} more' if len(holders) > 1 else ''}), probably from another PeftModel "
            "wrapping it; add to that wrapper with add_adapter/load_adapter, pick another adapter_name, "
            "or call unload() on the first wrapper. Nothing was changed"
        )


def remove_adapter_layers(model: nn.Module, name: str) -> None:
    """Delete adapter ``name`` everywhere; layers left with no adapter give their base layer back."""
    for path, module in list(model.named_modules()):
        if isinstance(module, (AdapterLayer, ModulesToSave)) and name in module.adapter_names:
            module.delete_adapter(name)
            if not module.adapter_names:
                original = module.base_layer if isinstance(module, AdapterLayer) else module.original_module
                set_submodule(model, path, original)


def adapter_modules(model: nn.Module) -> Iterator[AdapterLayer[Any] | ModulesToSave]:
    """Every adapter layer and modules-to-save wrapper in ``model``, in ``modules()`` order, each once.

    Does not descend into adapter layers (their children are the base layer and adapter
    containers), so it visits a fraction of what ``modules()`` does: it runs on every
    ``get_peft_model``, ``set_adapter`` and merge.
    """
    seen: set[int] = set()
    stack = [model]
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        if isinstance(module, (AdapterLayer, ModulesToSave)):
            yield module
            if isinstance(module, AdapterLayer):
                continue
        stack.extend(child for child in reversed(module._modules.values()) if child is not None)


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, AdapterLayer[Any]]]:
    for path, module in model.named_modules():
        if isinstance(module, AdapterLayer):
            yield path, module


def wrap_modules_to_save(model: nn.Module, names: list[str], adapter_name: str) -> list[str]:
    """Wrap (once) every module whose name or dotted suffix is in ``names`` and add a copy for the adapter."""
    wanted = set(names)
    paths = [
        path
        for path, module in model.named_modules()
        if path
        and (path in wanted or path.rsplit(".", 1)[-1] in wanted)
        and not isinstance(module, AdapterLayer)
        and ".modules_to_save." not in path
        and not path.endswith(".original_module")
    ]
    for path in paths:
        module = model.get_submodule(path)
        if not isinstance(module, ModulesToSave):
            module = ModulesToSave(module)
            set_submodule(model, path, module)
        module.add_adapter(adapter_name)
    return paths

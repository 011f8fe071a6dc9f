"""The low-level API other libraries integrate through (diffusers, transformers), under Hugging Face PEFT's names.

``inject_adapter_in_model`` puts adapter layers into a plain model without wrapping it in a
``PeftModel``; the state-dict functions read and write one adapter's tensors in the on-disk
format, for a ``PeftModel`` (keys ``base_model.model.<path>...``) or for such a plain model
(keys ``<path>...``). The adapter's config is kept on the model as ``model.peft_config[name]``.
"""

from __future__ import annotations

from typing import Any, Literal, cast

import torch
from torch import nn

from peftkit import _embeddings, _injection, _state_dict
from peftkit._adapter_names import check_adapter_name
from peftkit._base_state import get_base_model_state_dict, set_base_model_state_dict
from peftkit._config import PeftConfig
from peftkit._state_dict import MODEL_PREFIX, LoadReport
from peftkit.peft_model import PeftModel

__all__ = [
    "LoadReport",
    "get_base_model_state_dict",
    "get_peft_model_state_dict",
    "inject_adapter_in_model",
    "set_base_model_state_dict",
    "set_peft_model_state_dict",
]


class _Owner:
    """Stands for ``PeftModel.base_model``: the model as ``.model``, model-level tensors read from the model."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


class _InjectedModel:
    """A plain model with injected adapters, seen the way the state-dict helpers see a ``PeftModel``."""

    def __init__(self, model: nn.Module) -> None:
        configs = getattr(model, "peft_config", None)
        if not isinstance(configs, dict) or not configs:
            raise ValueError(
                f"{type(model).__name__} holds no peftkit adapters; build it with peftkit.get_peft_model or "
                "peftkit.inject_adapter_in_model first"
            )
        self.base_model = _Owner(model)
        self.peft_config: dict[str, PeftConfig] = configs

    # The same lookups a PeftModel does: they read only ``peft_config`` and the registry.
    method_for = PeftModel.method_for
    _method_hook = PeftModel._method_hook

    def get_base_model(self) -> nn.Module:
        return self.base_model.model


def _unwrapped(model: nn.Module) -> nn.Module:
    """The model inside ``torch.compile``, ``DataParallel`` / ``DistributedDataParallel`` and FSDP wrappers.

    Their keys carry the wrapper's prefix (``_fsdp_wrapped_module.``), which no saved adapter has.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while True:
        if isinstance(model, (DataParallel, DistributedDataParallel, FullyShardedDataParallel)):
            model = cast(nn.Module, model.module)
        elif "_orig_mod" in model.__dict__.get("_modules", {}):  # torch.compile's OptimizedModule
            model = cast(nn.Module, model._orig_mod)
        else:
            return model


def _handle(model: nn.Module) -> tuple[Any, bool]:
    """``(PeftModel-like object, whether keys carry the base_model.model. prefix)`` for ``model``."""
    model = _unwrapped(model)
    if isinstance(model, PeftModel):
        return model, True
    return _InjectedModel(model), False


def _check_adapter(handle: Any, adapter_name: str) -> None:
    if adapter_name not in handle.peft_config:
        raise ValueError(f"unknown adapter {adapter_name!r}; this model has {list(handle.peft_config)}")


def inject_adapter_in_model(
    peft_config: PeftConfig,
    model: nn.Module,
    adapter_name: str = "default",
    low_cpu_mem_usage: bool = False,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Add a trainable, active adapter to ``model`` in place and return ``model`` (no ``PeftModel`` wrapper).

    With ``state_dict``, the adapted modules are those its keys name (its values are not loaded),
    for checkpoints whose ``target_modules`` is unknown. On error the model is left as it was.
    """
    from peftkit._plugins import registry

    if not isinstance(peft_config, PeftConfig):
        raise TypeError(f"expected a peftkit config, got {type(peft_config).__name__}")
    method = registry().by_peft_type(str(peft_config.peft_type))
    if method.layer is None:
        raise ValueError(
            f"inject_adapter_in_model adapts layers; the {method.name} method changes the model's inputs "
            "instead: use peftkit.get_peft_model"
        )
    check_adapter_name(adapter_name, method.prefix)
    configs = model.__dict__.get("peft_config", {})
    if adapter_name in configs:
        raise ValueError(f"this model already has an adapter named {adapter_name!r}; pick another name")
    _injection.check_name_free(model, adapter_name)  # held by a PeftModel wrapping this model
    configs = model.__dict__.setdefault("peft_config", configs)
    if state_dict is not None:
        peft_config = peft_config.replace(target_modules=_targets_in(state_dict, method.prefix))
    first = not configs
    _injection.inject_adapter(model, method, peft_config, adapter_name, low_cpu_mem_usage)
    if peft_config.modules_to_save:
        _injection.wrap_modules_to_save(model, list(peft_config.modules_to_save), adapter_name)
    configs[adapter_name] = peft_config
    if first:
        model.requires_grad_(False)
    trainable = not peft_config.inference_mode
    for module in _injection.adapter_modules(model):
        module.set_active([adapter_name])
        module.set_requires_grad([adapter_name], trainable)
    for _, _, param in _state_dict.bias_slots(model, peft_config.bias, adapter_name, set(configs)).values():
        param.requires_grad_(trainable)
    return model


def _targets_in(state_dict: dict[str, Any], prefix: str) -> list[str]:
    """The module paths a checkpoint adapts: each key's path up to its first ``prefix`` segment."""
    paths = set()
    for key in state_dict:
        parts = key.removeprefix(MODEL_PREFIX).split(".")
        cut = next((i for i, part in enumerate(parts) if prefix and part.startswith(prefix)), None)
        if cut:
            paths.add(".".join(parts[:cut]))
    if not paths:
        raise ValueError(f"state_dict has no keys with a {prefix!r} segment, so it names no module to adapt")
    return sorted(paths)


def get_peft_model_state_dict(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor] | None = None,
    adapter_name: str = "default",
    unwrap_compiled: bool = False,
    save_embedding_layers: bool | Literal["auto"] = "auto",
) -> dict[str, torch.Tensor]:
    """Adapter ``adapter_name``'s tensors keyed as in ``adapter_model.safetensors`` (adapter name removed).

    ``state_dict`` (for example gathered from a distributed wrapper) supplies the values by
    in-memory key; ``save_embedding_layers`` adds the embedding layers in full as ``save_pretrained`` does.
    """
    handle, prefixed = _handle(model)
    _check_adapter(handle, adapter_name)
    tensors = _state_dict.adapter_state_dict(handle, adapter_name)
    tensors.update(_embeddings.embedding_tensors(handle, adapter_name, save_embedding_layers))
    if state_dict is not None:
        tensors = _values_from(handle, tensors, state_dict, prefixed)
    return tensors if prefixed else {k.removeprefix(MODEL_PREFIX): v for k, v in tensors.items()}


def _values_from(
    handle: Any, tensors: dict[str, torch.Tensor], state_dict: dict[str, torch.Tensor], prefixed: bool
) -> dict[str, torch.Tensor]:
    """``tensors`` with each value replaced by ``state_dict``'s entry for the same in-memory tensor, if any."""
    root = handle if prefixed else handle.base_model.model
    names = {id(t): k for k, t in root.state_dict(keep_vars=True).items()}
    return {k: state_dict.get(names.get(id(v), ""), v) for k, v in tensors.items()}


def set_peft_model_state_dict(
    model: nn.Module,
    peft_model_state_dict: dict[str, torch.Tensor],
    adapter_name: str = "default",
    ignore_mismatched_sizes: bool = False,
    low_cpu_mem_usage: bool = False,
) -> LoadReport:
    """Load tensors saved by :func:`get_peft_model_state_dict` (any adapter name) into adapter ``adapter_name``.

    Returns ``(missing_keys, unexpected_keys)``; like ``load_state_dict(strict=False)`` a missing
    tensor keeps the model's value. Shapes that differ raise, unless ``ignore_mismatched_sizes``.
    """
    handle, prefixed = _handle(model)
    _check_adapter(handle, adapter_name)
    tensors = peft_model_state_dict
    if not prefixed:
        tensors = {k if k.startswith("base_model.") else MODEL_PREFIX + k: v for k, v in tensors.items()}
    report = _state_dict.load_adapter_state_report(
        handle, adapter_name, tensors, low_cpu_mem_usage, ignore_mismatched_sizes, allow_missing=True
    )
    if prefixed:
        return report
    return LoadReport(*([k.removeprefix(MODEL_PREFIX) for k in keys] for keys in report))

"""Swapping a saved adapter's weights into a loaded one in place, so a compiled model never recompiles.

``hotswap_adapter`` writes every tensor of the new adapter into the storage of the loaded one
(``copy_``), after checking all of them: same method, same targets, compatible shapes and settings;
a swap that cannot be done in place is an error naming the layer and the mismatch, and changes
nothing. Each method's layer decides what "compatible" means (``AdapterLayer.check_hotswap``), so
LoRA can take smaller ranks into a model prepared with ``prepare_model_for_compiled_hotswap``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from peftkit import _injection, _state_dict
from peftkit.errors import HotswapError
from peftkit.layer import AdapterLayer

# Fields that describe an adapter without shaping its forward.
_DESCRIPTIVE = frozenset(
    {"base_model_name_or_path", "revision", "inference_mode", "peft_version", "auto_mapping", "task_type"}
)


def prepare_model_for_compiled_hotswap(model: Any, target_rank: int | None = None) -> None:
    """Prepare ``model`` (a PeftModel, before ``torch.compile``) so later :func:`hotswap_adapter` calls never recompile.

    Each adapter layer gets ready for the method's largest swaps: LoRA pads every adapter to
    ``target_rank`` (default: the largest loaded rank) with zeros, which changes no output, and keeps
    its scalings as tensors, so adapters of any rank up to ``target_rank`` and any alpha swap in.
    """
    if hasattr(model, "_orig_mod"):
        raise ValueError(
            "prepare_model_for_compiled_hotswap must run before torch.compile: call it on the model, then compile"
        )
    if target_rank is not None and target_rank <= 0:
        raise ValueError(f"target_rank must be a positive integer, got {target_rank}")
    for module in _layers(model):
        module.prepare_hotswap(target_rank)


def hotswap_adapter(
    model: Any, model_name_or_path: str | os.PathLike[str], adapter_name: str = "default", **kwargs: Any
) -> None:
    """Replace the weights of loaded adapter ``adapter_name`` with those saved in ``model_name_or_path``.

    Works on the PeftModel or on its compiled form (``torch.compile(model)``). The saved adapter must
    be of the same method and target the same layers; ``kwargs`` go to the reader (``subfolder``, ...).
    """
    from peftkit._saving import read_adapter

    peft_model = getattr(model, "_orig_mod", model)
    if adapter_name not in getattr(peft_model, "peft_config", {}):
        raise ValueError(
            f"no adapter {adapter_name!r} to swap into; this model has {list(peft_model.peft_config)}"
        )
    config, tensors = read_adapter(model_name_or_path, None, **kwargs)
    old = peft_model.peft_config[adapter_name]
    if config.peft_type != old.peft_type:
        raise HotswapError(f"cannot hot-swap a {config.peft_type} adapter into a {old.peft_type} one")
    plan = _plan(peft_model, adapter_name, tensors)  # first: a shape mismatch names its layer
    _check_settings(peft_model, adapter_name, old, config)
    with torch.no_grad():
        for module, key, current, new in plan:
            if isinstance(module, AdapterLayer):
                module.hotswap_tensor(adapter_name, key, current, new.to(current.device, current.dtype))
            else:
                current.copy_(new.to(current.device, current.dtype))
    for layer in _layers(peft_model):
        if adapter_name in layer.adapter_names:
            layer.hotswap_config(adapter_name, config)
            layer.adapter_configs[adapter_name] = config
    peft_model.peft_config[adapter_name] = config.replace(inference_mode=old.inference_mode)


def _layers(model: Any) -> list[AdapterLayer[Any]]:
    root = getattr(model, "_orig_mod", model)
    base = root.get_base_model() if hasattr(root, "get_base_model") else root
    return [m for m in _injection.adapter_modules(base) if isinstance(m, AdapterLayer)]


def _check_settings(peft_model: Any, name: str, old: Any, new: Any) -> None:
    swappable = set(_DESCRIPTIVE)
    for layer in _layers(peft_model):
        swappable |= set(layer.hotswap_settings)
    before, after = old.to_dict(), new.to_dict()
    differ = sorted(
        k for k in before.keys() | after.keys() if k not in swappable and before.get(k) != after.get(k)
    )
    if differ:
        shown = ", ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in differ[:4])
        raise HotswapError(
            f"cannot hot-swap adapter {name!r}: the saved adapter differs in settings that shape the model ({shown}); "
            "load it with load_adapter instead (a compiled model then recompiles). Nothing was changed"
        )


def _plan(
    peft_model: Any, name: str, tensors: dict[str, torch.Tensor]
) -> list[tuple[nn.Module, str, torch.Tensor, Any]]:
    """Every (module, key, loaded tensor, new tensor) pair, all checked before any is written."""
    slots = _state_dict.adapter_slots(peft_model, name, for_load=True)
    tensors = _state_dict._align_base_layer_keys(tensors, slots)
    missing, extra = sorted(set(slots) - set(tensors)), sorted(set(tensors) - set(slots))
    if missing or extra:
        raise HotswapError(
            f"cannot hot-swap adapter {name!r}: the saved adapter targets other layers "
            f"(missing {missing[:3]}, not in the model {extra[:3]}); nothing was changed"
        )
    plan = []
    for key in sorted(slots):
        module, inner, current = slots[key]
        new = tensors[key]
        if isinstance(module, AdapterLayer):
            reason = module.check_hotswap(name, inner, current, new)
        elif not key.startswith(_state_dict.MODEL_PREFIX):  # model-level, shared by the method's layers
            if current.shape == new.shape and torch.equal(current, new.to(current.device, current.dtype)):
                continue
            reason = "the method's model-level tensor (shared by every layer) differs from the loaded one"
        else:  # module copies and trained base biases
            reason = AdapterLayer.check_hotswap(module, name, inner, current, new)  # type: ignore[arg-type]
        if reason:
            raise HotswapError(f"cannot hot-swap {key}: {reason}; nothing was changed")
        plan.append((module, inner, current, new))
    return plan

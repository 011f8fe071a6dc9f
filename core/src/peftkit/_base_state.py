"""The base model's own state dict, under the keys it had before adapters were put in.

Adapter layers add a ``base_layer`` segment and ``modules_to_save`` wrappers an ``original_module``
segment to the paths of the weights they hold; these functions drop those segments and leave out
every adapter tensor, so a checkpoint of the plain model loads into the adapted one and back.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from peftkit.layer import AdapterLayer, ModulesToSave


class IncompatibleKeys(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


def _original_key(model: nn.Module, key: str) -> str | None:
    """``key`` without the segments adapter wrappers added, or None for a tensor of an adapter."""
    module: Any = model
    kept = []
    for part in key.split("."):
        if isinstance(module, AdapterLayer):
            if part != "base_layer":
                return None
        elif isinstance(module, ModulesToSave):
            if part != "original_module":
                return None  # a per-adapter copy
        else:
            kept.append(part)
        module = module._modules.get(part) if isinstance(module, nn.Module) else None
    return ".".join(kept)


def _key_map(model: nn.Module) -> dict[str, str]:
    """Original key -> current key for every base tensor of ``model``."""
    mapping = {}
    for key in model.state_dict(keep_vars=True):
        original = _original_key(model, key)
        if original is not None:
            mapping[original] = key
    return mapping


def _base_model(peft_model: Any) -> nn.Module:
    return peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model


def get_base_model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's tensors under their original keys, adapter tensors left out."""
    base = _base_model(model)
    state = base.state_dict()
    return {original: state[current] for original, current in _key_map(base).items()}


def set_base_model_state_dict(
    model: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True
) -> IncompatibleKeys:
    """Load a plain-model state dict (original keys) into the adapted model's base weights.

    Returns ``(missing_keys, unexpected_keys)`` in original keys; with ``strict`` either raises a
    ``RuntimeError`` naming them before anything is loaded.
    """
    base = _base_model(model)
    mapping = _key_map(base)
    unexpected = [k for k in state_dict if k not in mapping]
    missing = [k for k in mapping if k not in state_dict]
    if strict and (missing or unexpected):
        raise RuntimeError(
            f"set_base_model_state_dict(strict=True): missing keys {missing[:5]}, unexpected keys "
            f"{unexpected[:5]} (of {len(missing)} and {len(unexpected)}); nothing was loaded. "
            "Pass strict=False to load the keys that match"
        )
    base.load_state_dict({mapping[k]: v for k, v in state_dict.items() if k in mapping}, strict=False)
    return IncompatibleKeys(missing, unexpected)

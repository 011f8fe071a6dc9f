"""Adapter tensors to and from their on-disk keys, in the Hugging Face PEFT format.

On disk a layer adapter's tensor is ``base_model.model.<module path>.<name>`` with the
adapter-name segment removed (``...q_proj.lora_A.default.weight`` -> ``...q_proj.lora_A.weight``);
a ``modules_to_save`` copy is saved under the wrapped module's own path; a model-level
tensor (VeRA's projections) is ``base_model.<attribute>``; with ``bias="all"`` every base bias
is saved under its in-memory key.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
from torch import nn

from peftkit._io import CheckpointError
from peftkit.layer import AdapterLayer, ModulesToSave

MODEL_PREFIX = "base_model.model."


def _disk_key(key: str, name: str) -> str:
    parts = [p for p in key.split(".") if p != name]
    if parts and parts[0] == "modules_to_save":
        parts = parts[1:]
    return ".".join(parts)


def adapter_slots(
    peft_model: Any, name: str, for_load: bool = False
) -> dict[str, tuple[nn.Module, str, torch.Tensor]]:
    """Every tensor of adapter ``name``: on-disk key -> (owning module, key in that module, tensor).

    A method's ``_state_slots(peft_model, name, slots, for_load)`` hook may rewrite the mapping (prompt
    learning saves a computed ``prompt_embeddings`` table and keys its other tensors ``base_model.<path>``).
    """
    slots: dict[str, tuple[nn.Module, str, torch.Tensor]] = {}
    model = peft_model.base_model.model
    config = peft_model.peft_config[name]
    for path, module in model.named_modules():
        if isinstance(module, (AdapterLayer, ModulesToSave)):
            for key, tensor in module.adapter_state(name).items():
                slots[f"{MODEL_PREFIX}{path}.{_disk_key(key, name)}"] = (module, key, tensor)
    for attr in peft_model.method_for(name).model_level:
        holder = getattr(peft_model.base_model, attr, None)
        # A non-persistent buffer is neither saved nor expected on load: the method regenerates it
        # (VeRA's projections with save_projection=False).
        if holder is not None and name in holder and name in holder.state_dict(keep_vars=True):
            slots[f"base_model.{attr}"] = (holder, name, holder[name])
    slots.update(bias_slots(model, config.bias, name, set(peft_model.peft_config)))
    rewrite = peft_model._method_hook(name, "state_slots")
    return slots if rewrite is None else rewrite(name, slots, for_load)


def bias_slots(
    model: nn.Module, bias: str, name: str, adapters: set[str]
) -> dict[str, tuple[nn.Module, str, torch.Tensor]]:
    """Base biases trained with the adapter, under their in-memory keys: every one for ``"all"``,
    those of the layers holding adapter ``name`` for a method's ``"<method>_only"`` mode."""
    if bias == "none":
        return {}
    if bias == "all":
        return {
            MODEL_PREFIX + key: (model, key, param)
            for key, param in model.named_parameters()
            if key.endswith("bias") and not adapters & set(key.split(".")) and ".modules_to_save." not in key
        }
    slots: dict[str, tuple[nn.Module, str, torch.Tensor]] = {}
    for path, module in model.named_modules():
        if isinstance(module, AdapterLayer) and name in module.adapter_names:
            param = getattr(module.base_layer, "bias", None)
            if isinstance(param, nn.Parameter):
                slots[f"{MODEL_PREFIX}{path}.base_layer.bias"] = (module, "base_layer.bias", param)
    return slots


def adapter_state_dict(peft_model: Any, name: str) -> dict[str, torch.Tensor]:
    """The tensors to save for adapter ``name``, keyed as on disk."""
    return {key: tensor.detach() for key, (_, _, tensor) in adapter_slots(peft_model, name).items()}


class LoadReport(NamedTuple):
    """What a load left out, as ``torch.nn.Module.load_state_dict`` reports it (on-disk keys)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def check_adapter_state(
    peft_model: Any,
    name: str,
    tensors: dict[str, torch.Tensor],
    ignore_mismatched_sizes: bool = False,
    allow_missing: bool = False,
) -> tuple[dict[str, tuple[nn.Module, str, torch.Tensor]], dict[str, torch.Tensor], list[str]]:
    """Check ``tensors`` (on-disk keys) against adapter ``name`` without changing anything.

    Returns the slots to fill, the tensors to load (keys aligned; with ``ignore_mismatched_sizes``
    the mismatched ones dropped with a warning) and the missing keys. Missing keys (unless
    ``allow_missing``), shape or dtype mismatches and keys naming a base weight that is not an
    embedding raise ``CheckpointError``.
    """
    slots = adapter_slots(peft_model, name, for_load=True)
    tensors = _align_base_layer_keys(tensors, slots)
    skipped: set[str] = set()
    if ignore_mismatched_sizes:  # a skipped tensor keeps the model's value: it is neither loaded nor missing
        kept = _drop_mismatched(tensors, {**slots, **_base_slots(peft_model, tensors, slots)})
        skipped, tensors = set(tensors) - set(kept), kept
    missing = [k for k in slots if k not in tensors and k not in skipped]
    if missing and not allow_missing:
        raise CheckpointError(
            f"the checkpoint lacks {len(missing)} tensor(s) this adapter needs, e.g. {missing[:3]}; "
            "was it saved for a different model or config?"
        )
    slots.update(_base_slots(peft_model, tensors, slots))
    config = peft_model.peft_config[name]
    for key in sorted(tensors):  # sorted: the first mismatch reported does not depend on the file's order
        if key in slots:
            _check_compatible(key, slots[key][2], tensors[key], config)
    return slots, tensors, missing


def load_adapter_state(
    peft_model: Any,
    name: str,
    tensors: dict[str, torch.Tensor],
    assign: bool = False,
    ignore_mismatched_sizes: bool = False,
) -> list[str]:
    """Copy ``tensors`` (on-disk keys) into adapter ``name``; check everything before changing anything.

    Missing keys and shape mismatches raise ``CheckpointError`` naming the key and both shapes
    (with ``ignore_mismatched_sizes`` a mismatched tensor is skipped with a warning instead, and the
    model keeps its own). Returns the unexpected keys, which are ignored.
    """
    return load_adapter_state_report(
        peft_model, name, tensors, assign, ignore_mismatched_sizes, allow_missing=False
    ).unexpected_keys


def load_adapter_state_report(
    peft_model: Any,
    name: str,
    tensors: dict[str, torch.Tensor],
    assign: bool = False,
    ignore_mismatched_sizes: bool = False,
    allow_missing: bool = False,
) -> LoadReport:
    """:func:`load_adapter_state`, reporting missing keys instead of raising when ``allow_missing``."""
    slots, tensors, missing = check_adapter_state(
        peft_model, name, tensors, ignore_mismatched_sizes, allow_missing
    )
    per_module: dict[int, tuple[nn.Module, dict[str, torch.Tensor]]] = {}
    for key, value in tensors.items():
        if key in slots:
            module, inner, current = slots[key]
            entry = per_module.setdefault(id(module), (module, {}))
            dtype = (
                current.dtype if current.is_floating_point() and value.is_floating_point() else value.dtype
            )
            # A tensor created on meta (low_cpu_mem_usage) takes the loaded one's device: where it was read,
            # which is load_adapter's torch_device, as in PEFT.
            entry[1][inner] = value.to(
                device=current.device if current.device.type != "meta" else value.device, dtype=dtype
            )
    base = peft_model.base_model.model
    with torch.no_grad():
        for module, state in per_module.values():
            # Base-model tensors (biases, embeddings) are copied in place: replacing them would untie tied weights.
            _load_into(module, state, assign and module is not base)
    return LoadReport(missing, [k for k in tensors if k not in slots])


def _drop_mismatched(tensors: dict[str, Any], slots: dict[str, Any]) -> dict[str, Any]:
    """``tensors`` without those whose shape differs from the model's, named in one warning if any."""
    mismatched = {
        key: (tuple(value.shape), tuple(slots[key][2].shape))
        for key, value in tensors.items()
        if key in slots and isinstance(value, torch.Tensor) and value.shape != slots[key][2].shape
    }
    if mismatched:
        lines = "\n".join(
            f"- {k}: checkpoint {found}, model {wanted}" for k, (found, wanted) in mismatched.items()
        )
        warnings.warn(
            f"ignore_mismatched_sizes=True: {len(mismatched)} tensor(s) kept their values in the model "
            f"because the checkpoint's shape differs:\n{lines}"
        )
    return {k: v for k, v in tensors.items() if k not in mismatched}


def _plain(key: str) -> str:
    return key.replace(".base_layer.", ".")


def _align_base_layer_keys(tensors: dict[str, Any], slots: dict[str, Any]) -> dict[str, Any]:
    """Rename ``<layer>.bias`` to ``<layer>.base_layer.bias`` (and back) where the model needs the other form.

    Base tensors are saved under in-memory keys, so their form depends on whether the layer held
    an adapter at save time, which another adapter on the loading model can change.
    """
    by_plain = {_plain(key): key for key in tensors}
    aligned = dict(tensors)
    for key in slots:
        stored = by_plain.get(_plain(key))
        if key not in aligned and stored is not None and stored in aligned:
            aligned[key] = aligned.pop(stored)
    return aligned


def _base_slots(
    peft_model: Any, tensors: dict[str, Any], taken: dict[str, Any]
) -> dict[str, tuple[nn.Module, str, torch.Tensor]]:
    """Checkpoint tensors named after a base embedding weight, loaded into it as Hugging Face PEFT does
    (it saves targeted embedding layers whole, e.g. after the vocabulary was resized).

    A key naming any other base tensor (an attention weight, a norm) is refused: an adapter file
    must not silently rewrite the model it is loaded into.
    """
    model = peft_model.base_model.model
    params = {_plain(name): (name, param) for name, param in model.named_parameters()}
    names = {
        key: _plain(key[len(MODEL_PREFIX) :])
        for key in tensors
        if key.startswith(MODEL_PREFIX) and key not in taken
    }
    found = {key: inner for key, inner in names.items() if inner in params}
    embeddings = _embedding_weights(model)
    foreign = sorted(key for key, inner in found.items() if id(params[inner][1]) not in embeddings)
    if foreign:
        raise CheckpointError(
            f"the checkpoint names {len(foreign)} base-model tensor(s) that are not adapter tensors, e.g. "
            f"{foreign[:3]}; loading would overwrite the model's own weights, so nothing was loaded. "
            "Remove them from the file if the adapter is yours, or do not load a file you do not trust"
        )
    return {key: (model, *params[inner]) for key, inner in found.items()}


def _embedding_weights(model: nn.Module) -> set[int]:
    """The ids of the model's token embedding and output embedding weights (whole-layer saves allowed)."""
    kept = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor):
        kept.add(id(weight))
    return kept


def _check_compatible(key: str, expected: torch.Tensor, found: Any, config: Any = None) -> None:
    if not isinstance(found, torch.Tensor):
        raise CheckpointError(f"{key}: expected a tensor, found {type(found).__name__}")
    if tuple(expected.shape) != tuple(found.shape):
        raise CheckpointError(
            f"{key}: the model expects shape {tuple(expected.shape)} but the checkpoint has {tuple(found.shape)}; "
            f"the adapter was saved for a different model or config{_shaping_fields(config, expected, found)}"
        )
    if expected.is_floating_point() != found.is_floating_point():
        raise CheckpointError(
            f"{key}: the model expects dtype {expected.dtype} but the checkpoint has {found.dtype}"
        )


def _shaping_fields(config: Any, expected: torch.Tensor, found: torch.Tensor) -> str:
    """`` (check r=1048576 in adapter_config.json)`` for the integer fields whose value is a size only the model expects."""
    if config is None or not hasattr(config, "to_dict"):
        return " (r, target_modules)"
    only_ours = set(expected.shape) - set(found.shape)
    fields = [
        f"{field}={value}"
        for field, value in sorted(config.to_dict().items())
        if isinstance(value, int) and not isinstance(value, bool) and value in only_ours
    ]
    return f" (check {', '.join(fields)} in adapter_config.json)" if fields else " (r, target_modules)"


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], assign: bool) -> None:
    for key, value in state.items():
        target = _resolve(module, key)
        if assign or target.device.type == "meta":
            owner_path, _, attr = key.rpartition(".")
            owner = module.get_submodule(owner_path) if owner_path else module
            if attr in owner._parameters:
                owner._parameters[attr] = nn.Parameter(value, requires_grad=target.requires_grad)
            else:
                owner._buffers[attr] = value
        else:
            # copy_ on the tensor itself (callers hold no_grad) bumps its version, which caches rely on.
            target.copy_(value)


def _resolve(module: nn.Module, key: str) -> torch.Tensor:
    owner_path, _, attr = key.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    return getattr(owner, attr)

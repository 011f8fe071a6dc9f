"""Where every adapter stands, per layer and for the whole model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peftkit.layer import AdapterLayer


@dataclass
class LayerStatus:
    name: str
    module_type: str
    enabled: bool
    active_adapters: list[str]
    merged_adapters: list[str]
    requires_grad: dict[str, bool | str]
    available_adapters: list[str]
    devices: dict[str, list[str]]


@dataclass
class ModelStatus:
    base_model_type: str
    adapter_model_type: str
    peft_types: dict[str, str]
    trainable_params: int
    total_params: int
    num_adapter_layers: int
    enabled: bool | str
    active_adapters: list[str] | str
    merged_adapters: list[str] | str
    requires_grad: dict[str, bool | str]
    available_adapters: list[str]
    devices: dict[str, list[str]] = field(default_factory=dict)


def _grad_state(layer: AdapterLayer[Any], name: str) -> bool | str:
    flags = {p.requires_grad for p in layer.adapter_parameters(name) if p.is_floating_point()}
    return flags.pop() if len(flags) == 1 else ("irregular" if flags else False)


def layer_status(peft_model: Any) -> list[LayerStatus]:
    """One entry per adapter layer."""
    out = []
    for path, layer in peft_model.get_base_model().named_modules():
        if not isinstance(layer, AdapterLayer):
            continue
        names = layer.adapter_names
        out.append(
            LayerStatus(
                name=path,
                module_type=f"{type(layer).__name__} on {layer.view.layer_type}",
                enabled=not layer.disable_adapters,
                active_adapters=list(layer.active_adapters),
                merged_adapters=list(layer.merged_adapters),
                requires_grad={n: _grad_state(layer, n) for n in names},
                available_adapters=names,
                devices={n: sorted({str(p.device.type) for p in layer.adapter_parameters(n)}) for n in names},
            )
        )
    return out


def _agree(values: list[Any]) -> Any:
    unique = {repr(v) for v in values}
    return values[0] if len(unique) == 1 else "irregular"


def model_status(peft_model: Any) -> ModelStatus:
    """A summary across layers; a field that differs between layers reads ``"irregular"``."""
    layers = layer_status(peft_model)
    trainable, total = peft_model.get_nb_trainable_parameters()
    requires_grad: dict[str, bool | str] = {}
    for name in peft_model.peft_config:
        flags = [layer.requires_grad[name] for layer in layers if name in layer.requires_grad]
        requires_grad[name] = _agree(flags) if flags else False
    return ModelStatus(
        base_model_type=type(peft_model.get_base_model()).__name__,
        adapter_model_type=type(peft_model).__name__,
        peft_types={n: str(c.peft_type) for n, c in peft_model.peft_config.items()},
        trainable_params=trainable,
        total_params=total,
        num_adapter_layers=len(layers),
        enabled=_agree([layer.enabled for layer in layers]) if layers else True,
        active_adapters=_agree([sorted(layer.active_adapters) for layer in layers]) if layers else [],
        merged_adapters=_agree([sorted(layer.merged_adapters) for layer in layers]) if layers else [],
        requires_grad=requires_grad,
        available_adapters=sorted(peft_model.peft_config),
        devices={
            n: sorted({d for layer in layers for d in layer.devices.get(n, [])})
            for n in peft_model.peft_config
        },
    )

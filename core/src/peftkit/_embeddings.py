"""``save_embedding_layers``: saving a model's input and output embeddings in full beside the adapter.

Needed when the vocabulary was resized or an embedding was adapted, so the adapter is usable
without the exact embedding it was trained on. The loader already reads such tensors back into
the base model (``_state_dict._base_slots``).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from peftkit._state_dict import MODEL_PREFIX
from peftkit.layer import AdapterLayer

# The module names under which transformers models keep their embeddings.
EMBEDDING_NAMES = ("embed_tokens", "lm_head")


def _embedding_adapted(model: nn.Module, adapter_name: str) -> list[str]:
    return [
        path
        for path, module in model.named_modules()
        if isinstance(module, AdapterLayer)
        and adapter_name in module.adapter_names
        and path.rsplit(".", 1)[-1] in EMBEDDING_NAMES
    ]


def _resolve_mode(model: nn.Module, adapter_name: str, mode: bool | str) -> bool:
    if mode not in (True, False, "auto"):
        raise ValueError(f"save_embedding_layers must be True, False or 'auto', got {mode!r}")
    if mode != "auto":
        return bool(mode)
    adapted = _embedding_adapted(model, adapter_name)
    if adapted:
        warnings.warn(
            f"save_embedding_layers='auto' saves the embedding layers in full, because adapter "
            f"{adapter_name!r} adapts {adapted}; pass save_embedding_layers=False to save the adapter alone"
        )
    return bool(adapted)


def embedding_tensors(peft_model: Any, adapter_name: str, mode: bool | str) -> dict[str, torch.Tensor]:
    """The base weights of the model's input and output embeddings, keyed as on disk, when ``mode`` asks for them."""
    model = peft_model.base_model.model
    if not _resolve_mode(model, adapter_name, mode):
        return {}
    if not hasattr(model, "get_input_embeddings"):
        warnings.warn(
            f"save_embedding_layers=True: {type(model).__name__} has no get_input_embeddings (it is not a "
            "transformers model), so no embedding layer was found to save"
        )
        return {}
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    wanted = [m for m in (model.get_input_embeddings(), output) if m is not None]
    if any(isinstance(m, AdapterLayer) for m in wanted):
        # Adapted embeddings are saved whole; the others are unchanged unless the vocabulary was resized.
        wanted = [m for m in wanted if isinstance(m, AdapterLayer)]
    tensors: dict[str, torch.Tensor] = {}
    # An output embedding tied to the input one is saved once, as Hugging Face PEFT does.
    seen: set[int] = set()
    for path, module in model.named_modules():
        if not any(module is m or getattr(module, "base_layer", None) is m for m in wanted):
            continue
        base = module.base_layer if isinstance(module, AdapterLayer) else module
        prefix = f"{path}.base_layer" if isinstance(module, AdapterLayer) else path
        for key, param in base.named_parameters(prefix=prefix):
            if id(param) not in seen:
                seen.add(id(param))
                tensors[MODEL_PREFIX + key] = param.detach()
    return tensors


def with_embeddings(peft_model: Any, adapter_name: str, mode: bool | str, transform: Any = None) -> Any:
    """A ``save_adapter`` transform that adds the embedding tensors ``mode`` asks for, after ``transform``."""

    def add(config: Any, tensors: dict[str, torch.Tensor]) -> tuple[Any, dict[str, torch.Tensor]]:
        if transform is not None:
            config, tensors = transform(config, tensors)
        return config, {**tensors, **embedding_tensors(peft_model, adapter_name, mode)}

    return add

"""The ``README.md`` model card saved beside an adapter, in the form the Hub reads as a PEFT adapter.

The card's metadata says ``library_name: peft`` (what the Hub and transformers look for), the base
model and tags (the method's name, ``peftkit``, ``base_model:adapter:<base>``). A card already in
the folder is updated, never replaced: its text and other metadata stay.
"""

from __future__ import annotations

import os
from typing import Any

from peftkit import _io

CARD_NAME = "README.md"


def _base_model_id(peft_model: Any) -> str | None:
    config = getattr(peft_model.get_base_model(), "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
    return name or None


def _tags(peft_model: Any, adapter_name: str, base_model: str | None) -> list[str]:
    tags = set(getattr(peft_model.get_base_model(), "model_tags", None) or [])
    tags |= {"peftkit", peft_model.method_for(adapter_name).name}
    if base_model:
        tags.add(f"base_model:adapter:{base_model}")
    return sorted(tags)


def write_model_card(peft_model: Any, adapter_name: str, folder: str) -> None:
    """Create or update ``folder/README.md`` for adapter ``adapter_name``, written atomically."""
    from huggingface_hub import ModelCard, ModelCardData

    import peftkit

    path = os.path.join(folder, CARD_NAME)
    card = ModelCard.load(path) if os.path.isfile(path) else ModelCard.from_template(ModelCardData())
    base_model = _base_model_id(peft_model)
    card.data.library_name = "peft"
    card.data.tags = sorted(set(card.data.tags or []) | set(_tags(peft_model, adapter_name, base_model)))
    if base_model:
        card.data.base_model = base_model
    if not card.data.pipeline_tag and peft_model.peft_config[adapter_name].task_type == "CAUSAL_LM":
        card.data.pipeline_tag = "text-generation"
    version_line = f"- peftkit {peftkit.__version__}"
    text = card.text
    if version_line not in text.splitlines():
        heading = "### Framework versions"
        text = (
            text.rstrip("\n") + (f"\n\n{heading}\n\n" if heading not in text else "\n") + version_line + "\n"
        )
    _io.write_text_atomic(path, ModelCard(f"---\n{card.data.to_yaml()}\n---\n{text}").content)

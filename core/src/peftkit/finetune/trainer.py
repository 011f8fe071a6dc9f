"""transformers ``Trainer`` for peftkit models: checkpoints hold the adapter, not the whole model.

transformers recognises adapter models only by the Hugging Face ``peft`` package's classes; any
other wrapper has its full ``state_dict()`` written to every checkpoint. ``AdapterTrainer`` is a
drop-in ``Trainer`` that saves and restores peftkit adapters and reads the wrapped model's
forward signature (for ``remove_unused_columns`` and ``label_names``).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import Trainer
from transformers.utils import can_return_loss, find_labels

from peftkit.peft_model import PeftModel

TRAINING_ARGS_NAME = "training_args.bin"  # the name transformers gives the pickled TrainingArguments


class AdapterTrainer(Trainer):
    """A ``transformers.Trainer`` whose checkpoints are adapter folders when ``model`` is a peftkit PeftModel."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        base = self._peftkit_base()
        if base is not None:
            # transformers read these off the wrapper's generic forward(*args, **kwargs); ask the real model.
            if self.args.label_names is None:
                self.label_names = find_labels(type(base))
            self.can_return_loss = can_return_loss(type(base))

    def _peftkit_model(self) -> PeftModel | None:
        model = self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model
        return model if isinstance(model, PeftModel) else None

    def _peftkit_base(self) -> Any:
        model = self._peftkit_model()
        return None if model is None else model.get_base_model()

    def _set_signature_columns_if_needed(self) -> None:
        base = self._peftkit_base()
        if self._signature_columns is None and base is not None:
            import inspect

            names = list(inspect.signature(base.forward).parameters)
            # Trainer assigns None in __init__, so mypy infers that as the attribute's only type.
            self._signature_columns = list({*names, "label", "label_ids", *self.label_names})  # type: ignore[assignment]
            return
        super()._set_signature_columns_if_needed()

    def _save(self, output_dir: str | None = None, state_dict: dict[str, Any] | None = None) -> None:
        model = self._peftkit_model()
        if model is None:
            super()._save(output_dir, state_dict)
            return
        if getattr(self, "is_fsdp_enabled", False) or _zero3(self):
            raise NotImplementedError(
                "AdapterTrainer saves adapters from the model's own parameters, which FSDP and DeepSpeed "
                "ZeRO-3 shard across processes; train with DDP or ZeRO stage 1/2 (see docs/training.md)"
            )
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        assert output_dir is not None  # TrainingArguments replaces a None output_dir with its default
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        model.save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        target = model if model is not None else self._peftkit_model()
        if not isinstance(target, PeftModel):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        load_adapter_weights(target, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        model = self._peftkit_model()
        if model is None:
            super()._load_best_model()
            return
        checkpoint = self.state.best_model_checkpoint
        assert checkpoint is not None  # Trainer calls this only once it has recorded one
        load_adapter_weights(model, checkpoint)


def load_adapter_weights(model: PeftModel, folder: str) -> None:
    """Overwrite the weights of ``model``'s adapters with those saved in ``folder`` (``default`` at its top)."""
    from peftkit._saving import read_adapter

    found = False
    for name in model.peft_config:
        path = folder if name == "default" else os.path.join(folder, name)
        if os.path.isfile(os.path.join(path, "adapter_config.json")):
            _, tensors = read_adapter(path)
            model._load_state(name, tensors, False, path)
            found = True
    if not found:
        raise FileNotFoundError(f"no adapter of this model ({list(model.peft_config)}) is saved in {folder}")


def _zero3(trainer: Trainer) -> bool:
    if not getattr(trainer, "is_deepspeed_enabled", False):
        return False
    config = getattr(getattr(trainer, "deepspeed", None), "config", None) or {}
    return config.get("zero_optimization", {}).get("stage") == 3

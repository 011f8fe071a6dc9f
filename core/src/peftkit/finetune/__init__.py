"""``peftkit finetune``: train an adapter on a causal LM from the command line, on one or several processes.

Modules: ``data`` (JSONL examples, batches), ``task`` (the built-in date task), ``model_source``
(local folders and the packaged SmolLM2), ``train`` (the loop), ``evaluate`` (exact match),
``distributed`` (data parallelism), ``trainer`` (transformers ``Trainer`` integration),
``command`` (the CLI). Importing this package loads nothing heavy.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AdapterTrainer"]


def __getattr__(name: str) -> Any:
    if name == "AdapterTrainer":
        from peftkit.finetune.trainer import AdapterTrainer

        return AdapterTrainer
    raise AttributeError(name)

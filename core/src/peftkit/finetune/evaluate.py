"""Held-out scoring: greedy decoding, exact match of the stripped answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from peftkit.finetune.data import Example


@dataclass(frozen=True)
class Score:
    """Exact matches out of the examples scored, with a few (prompt-free) answers to show."""

    correct: int
    total: int
    samples: tuple[tuple[str, str], ...] = ()  # (expected, generated)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"{self.correct}/{self.total} ({100 * self.accuracy:.0f}%)"


@torch.no_grad()
def exact_match(
    model: Any, tokenizer: Any, examples: Sequence[Example], batch_size: int = 16, show: int = 3
) -> Score:
    """Generate an answer to each prompt greedily and count answers equal to the completion, whitespace stripped."""
    if not examples:
        return Score(0, 0)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    longest = max(len(tokenizer(e.completion, add_special_tokens=False)["input_ids"]) for e in examples)
    correct = 0
    samples: list[tuple[str, str]] = []
    try:
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            prompts = [tokenizer(e.prompt, add_special_tokens=False)["input_ids"] for e in chunk]
            width = max(len(p) for p in prompts)
            # Left padding, so every row's answer starts at the same position.
            ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=longest + 2,
                do_sample=False,
                pad_token_id=pad_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            for example, row in zip(chunk, out[:, width:], strict=True):
                answer = tokenizer.decode(row, skip_special_tokens=True).strip()
                correct += answer == example.completion.strip()
                if len(samples) < show:
                    samples.append((example.completion.strip(), answer))
    finally:
        model.train(was_training)
    return Score(correct, len(examples), tuple(samples))

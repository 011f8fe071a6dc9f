"""Training data: prompt/completion pairs read from a JSONL file, and their tokenized batches."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from peftkit.finetune.errors import FinetuneError


class DataError(FinetuneError):
    """The data file is missing, empty or malformed; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    """One training example: the model reads ``prompt`` and learns to write ``completion``.

    Plain-text examples have an empty prompt, so the loss covers the whole text.
    """

    prompt: str
    completion: str


def load_jsonl(path: str | os.PathLike[str]) -> list[Example]:
    """Read ``{"prompt": ..., "completion": ...}`` or ``{"text": ...}`` objects, one per line; blank lines are skipped."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"data file {path!r} does not exist; pass a JSONL file with --data")
    examples = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if line.strip():
                examples.append(_parse_line(path, number, line))
    if not examples:
        raise DataError(f"{path} holds no examples; write one JSON object per line")
    return examples


def _parse_line(path: str, number: int, line: str) -> Example:
    where = f"{path}, line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "text" in record and "completion" not in record:
        return Example("", _string(record, "text", where))
    if "completion" in record:
        return Example(_string(record, "prompt", where, default=""), _string(record, "completion", where))
    raise DataError(
        f'{where}: an object needs "prompt" and "completion" (or "text"); it has {sorted(record)}'
    )


def _string(record: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = record.get(key, default)
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value


@dataclass
class Batch:
    """Right-padded token ids; ``labels`` is -100 on prompt and padding so only completions are learned."""

    input_ids: Any
    attention_mask: Any
    labels: Any

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


IGNORE_INDEX = -100


def encode(example: Example, tokenizer: Any, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels of one example: prompt tokens are masked, an end-of-sequence token closes the completion."""
    prompt = tokenizer(example.prompt, add_special_tokens=False)["input_ids"] if example.prompt else []
    if not prompt and tokenizer.bos_token_id is not None:
        prompt = [tokenizer.bos_token_id]  # plain text: predict from the first token on
    completion = tokenizer(example.completion, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        completion = [*completion, tokenizer.eos_token_id]
    ids = (prompt + completion)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt) + completion)[:max_length]
    return ids, labels


def collate(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int) -> Batch:
    """Pad a list of ``encode`` results on the right into one batch of tensors."""
    import torch

    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        mask[row, : len(ids)] = 1
    return Batch(input_ids, mask, labels)


def batches(
    examples: Sequence[Example],
    tokenizer: Any,
    batch_size: int,
    max_length: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Batch]:
    """Endless batches over shuffled epochs; process ``rank`` of ``world_size`` gets every world_size-th batch."""
    encoded = [encode(e, tokenizer, max_length) for e in examples]
    trainable = [e for e in encoded if any(label != IGNORE_INDEX for label in e[1])]
    if not trainable:
        raise DataError(
            f"no example has a completion token left after truncation to --max-length {max_length}; "
            "raise --max-length or shorten the prompts"
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    rng = random.Random(seed)  # the same order on every rank, so the ranks' batches never overlap
    step = 0
    while True:
        order = list(range(len(trainable)))
        rng.shuffle(order)
        # Full batches only, unless the whole data set is smaller than one batch.
        for start in range(0, max(len(order) - batch_size, 0) + 1, batch_size):
            if step % world_size == rank:
                yield collate([trainable[i] for i in order[start : start + batch_size]], pad_id)
            step += 1

"""The built-in task: rewrite a date written in words as ISO 8601 (``March 5, 2021`` -> ``2021-03-05``).

Generated in code, so nothing is downloaded. Small instruction-tuned models mostly answer with a
sentence, a wrong day or month, or the original format, so the held-out exact-match score starts
low and rises clearly after a few minutes of training.
"""

from __future__ import annotations

import datetime
import random
from typing import Any

from peftkit.finetune.data import Example

INSTRUCTION = "Convert this date to ISO 8601 format (YYYY-MM-DD). Reply with the date only."

_ORDINALS = {1: "st", 2: "nd", 3: "rd", 21: "st", 22: "nd", 23: "rd", 31: "st"}


def _ordinal(day: int) -> str:
    return f"{day}{_ORDINALS.get(day, 'th')}"


# Ways people write a date; none is ambiguous about which number is the day.
_STYLES = (
    lambda d: f"{d:%B} {d.day}, {d.year}",  # March 5, 2021
    lambda d: f"{d.day} {d:%B} {d.year}",  # 5 March 2021
    lambda d: f"{d:%b} {d.day}, {d.year}",  # Mar 5, 2021
    lambda d: f"{d:%A}, {d:%B} {d.day}, {d.year}",  # Friday, March 5, 2021
    lambda d: f"the {_ordinal(d.day)} of {d:%B}, {d.year}",  # the 5th of March, 2021
    lambda d: f"{d:%B} {_ordinal(d.day)} {d.year}",  # March 5th 2021
    lambda d: f"{d.day}-{d:%b}-{d.year}",  # 5-Mar-2021
)


def random_date(rng: random.Random) -> datetime.date:
    """A uniformly drawn day between 1950 and 2049."""
    start = datetime.date(1950, 1, 1).toordinal()
    end = datetime.date(2049, 12, 31).toordinal()
    return datetime.date.fromordinal(rng.randint(start, end))


def date_examples(count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` (written date, ISO date) pairs drawn with ``seed``."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        day = random_date(rng)
        pairs.append((rng.choice(_STYLES)(day), day.isoformat()))
    return pairs


def format_prompt(tokenizer: Any, question: str) -> str:
    """The prompt for one question: the model's chat template when it has one, else a plain Q/A layout."""
    text = f"{INSTRUCTION}\n{question}"
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return f"{text}\nAnswer: "


def build(tokenizer: Any, train_size: int, eval_size: int, seed: int) -> tuple[list[Example], list[Example]]:
    """Training and held-out examples of the date task; no held-out date appears in training."""
    held_out = date_examples(eval_size, seed=10_000 + seed)
    seen = {iso for _, iso in held_out}
    train = [p for p in date_examples(train_size + eval_size, seed=seed) if p[1] not in seen][:train_size]
    return (
        [Example(format_prompt(tokenizer, q), a) for q, a in train],
        [Example(format_prompt(tokenizer, q), a) for q, a in held_out],
    )

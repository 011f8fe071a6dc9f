"""The name a transformers model takes and returns its key/value cache by.

transformers 5.24 renamed the forward keyword ``past_key_values`` to ``cache`` (the old name stays a
deprecated alias until 5.40, and outputs carry ``.cache``). Prefix tuning hands the model a cache and
prompt tuning must know whether a generation step already has one, so both ask here which name the
model in hand uses instead of assuming one: a single code path for every transformers version.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

# Newest first: a model that accepts both (an alias kept for old callers) is given the new name.
CACHE_NAMES = ("cache", "past_key_values")


def cache_keyword(forward: Callable[..., Any]) -> str | None:
    """The keyword ``forward`` takes its key/value cache by, or None when it takes no cache."""
    parameters = inspect.signature(forward).parameters
    return next((name for name in CACHE_NAMES if name in parameters), None)


def find_cache(inputs: Mapping[str, Any]) -> tuple[str | None, Any]:
    """``(name, cache)`` for the cache in model inputs or outputs under either name; ``(None, None)`` if none."""
    for name in CACHE_NAMES:
        if inputs.get(name) is not None:
            return name, inputs[name]
    return None, None

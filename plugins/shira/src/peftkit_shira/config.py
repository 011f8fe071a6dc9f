"""``ShiraConfig``: the Hugging Face PEFT field names and defaults, plus a mask function set in code.

``config.mask_fn`` is a plain attribute, not a field: a function cannot be written to
``adapter_config.json``, and a saved adapter carries its mask as ``shira_indices`` anyway.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from peftkit import ConfigError, PeftConfig


@dataclass
class ShiraConfig(PeftConfig):
    """SHiRA settings.

    ``r`` is a budget, not a rank: each adapted layer trains ``r * (in + out)`` of its weights
    (as many as LoRA of rank ``r``), at fixed positions chosen by the mask. ``mask_type="random"``
    draws them uniformly; ``random_seed`` makes every layer's draw reproducible (each layer still
    gets its own mask). Set ``config.mask_fn = fn`` to choose the positions yourself:
    ``fn(base_layer, r)`` returns a 0/1 tensor of shape ``(out_features, in_features)`` with
    exactly ``r * (in + out)`` ones. ``init_weights=True`` starts the trained values at zero (the
    adapter is a no-op); False draws them from a normal distribution (for tests).
    ``fan_in_fan_out`` is kept for compatibility: the base-layer view knows GPT-2 ``Conv1D``'s layout.
    """

    PEFT_TYPE: ClassVar[str] = "SHIRA"
    # Hugging Face PEFT's ShiraConfig has no bias, exclude_modules or layer selection.
    BASE_FIELDS: ClassVar[frozenset[str]] = frozenset({"target_modules", "modules_to_save"})
    # The mask is saved as shira_indices, so how it was drawn no longer matters once saved.
    NON_SHAPING_FIELDS: ClassVar[frozenset[str]] = frozenset({"init_weights", "mask_type", "random_seed"})
    # Set on an instance (``config.mask_fn = fn``); a ClassVar so it is never a serialised field.
    mask_fn: ClassVar[Callable[[Any, int], Any] | None] = None

    r: int = 32
    mask_type: str = "random"
    random_seed: int | None = None
    fan_in_fan_out: bool = False
    init_weights: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(f"SHiRA r must be a positive integer (the per-layer budget), got {self.r!r}")
        if self.random_seed is not None and (
            isinstance(self.random_seed, bool)
            or not isinstance(self.random_seed, int)
            or self.random_seed < 0
        ):
            raise ConfigError(f"random_seed must be None or a non-negative integer, got {self.random_seed!r}")
        if not isinstance(self.mask_type, str):
            raise ConfigError(f"mask_type must be a string such as 'random', got {self.mask_type!r}")
        if not isinstance(self.init_weights, bool):
            raise ConfigError(
                f"init_weights must be True (zeros) or False (random values), got {self.init_weights!r}"
            )

    def replace(self, **changes: Any) -> ShiraConfig:
        """A copy with some fields changed; a mask function set on this config is kept."""
        copy = dataclasses.replace(self, **changes)
        if "mask_fn" in self.__dict__:
            copy.__dict__["mask_fn"] = self.__dict__["mask_fn"]
        return copy

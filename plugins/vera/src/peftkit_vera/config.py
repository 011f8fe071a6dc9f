"""``VeraConfig``: the Hugging Face PEFT field names and defaults for VeRA."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from peftkit import ConfigError, PeftConfig


@dataclass
class VeraConfig(PeftConfig):
    """VeRA settings (Kopiczko et al., 2023, "VeRA: Vector-based Random Matrix Adaptation").

    ``r`` is the width of the shared random projections (VeRA trains only ``r + out`` numbers per
    layer, so it is much larger than a LoRA rank). ``projection_prng_key`` seeds the projections;
    with ``save_projection=False`` they are left out of the checkpoint and regenerated from it on
    load. ``d_initial`` is the starting value of every ``vera_lambda_d`` entry (``vera_lambda_b``
    starts at zero, so the adapter is a no-op at init); ``init_weights=False`` leaves the scaling
    vectors random instead (tests). ``bias`` may also be ``"vera_only"`` (train the biases of the
    adapted layers). ``fan_in_fan_out`` is kept for compatibility: the base-layer view already
    knows that GPT-2 ``Conv1D`` stores its weight transposed.
    """

    PEFT_TYPE: ClassVar[str] = "VERA"
    BIAS_EXTRA: ClassVar[tuple[str, ...]] = ("vera_only",)
    # Hugging Face PEFT's VeraConfig has no exclude_modules.
    BASE_FIELDS: ClassVar[frozenset[str]] = PeftConfig.BASE_FIELDS - {"exclude_modules"}
    NON_SHAPING_FIELDS: ClassVar[frozenset[str]] = frozenset({"vera_dropout", "d_initial", "init_weights"})

    r: int = 256
    projection_prng_key: int = 0
    save_projection: bool = True
    vera_dropout: float = 0.0
    d_initial: float = 0.1
    fan_in_fan_out: bool = False
    init_weights: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(f"VeRA r must be a positive integer, got {self.r!r}")
        if isinstance(self.projection_prng_key, bool) or not isinstance(self.projection_prng_key, int):
            raise ConfigError(
                f"projection_prng_key must be an integer seed, got {self.projection_prng_key!r}"
            )
        if not 0.0 <= self.vera_dropout < 1.0:
            raise ConfigError(f"vera_dropout must be in [0, 1), got {self.vera_dropout!r}")
        if not isinstance(self.d_initial, (int, float)) or isinstance(self.d_initial, bool):
            raise ConfigError(f"d_initial must be a number, got {self.d_initial!r}")

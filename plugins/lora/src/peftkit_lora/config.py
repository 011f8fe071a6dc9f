"""``LoraConfig``: the Hugging Face PEFT field names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from peftkit import ConfigError, PeftConfig


@dataclass
class LoraConfig(PeftConfig):
    """LoRA settings.

    ``r`` is the rank and ``lora_alpha / r`` the scaling (``lora_alpha / sqrt(r)`` with
    ``use_rslora``). ``init_lora_weights``: True (A Kaiming-uniform, B zero: identity at start),
    ``"gaussian"`` (A normal with std 1/r, B zero) or False (random, for tests).
    ``rank_pattern`` / ``alpha_pattern`` map a module-name pattern to its own r / alpha.
    ``lora_bias`` gives ``lora_B`` a trainable bias.
    """

    PEFT_TYPE: ClassVar[str] = "LORA"
    BIAS_EXTRA: ClassVar[tuple[str, ...]] = ("lora_only",)

    r: int = 8
    lora_alpha: int = 8
    lora_dropout: float = 0.0
    fan_in_fan_out: bool = False
    use_rslora: bool = False
    init_lora_weights: bool | str = True
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, int] = field(default_factory=dict)
    lora_bias: bool = False
    use_dora: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.r <= 0:
            raise ConfigError(f"LoRA r must be a positive integer, got {self.r}")
        if not (self.init_lora_weights in (True, False) or str(self.init_lora_weights).lower() == "gaussian"):
            raise ConfigError(
                f"init_lora_weights={self.init_lora_weights!r} is not supported here; use True, False or 'gaussian'"
            )
        if self.use_dora:
            raise ConfigError("use_dora=True is not available yet in peftkit-lora")

    def rank_and_alpha(self, module_path: str) -> tuple[int, float]:
        """The r and alpha for one module, after ``rank_pattern`` / ``alpha_pattern``."""
        return _pick(self.rank_pattern, module_path, self.r), _pick(self.alpha_pattern, module_path, self.lora_alpha)


def _pick(patterns: dict[str, Any], path: str, default: Any) -> Any:
    import re

    for key, value in patterns.items():
        if re.match(rf"(.*\.)?{key}$", path):
            return value
    return default

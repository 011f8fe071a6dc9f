"""``ScaleConfig``: the settings of the scale method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import peftkit


@dataclass
class ScaleConfig(peftkit.PeftConfig):
    """Scale settings. ``init_scale`` is the starting value of every entry of ``s``; 0 is the identity."""

    PEFT_TYPE: ClassVar[str] = "SCALE"

    init_scale: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init_scale <= -1.0:
            raise peftkit.ConfigError(
                f"init_scale must be above -1 (1 + s scales the output), got {self.init_scale}"
            )

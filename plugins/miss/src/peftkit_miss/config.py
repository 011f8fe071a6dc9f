"""``MissConfig``: the Hugging Face PEFT field names and defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from peftkit import ConfigError, PeftConfig

#: ``init_weights`` value -> variant name used inside the layer.
VARIANTS = {True: "balance", False: "balance", "bat": "bat", "mini": "mini"}


@dataclass
class MissConfig(PeftConfig):
    """MiSS settings.

    ``r`` is the shard size along ``in_features``. ``init_weights`` picks the variant:
    True (balance, zero start), ``"bat"`` (block-wise nonlinear update, zero start), ``"mini"``
    (a ``(r, mini_r)`` block repeated along ``out_features``, zero start) or False (balance with a
    random block, so the adapter changes the output from the start; for tests).
    ``miss_dropout`` is applied to the layer input of the balance and mini variants.
    """

    PEFT_TYPE: ClassVar[str] = "MISS"
    # init_weights picks the variant, so it shapes the weights; dropout does not.
    NON_SHAPING_FIELDS: ClassVar[frozenset[str]] = frozenset({"miss_dropout"})
    BIAS_EXTRA: ClassVar[tuple[str, ...]] = ("miss_only",)  # train the biases of the adapted layers only

    r: int = 64
    miss_dropout: float = 0.0
    mini_r: int = 1
    init_weights: bool | str = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(
                f"MiSS r must be a positive integer (the shard size along in_features), got {self.r!r}"
            )
        if isinstance(self.mini_r, bool) or not isinstance(self.mini_r, int) or self.mini_r <= 0:
            raise ConfigError(f"MiSS mini_r must be a positive integer, got {self.mini_r!r}")
        if not 0.0 <= float(self.miss_dropout) < 1.0:
            raise ConfigError(f"miss_dropout must be in [0, 1), got {self.miss_dropout!r}")
        if not (isinstance(self.init_weights, bool) or self.init_weights in ("bat", "mini")):
            raise ConfigError(
                f"init_weights={self.init_weights!r} is not a MiSS variant; use True (balance), 'bat', 'mini' "
                "or False (balance with a random block, for tests)"
            )

    @property
    def variant(self) -> str:
        """``"balance"``, ``"bat"`` or ``"mini"``."""
        return VARIANTS[self.init_weights]

    def initial_block(self, shape: tuple[int, ...]) -> Any:
        """The starting ``miss_block`` of one layer: zeros (the adapter is a no-op), or random for False.

        Subclass and override to start from other values (tests do, to get a non-identity bat or mini).
        """
        import math

        import torch

        block = torch.zeros(shape)
        if self.init_weights is False:
            # Kaiming-uniform like Hugging Face PEFT, so the adapter changes the output from the start.
            torch.nn.init.kaiming_uniform_(block, a=math.sqrt(5))
        return block

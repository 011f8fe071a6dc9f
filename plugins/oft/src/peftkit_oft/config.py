"""``OFTConfig``: the Hugging Face PEFT field names and defaults, and how a layer is cut into blocks."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

from peftkit import ConfigError, PeftConfig


@dataclass
class OFTConfig(PeftConfig):
    """OFT settings: each adapted layer's input features are rotated by a block-diagonal orthogonal matrix.

    Give exactly one of ``r`` (number of blocks) and ``oft_block_size`` (features per block);
    ``r * oft_block_size`` must equal the layer's input features (embedding dimension for
    embeddings, ``in_channels * kernel volume`` for convolutions). A value that does not divide
    a layer is replaced, for that layer, by the nearest divisor, with a warning.

    ``use_cayley_neumann`` approximates the Cayley transform by ``num_cayley_neumann_terms``
    terms of its Neumann series (faster, not exactly orthogonal); False uses the exact transform.
    ``coft`` keeps each block's generator in a Frobenius ball of radius ``eps / sqrt(stored blocks)``.
    ``block_share`` learns one block used for all. ``module_dropout`` replaces each block by the
    identity with that probability during training. ``init_weights=True`` starts at the identity
    rotation; False starts random (for tests). ``fan_in_fan_out`` is kept for compatibility: the
    base-layer view already knows that GPT-2 ``Conv1D`` stores its weight transposed.
    """

    PEFT_TYPE: ClassVar[str] = "OFT"
    BIAS_EXTRA: ClassVar[tuple[str, ...]] = ("oft_only",)
    NON_SHAPING_FIELDS: ClassVar[frozenset[str]] = frozenset({"module_dropout", "init_weights"})

    r: int = 0
    oft_block_size: int = 32
    module_dropout: float = 0.0
    fan_in_fan_out: bool = False
    init_weights: bool = True
    coft: bool = False
    eps: float = 6e-5
    block_share: bool = False
    use_cayley_neumann: bool = True
    num_cayley_neumann_terms: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("r", "oft_block_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"OFT {name} must be a non-negative integer, got {value!r}")
        if (self.r == 0) == (self.oft_block_size == 0):
            raise ConfigError(
                f"OFT needs exactly one of r ({self.r}) and oft_block_size ({self.oft_block_size}) to be non-zero, "
                "because r * oft_block_size must equal the layer's input features; set the other one to 0"
            )
        if not 0.0 <= self.module_dropout < 1.0:
            raise ConfigError(f"OFT module_dropout must be in [0, 1), got {self.module_dropout!r}")
        if not self.eps > 0:
            raise ConfigError(f"OFT eps (the COFT radius) must be positive, got {self.eps!r}")
        terms = self.num_cayley_neumann_terms
        if isinstance(terms, bool) or not isinstance(terms, int) or terms < 1:
            raise ConfigError(f"OFT num_cayley_neumann_terms must be a positive integer, got {terms!r}")
        if not isinstance(self.init_weights, bool):
            raise ConfigError(
                f"OFT init_weights must be True (identity at start) or False (random), got {self.init_weights!r}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OFTConfig:
        """Build from a saved config; configs in a retired Hugging Face PEFT format are refused."""
        from peftkit_oft.legacy import check_config_dict

        check_config_dict(data)
        if data.get("use_cayley_neumann") and "peft_version" not in data:
            # Hugging Face PEFT wrote no version before 0.18, whose Neumann series differed from today's.
            warnings.warn(
                "this OFT adapter uses the Cayley-Neumann parameterisation and carries no 'peft_version': "
                "it was probably written by Hugging Face PEFT < 0.18, whose series differed slightly; its "
                "outputs may not match what it was trained with. Retrain it with a current version to be sure.",
                stacklevel=2,
            )
        return super().from_dict(data)  # type: ignore[return-value]

    def blocks_for(self, features: int, where: str = "this layer") -> tuple[int, int]:
        """``(r, block size)`` for a layer with ``features`` input features, adjusting a non-divisor with a warning."""
        if self.r == 0:
            size = self.oft_block_size
            if features % size:
                size = nearest_divisor(features, size)
                warnings.warn(
                    f"OFT: oft_block_size={self.oft_block_size} does not divide the {features} input features of "
                    f"{where}; using the nearest divisor oft_block_size={size} (r={features // size}) there",
                    stacklevel=3,
                )
            return features // size, size
        r = self.r
        if features % r:
            r = nearest_divisor(features, r)
            warnings.warn(
                f"OFT: r={self.r} does not divide the {features} input features of {where}; using the nearest "
                f"divisor r={r} (oft_block_size={features // r}) there",
                stacklevel=3,
            )
        return r, features // r


def nearest_divisor(n: int, wanted: int) -> int:
    """The divisor of ``n`` closest to ``wanted`` (the smaller one on a tie; ``n`` itself when ``wanted > n``).

    This is the rule Hugging Face PEFT applies, so both libraries cut a layer the same way.
    """
    if wanted >= n:
        return n
    lower = next(d for d in range(wanted, 0, -1) if n % d == 0)
    upper = next(d for d in range(wanted, n + 1) if n % d == 0)
    return lower if wanted - lower <= upper - wanted else upper

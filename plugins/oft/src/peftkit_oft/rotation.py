"""One adapter's block rotations: the stored generators and the orthogonal blocks built from them.

Each block ``i`` stores the strict upper triangle (row-major) of a skew-symmetric ``b x b``
matrix ``Q_i``. The rotation of the block is, as in Hugging Face PEFT (so checkpoints agree):

* exact Cayley: ``R = (I - Q)(I + Q)^-1``, orthogonal for any skew ``Q``;
* Cayley-Neumann: ``R = I + 2Q + 2Q^2 + ... + 2Q^(k-1) + Q^k`` with ``k = max(terms - 1, 3)``
  (``I`` for one term, ``I + 2Q`` for two). This is the truncated series of
  ``(I + Q)(I - Q)^-1``, the *transpose* of the exact form: the two modes are not
  interchangeable for a trained checkpoint, and a checkpoint only means something in its own.

Features are rotated from the right, ``x -> x R`` per block of ``b`` features.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn


@functools.lru_cache(maxsize=64)
def _upper_indices(block_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per size and device: backward keeps them, so a fresh pair per layer and step would
    # add to every step's memory as well as its time.
    rows, cols = torch.triu_indices(block_size, block_size, 1, device=device)
    return rows, cols


def skew(upper: torch.Tensor, block_size: int) -> torch.Tensor:
    """``(n, b(b-1)/2)`` strict upper triangles -> ``(n, b, b)`` skew-symmetric matrices."""
    rows, cols = _upper_indices(block_size, upper.device)
    full = upper.new_zeros(upper.shape[0], block_size, block_size)
    full[:, rows, cols] = upper
    return full - full.transpose(1, 2)


def cayley(q: torch.Tensor) -> torch.Tensor:
    """The exact Cayley transform ``(I - Q)(I + Q)^-1`` of a batch of skew matrices (``I + Q`` is always invertible)."""
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device).expand_as(q)
    return torch.linalg.solve(eye + q, eye - q, left=False)


def cayley_neumann(q: torch.Tensor, terms: int) -> torch.Tensor:
    """Hugging Face PEFT's truncated Neumann series for the Cayley transform (see the module docstring)."""
    # Accumulated in place into one buffer: the sum needs nothing saved for backward (only the
    # matrix products do), so no per-term temporaries are allocated.
    out = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device).repeat(q.shape[0], 1, 1)
    if terms < 2:
        return out
    out.add_(q, alpha=2.0)
    if terms == 2:
        return out
    power = q
    for _ in range(2, max(terms - 1, 3)):
        power = torch.bmm(power, q)
        out.add_(power, alpha=2.0)
    return out.add_(torch.bmm(power, q))


def project(q: torch.Tensor, eps: float) -> torch.Tensor:
    """COFT: scale each block's generator into the Frobenius ball of radius ``eps / sqrt(n blocks)``.

    Blocks already inside are returned exactly as they are.
    """
    radius = eps / math.sqrt(q.shape[0])
    norm = torch.linalg.matrix_norm(q, keepdim=True)
    # radius / max(norm, radius) is 1 inside the ball and has a finite gradient at norm 0.
    return q * (radius / norm.clamp_min(radius))


class OFTRotation(nn.Module):
    """The trainable generators of one adapter on one layer (``weight``, the tensor that is saved) and its settings.

    ``weight`` has one row per stored block: ``num_blocks`` rows, or one with ``block_share``.
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        *,
        block_share: bool = False,
        coft: bool = False,
        eps: float = 6e-5,
        use_cayley_neumann: bool = True,
        num_cayley_neumann_terms: int = 5,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        stored = 1 if block_share else num_blocks
        self.weight = nn.Parameter(torch.zeros(stored, block_size * (block_size - 1) // 2))
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.coft = coft
        self.eps = eps
        self.use_cayley_neumann = use_cayley_neumann
        self.num_cayley_neumann_terms = num_cayley_neumann_terms
        self.dropout = dropout

    @property
    def exact(self) -> bool:
        """Whether the blocks are exactly orthogonal (then their inverse is their transpose)."""
        return not self.use_cayley_neumann

    def blocks(self, train_dropout: bool = False) -> torch.Tensor:
        """The ``(num_blocks, b, b)`` rotations, computed in at least float32.

        With ``train_dropout`` each block is replaced by the identity with probability ``dropout``.
        """
        weight: torch.Tensor = self.weight
        if weight.dtype in (torch.float16, torch.bfloat16):
            weight = weight.float()  # linalg.solve has no half-precision kernels, and rounding compounds
        q = skew(weight, self.block_size)
        if self.coft:
            q = project(q, self.eps)
        rot = cayley_neumann(q, self.num_cayley_neumann_terms) if self.use_cayley_neumann else cayley(q)
        rot = rot.expand(self.num_blocks, -1, -1)
        if train_dropout and self.dropout > 0:
            dropped = torch.rand(self.num_blocks, 1, 1, device=rot.device) < self.dropout
            eye = torch.eye(self.block_size, dtype=rot.dtype, device=rot.device)
            rot = torch.where(dropped, eye, rot)
        return rot

    def extra_repr(self) -> str:
        mode = f"neumann({self.num_cayley_neumann_terms})" if self.use_cayley_neumann else "cayley"
        share = ", block_share" if self.weight.shape[0] == 1 and self.num_blocks > 1 else ""
        coft = f", coft(eps={self.eps})" if self.coft else ""
        return f"blocks={self.num_blocks}, block_size={self.block_size}, {mode}{share}{coft}"

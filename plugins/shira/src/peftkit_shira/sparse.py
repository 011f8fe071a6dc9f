"""``x @ S.T`` for a sparse ``(out, in)`` matrix ``S`` with fixed positions and trained values.

No dense ``(out, in)`` matrix is ever built. The forward gathers, for each of the K entries,
the input column it reads, scales it by the entry's value and sums it into the output row it
writes; the backward does the same with the transposed pattern (input gradient) and takes one
dot product over the batch per entry (value gradient). Each is ``O(batch * K)``. On CPU and
CUDA these run as compressed-sparse-row kernels (about ten times faster than ``index_add_`` on
CPU); other devices use gather / ``index_add_``. Only ``x`` and the values are kept for backward.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from peftkit import CheckpointError

# Dtypes the sparse kernels implement; others (bf16, fp16) are computed in float32.
_KERNEL_DTYPES = (torch.float32, torch.float64)
_KERNEL_DEVICES = ("cpu", "cuda")


class SparsePattern:
    """The positions of one adapter's entries in the layouts the kernels need, built once per index tensor.

    ``indices`` is ``(2, K)``: output rows over input columns, in any order (the values follow it).
    Invalid indices (out of range, repeated, not integers) raise :class:`peftkit.CheckpointError`.
    """

    def __init__(self, indices: torch.Tensor, out_features: int, in_features: int, where: str) -> None:
        _check(indices, out_features, in_features, where)
        self.shape = (out_features, in_features)
        self.indices = indices
        self.version = indices._version  # an in-place write to the indices makes this pattern stale
        rows, cols = indices[0].long(), indices[1].long()
        flat = rows * in_features + cols
        # Row-major order: the order masks are made in, and the one compressed rows need.
        self.order = None if bool((flat[1:] >= flat[:-1]).all()) else torch.argsort(flat)
        self.col = (cols if self.order is None else cols[self.order]).to(torch.int32)
        self.crow = _compressed(rows, out_features)
        self._transposed: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @property
    def count(self) -> int:
        return self.indices.shape[1]

    def rows_cols(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and column of each entry, in the stored order (int64)."""
        return self.indices[0].long(), self.indices[1].long()

    def matmul(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``x @ S.T`` for ``x`` of shape ``(batch, in)``; differentiable in ``x`` and ``values``."""
        if x.device.type in _KERNEL_DEVICES:
            return _SparseLinear.apply(x, values, self)
        rows, cols = self.rows_cols()
        out = torch.zeros(x.shape[0], self.shape[0], dtype=x.dtype, device=x.device)
        return out.index_add(1, rows, x[:, cols] * values)

    def dense(self, values: torch.Tensor) -> torch.Tensor:
        """``S`` as a dense ``(out, in)`` tensor (for safe merging and tests only)."""
        out = torch.zeros(self.shape, dtype=values.dtype, device=values.device)
        return out.index_put_(self.rows_cols(), values, accumulate=True)

    # --- kernels -------------------------------------------------------------------------
    def _row_major(self, values: torch.Tensor) -> torch.Tensor:
        return values if self.order is None else values[self.order]

    def _forward(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        matrix = _csr(self.crow, self.col, self._row_major(values), self.shape)
        return (matrix @ x.T.contiguous()).T

    def _input_grad(self, grad_t: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``grad @ S`` from ``grad_t = grad.T`` (contiguous ``(out, batch)``)."""
        ccol, row, order = self._transpose()
        matrix = _csr(ccol, row, values[order], (self.shape[1], self.shape[0]))
        return (matrix @ grad_t).T

    def _value_grad(self, grad_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The gradient of each entry's value, from ``grad_t = grad.T`` (contiguous ``(out, batch)``)."""
        pattern = _csr(
            self.crow, self.col, torch.zeros(self.count, dtype=x.dtype, device=x.device), self.shape
        )
        # Per entry (i, j): sum over the batch of grad[:, i] * x[:, j], computed only at the pattern.
        sampled = torch.sparse.sampled_addmm(pattern, grad_t, x, beta=0.0).values()
        if self.order is None:
            return sampled
        return torch.empty_like(sampled).index_copy_(0, self.order, sampled)

    def _transpose(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Built on the first backward only: inference never needs it.
        if self._transposed is None:
            rows, cols = self.rows_cols()
            order = torch.argsort(cols * self.shape[0] + rows)
            self._transposed = (_compressed(cols, self.shape[1]), rows[order].to(torch.int32), order)
        return self._transposed


class _SparseLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, values: torch.Tensor, pattern: SparsePattern) -> torch.Tensor:
        ctx.pattern = pattern
        ctx.save_for_backward(x, values)
        dtype = values.dtype if values.dtype in _KERNEL_DTYPES else torch.float32
        return pattern._forward(x.to(dtype), values.to(dtype)).to(values.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, values = ctx.saved_tensors
        pattern: SparsePattern = ctx.pattern
        dtype = values.dtype if values.dtype in _KERNEL_DTYPES else torch.float32
        # Both kernels read the gradient feature-major; handing them a transposed view instead makes
        # each of them slower than one explicit transposed copy shared by the two.
        grad_t = grad.to(dtype).T.contiguous()
        grad_x = grad_values = None
        if ctx.needs_input_grad[0]:
            grad_x = pattern._input_grad(grad_t, values.to(dtype)).to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_values = pattern._value_grad(grad_t, x.to(dtype).contiguous()).to(values.dtype)
        return grad_x, grad_values, None


def _compressed(major: torch.Tensor, size: int) -> torch.Tensor:
    """Compressed pointers (``size + 1``) of entries sorted by ``major``."""
    pointers = torch.zeros(size + 1, dtype=torch.int64, device=major.device)
    pointers[1:] = torch.bincount(major, minlength=size).cumsum(0)
    return pointers.to(torch.int32)


def _csr(
    pointers: torch.Tensor, index: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    with warnings.catch_warnings():
        # torch says sparse CSR is "beta"; the kernels used here are stable and tested against dense.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(pointers, index, values, shape, check_invariants=False)


def _check(indices: torch.Tensor, out_features: int, in_features: int, where: str) -> None:
    """Refuse indices the kernels would read out of bounds with (they skip their own checks for speed)."""
    if indices.dim() != 2 or indices.shape[0] != 2:
        raise CheckpointError(f"{where}: shira_indices must have shape (2, K), found {tuple(indices.shape)}")
    if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
        raise CheckpointError(f"{where}: shira_indices must be integers, found {indices.dtype}")
    if indices.numel() == 0:
        return
    rows, cols = indices[0].long(), indices[1].long()
    if rows.min() < 0 or cols.min() < 0 or rows.max() >= out_features or cols.max() >= in_features:
        raise CheckpointError(
            f"{where}: shira_indices point outside the ({out_features}, {in_features}) weight "
            f"(rows {int(rows.min())}..{int(rows.max())}, columns {int(cols.min())}..{int(cols.max())}); "
            "the adapter was saved for a different model"
        )
    flat = (rows * in_features + cols).sort().values
    if bool((flat[1:] == flat[:-1]).any()):
        raise CheckpointError(f"{where}: shira_indices name the same weight entry twice; the file is corrupt")

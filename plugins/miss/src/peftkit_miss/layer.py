"""The MiSS layer: one trainable block per adapter whose shards are shared across the weight.

Notation: the base weight ``W`` is ``(out, in)`` (GPT-2 ``Conv1D`` is transposed by its view),
``r`` the shard size along ``in``, ``n = in // r`` full shards and ``rem = in % r`` columns
left over. Each adapter picks its own variant from its config:

* balance: ``miss_block`` ``B`` is ``(r, out)``; weight column ``i`` gains ``B[i mod r, :]``.
  On the input side that is ``y += (sum of x's r-wide shards) @ B``, where the ``rem`` tail
  columns count towards the first ``rem`` entries of the sum.
* mini: ``B`` is ``(r, mini_r)``, repeated along ``out`` (output ``o`` uses column
  ``o mod mini_r``); otherwise as balance.
* bat: ``B`` is ``(out // r, r, r)``; every ``r x r`` block ``W[i, j]`` (output block ``i``,
  input block ``j``) becomes ``W[i, j] + W[i, j] @ B[i] + B[i]``, undone exactly by
  ``(W'[i, j] - B[i]) @ inv(I + B[i])``. Its forward needs the dense base weight.

Dropout applies to the input of balance and mini, as in Hugging Face PEFT. The variant lives
per adapter, so adapters of different variants can share a layer and be merged in any order.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from peftkit import AdapterLayer, BaseLayerView, UnsupportedLayerError
from peftkit.per_sample import current as _sample_adapters
from peftkit_miss.config import MissConfig


class MissLayer(AdapterLayer[MissConfig]):
    adapter_dicts = ("miss_r", "miss_mini_r", "miss_variant")

    def __init__(self, base_layer: nn.Module, view: BaseLayerView) -> None:
        super().__init__(base_layer, view)
        self.miss_block = nn.ParameterDict()
        self.miss_dropout = nn.ModuleDict()
        self.miss_r: dict[str, int] = {}
        self.miss_mini_r: dict[str, int] = {}
        self.miss_variant: dict[str, str] = {}

    # --- creation -----------------------------------------------------------------------
    def create_adapter(self, name: str, config: MissConfig) -> None:
        where = self.path or "this layer"
        if self.view.kind != "linear":
            raise UnsupportedLayerError(
                f"miss: module {where!r} of type {self.view.layer_type} cannot be adapted; MiSS supports "
                "nn.Linear and transformers Conv1D layers (and quantized linear layers through their backend)"
            )
        r, variant, mini_r = config.r, config.variant, config.mini_r
        block_shape = _check_shapes(where, self.view, r, variant, mini_r)
        if variant == "bat" and type(self.view).read_weight is BaseLayerView.read_weight:
            raise ValueError(
                f"miss: init_weights='bat' needs the dense base weight of {where!r}, but its "
                f"{type(self.view).__name__} cannot read it; use the balance (True) or 'mini' variant"
            )
        self.miss_block[name] = nn.Parameter(config.initial_block(block_shape))
        self.miss_dropout[name] = (
            nn.Dropout(config.miss_dropout) if config.miss_dropout > 0 else nn.Identity()
        )
        self.miss_r[name] = r
        self.miss_mini_r[name] = mini_r
        self.miss_variant[name] = variant

    # --- forward ------------------------------------------------------------------------
    def adapter_forward(self, x: torch.Tensor, result: torch.Tensor, name: str) -> torch.Tensor:
        block = self.miss_block[name]
        if self.miss_variant[name] == "bat":
            weight = self._weight_before(name, block.dtype)
            return result + F.linear(x.to(block.dtype), _bat_delta(weight, block)).to(result.dtype)
        shard_sum = _shard_sum(self.miss_dropout[name](x.to(block.dtype)), self.miss_r[name])
        if self.miss_variant[name] == "mini":
            # (.., mini_r) broadcast over the out // mini_r groups: the repeated block is never built.
            update = (shard_sum @ block).unsqueeze(-2).to(result.dtype)
            return (result.unflatten(-1, (-1, self.miss_mini_r[name])) + update).flatten(-2)
        if result.dtype == block.dtype:
            # One fused kernel for result + s @ B instead of a matmul and an add.
            flat = torch.addmm(
                result.reshape(-1, result.shape[-1]), shard_sum.reshape(-1, block.shape[0]), block
            )
            return flat.view(result.shape)
        return result + (shard_sum @ block).to(result.dtype)

    def _weight_before(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """The base weight as the active, unmerged adapters before ``name`` leave it.

        bat depends on the weight it is applied to, so the forward must see what merging these
        adapters in order would give; gradients flow into those earlier adapters too. Under
        per-sample routing (``adapter_names=[...]``) the rows routed to ``name`` see no other
        adapter, so it is the base weight itself.
        """
        weight = self.view.read_weight().to(dtype)
        if _sample_adapters() is not None:
            return weight
        for other in self.active_adapters:
            if other == name:
                break
            if other not in self.merged_adapters:
                weight = self._block_applied(weight, other, self.miss_block[other], inverse=False)
        return weight

    # --- merging ------------------------------------------------------------------------
    def delta_weight(self, name: str) -> torch.Tensor:
        """The additive ``(out, in)`` update of a balance or mini adapter."""
        if self.miss_variant[name] == "bat":
            raise NotImplementedError(
                "a MiSS bat update depends on the base weight; use merged_weight(W, name)"
            )
        shared = self._shared_block(name, self.miss_block[name].detach())  # (r, out)
        in_features = self.view.in_features
        reps = -(-in_features // shared.shape[0])
        return shared.T.repeat(1, reps)[:, :in_features]

    @property
    def is_additive(self) -> bool:
        """balance and mini add a fixed update; bat's depends on the weight it is merged into."""
        return "bat" not in self.miss_variant.values()

    def add_delta_to_weight(self, name: str, alpha: float) -> None:
        # Added to the weight in place, shard by shard: the (out, in) delta is never built.
        block = self.miss_block[name].detach()
        shared = self._shared_block(name, block)
        self.view.update_weight(lambda w: _add_shared_(w, shared * alpha), block.dtype)

    def merged_weight(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        return self._block_applied(weight, name, self.miss_block[name].detach(), inverse=False)

    def unmerged_weight(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        return self._block_applied(weight, name, self.miss_block[name].detach(), inverse=True)

    def _block_applied(
        self, weight: torch.Tensor, name: str, block: torch.Tensor, inverse: bool
    ) -> torch.Tensor:
        """Adapter ``name`` merged into (or, with ``inverse``, taken out of) ``weight``; never in place."""
        block = block.to(weight.dtype)
        if self.miss_variant[name] == "bat":
            return _bat_unmerged(weight, block) if inverse else _bat_merged(weight, block)
        shared = self._shared_block(name, block)
        return _add_shared(weight, -shared if inverse else shared)

    def _shared_block(self, name: str, block: torch.Tensor) -> torch.Tensor:
        """The ``(r, out)`` block a balance or mini adapter adds to every shard."""
        if self.miss_variant[name] == "mini":
            return block.repeat(1, self.view.out_features // self.miss_mini_r[name])
        return block


def _check_shapes(where: str, view: Any, r: int, variant: str, mini_r: int) -> tuple[int, ...]:
    """The ``miss_block`` shape for these settings; an error says which size does not fit."""
    in_features, out_features = view.in_features, view.out_features
    if r <= 0:
        raise ValueError(f"miss: r must be a positive integer, got {r} for {where!r}")
    if r > in_features:
        raise ValueError(
            f"miss: r={r} is larger than in_features={in_features} of {where!r}; pick r <= {in_features}"
        )
    if variant == "bat":
        for dim, size in (("in_features", in_features), ("out_features", out_features)):
            if size % r:
                raise ValueError(
                    f"miss: init_weights='bat' splits the weight of {where!r} into {r}x{r} blocks, but its "
                    f"{dim}={size} is not divisible by r={r} (in_features={in_features}, "
                    f"out_features={out_features}); pick an r that divides both"
                )
        return (out_features // r, r, r)
    if variant == "mini":
        if mini_r <= 0 or out_features % mini_r:
            raise ValueError(
                f"miss: init_weights='mini' repeats a (r, mini_r) block along out_features, but "
                f"out_features={out_features} of {where!r} is not divisible by mini_r={mini_r}"
            )
        return (r, mini_r)
    return (r, out_features)


def _shard_sum(x: torch.Tensor, r: int) -> torch.Tensor:
    """Sum of ``x``'s r-wide shards along the last dim, the short tail shard added to the first columns.

    Works on views of ``x`` (no padded or shuffled copy of the input), so its cost is one read of ``x``.
    """
    n, rem = divmod(x.shape[-1], r)
    if rem == 0:
        return x.unflatten(-1, (n, r)).sum(-2)
    total = x.narrow(-1, 0, n * r).unflatten(-1, (n, r)).sum(-2)
    # ``total`` is a fresh tensor that sum's backward does not need, so adding in place is safe for autograd.
    total[..., :rem] += x.narrow(-1, n * r, rem)
    return total


def _add_shared(weight: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """``weight`` with ``shared[i mod r, :]`` added to column ``i``; ``weight`` itself is not modified."""
    return _add_shared_(weight.clone(), shared)


def _add_shared_(weight: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """Add ``shared[i mod r, :]`` to column ``i`` of ``weight``, in place; returns ``weight``."""
    r = shared.shape[0]
    n, rem = divmod(weight.shape[1], r)
    # Broadcasting from a contiguous (out, r) copy is several times faster than from the transposed view.
    columns = shared.T.contiguous()
    weight.narrow(1, 0, n * r).unflatten(1, (n, r)).add_(columns.unsqueeze(1))
    if rem:
        weight.narrow(1, n * r, rem).add_(columns[:, :rem])
    return weight


def _blocks(weight: torch.Tensor, r: int) -> torch.Tensor:
    """``(out, in)`` -> ``(out // r, in // r, r, r)``: element ``[i, j]`` is block row ``i``, block column ``j``."""
    return weight.unflatten(0, (-1, r)).unflatten(2, (-1, r)).transpose(1, 2)


def _unblocks(blocks: torch.Tensor) -> torch.Tensor:
    rows, cols, r, _ = blocks.shape
    return blocks.transpose(1, 2).reshape(rows * r, cols * r)


def _bat_delta(weight: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """What bat adds to ``weight``: block ``[i, j]`` gains ``W[i, j] @ B[i] + B[i]``."""
    blocks = _blocks(weight, block.shape[-1])
    per_row = block.unsqueeze(1)  # (out // r, 1, r, r): broadcast over block columns
    return _unblocks(blocks @ per_row + per_row)


def _bat_merged(weight: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """Every block ``W[i, j]`` replaced by ``W[i, j] + W[i, j] @ B[i] + B[i]``."""
    return weight + _bat_delta(weight, block)


def _bat_unmerged(weight: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """The exact inverse of :func:`_bat_merged`: ``(W'[i, j] - B[i]) @ inv(I + B[i])``, solved in float64."""
    blocks = _blocks(weight, block.shape[-1]).double()
    per_row = block.double().unsqueeze(1)
    eye = torch.eye(block.shape[-1], dtype=torch.float64, device=block.device)
    # Solving X (I + B) = W' - B is more accurate than multiplying by an explicit inverse.
    restored = torch.linalg.solve(eye + per_row, blocks - per_row, left=False)
    return _unblocks(restored).to(weight.dtype)

"""Base-layer views on bitsandbytes' quantized linear layers.

Reading a weight dequantizes it to a dense float tensor; writing one re-quantizes it with the
layer's own settings (block size, nf4/fp4, storage type, double quantization). Merging therefore
works, but rounds: a merged model is close to the unmerged one, not equal to it, and unmerging
does not give back the original bits.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, cast

import bitsandbytes as bnb
import torch
from torch import nn

from peftkit import BaseLayerView

ROUNDING_WARNING = (
    "merging into (or unmerging from) a bitsandbytes {bits} layer re-quantizes its weight, so the "
    "result differs slightly from the unmerged model (rounding)"
)


def view_for(module: nn.Module) -> BaseLayerView | None:
    """The view for a bitsandbytes linear layer, or None for the layers this backend does not serve."""
    if isinstance(module, bnb.nn.Linear4bit):
        return Linear4bitView(module)
    if isinstance(module, bnb.nn.Linear8bitLt):
        return Linear8bitView(module)
    return None


class _QuantizedLinearView(BaseLayerView):
    kind = "linear"
    supports_merge = True
    bits = ""

    def __init__(self, module: bnb.nn.Linear4bit | bnb.nn.Linear8bitLt) -> None:
        super().__init__(module, module.in_features, module.out_features)

    @property
    def _layer(self) -> nn.Linear:
        """``module``, typed as the bitsandbytes layer it is (both subclass ``nn.Linear``)."""
        return cast(nn.Linear, self.module)

    @property
    def device(self) -> torch.device:
        return self._layer.weight.device

    def write_weight(self, weight: torch.Tensor) -> None:
        expected = (self.out_features, self.in_features)
        if tuple(weight.shape) != expected:
            raise ValueError(
                f"cannot write a weight of shape {tuple(weight.shape)} into {self.layer_type} "
                f"({self.in_features} -> {self.out_features}); expected {expected}"
            )
        if self._is_quantized():
            warnings.warn(ROUNDING_WARNING.format(bits=self.bits))
        self._store(weight.detach())

    def add_to_weight(self, delta: torch.Tensor) -> None:
        # In float32 whatever the delta's dtype: the sum is rounded once, by the re-quantization.
        self.write_weight(self.read_weight().float() + delta.float())

    def _is_quantized(self) -> bool:
        return not self._layer.weight.is_floating_point()

    def _store(self, weight: torch.Tensor) -> None:
        raise NotImplementedError


class Linear4bitView(_QuantizedLinearView):
    """``bitsandbytes.nn.Linear4bit`` (``LinearNF4``, ``LinearFP4``): 4-bit blockwise weights."""

    bits = "4-bit"

    @property
    def _layer(self) -> bnb.nn.Linear4bit:
        return cast(bnb.nn.Linear4bit, self.module)

    @property
    def _params(self) -> bnb.nn.Params4bit:
        # Linear4bit inherits nn.Linear's declaration of weight as a plain Tensor.
        return cast(bnb.nn.Params4bit, self._layer.weight)

    @property
    def weight_dtype(self) -> torch.dtype:
        compute = getattr(self.module, "compute_dtype", None)
        if isinstance(compute, torch.dtype) and compute.is_floating_point:
            return compute
        state = self._state()
        stored = _original_dtype(state) if state is not None else self._layer.weight.dtype
        return stored if stored.is_floating_point else torch.float32

    def _state(self) -> Any:
        state = getattr(self.module.weight, "quant_state", None)
        return state if state is not None else getattr(self.module, "quant_state", None)

    def _is_quantized(self) -> bool:
        return bool(getattr(self.module.weight, "bnb_quantized", False)) and self._state() is not None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        state = self._state()
        if _packed_for_cpu(state) and torch.is_grad_enabled() and (self.module.training or x.requires_grad):
            # bitsandbytes packs CPU weights for inference at the first eval forward and keeps them
            # packed; the packed kernel has no backward, so training after an evaluation would
            # silently get no gradients. Unpack first (the next eval forward packs again).
            weight = self._params
            weight.data, restored = _unpack(weight.data, state)
            weight.quant_state = restored
            self.module.quant_state = restored
        return self.module(x, *args, **kwargs)

    def read_weight(self) -> torch.Tensor:
        weight = self._layer.weight
        if not self._is_quantized():  # a layer not yet moved to its device holds its float weight
            return weight.data
        data, state = _unpack(weight.data, self._state())
        return bnb.functional.dequantize_4bit(data, state)

    def _store(self, weight: torch.Tensor) -> None:
        old = self._params
        if not self._is_quantized():
            old.data.copy_(weight)
            return
        dtype = _original_dtype(self._state())
        new = bnb.nn.Params4bit(
            weight.to(device=old.device, dtype=dtype).contiguous(),
            requires_grad=False,
            blocksize=old.blocksize,
            compress_statistics=old.compress_statistics,
            quant_type=old.quant_type,
            quant_storage=old.quant_storage,
            module=self._layer,
        )
        # Params4bit quantizes when moved to a device; assigning only after that leaves the layer
        # as it was if quantization fails.
        self._layer.weight = new.to(old.device)  # type: ignore[misc]  # bitsandbytes types to()'s self as a Module


class Linear8bitView(_QuantizedLinearView):
    """``bitsandbytes.nn.Linear8bitLt`` (LLM.int8()): int8 weights with one scale per output row."""

    bits = "8-bit"

    @property
    def _layer(self) -> bnb.nn.Linear8bitLt:
        return cast(bnb.nn.Linear8bitLt, self.module)

    @property
    def weight_dtype(self) -> torch.dtype:
        # The layer computes in its input's dtype; its float parameters (the bias) show which one.
        weight, bias = self._layer.weight, self._layer.bias
        if weight.is_floating_point():
            return weight.dtype
        if bias is not None and bias.is_floating_point():
            return bias.dtype
        return torch.float32

    def read_weight(self) -> torch.Tensor:
        weight = self._layer.weight
        if weight.is_floating_point():  # has_fp16_weights=True, or not quantized yet
            return weight.data
        # The scales move from the weight to the layer's matmul state at the first forward.
        scales = getattr(weight, "SCB", None)
        if scales is None:
            scales = self._layer.state.SCB
        if scales is None:
            raise RuntimeError(
                f"{self.layer_type} holds int8 weights but no scales (SCB); load it through transformers "
                "or move it to its device with .to(device) so bitsandbytes quantizes it"
            )
        return bnb.functional.int8_vectorwise_dequant(weight.data, scales.to(weight.device))

    def _store(self, weight: torch.Tensor) -> None:
        old = self._layer.weight
        if not self._is_quantized():
            old.data.copy_(weight)
        else:
            # Int8Params quantizes float data held on the CPU when it is moved to a device.
            new = bnb.nn.Int8Params(
                weight.to("cpu", torch.float32), requires_grad=False, has_fp16_weights=False
            ).to(old.device)  # type: ignore[misc]  # bitsandbytes types to()'s self as a Module
            self._layer.weight = new
        # Drop the int8 copy and scales cached for the old weight; the next forward takes the new ones.
        self._layer.state.reset_grads()


# --- 4-bit helpers ----------------------------------------------------------------------------
def _packed_for_cpu(state: Any) -> bool:
    return bool(getattr(state, "packing_format_for_cpu", False))


def _original_dtype(state: Any) -> torch.dtype:
    """The dtype the weight had when quantized (packing for CPU inference replaces ``state.dtype``)."""
    if _packed_for_cpu(state):
        return state.original_dtype
    return state.dtype


def _unpack(data: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
    """The weight's storage and quantization state in bitsandbytes' standard (unpacked) layout.

    Neither argument is modified. On CPU, bitsandbytes repacks weights for its inference kernel
    at the first eval forward: nibbles reordered, scales made bfloat16 and stored ``(in/block, out)``.
    """
    if not _packed_for_cpu(state):
        return data, state
    inverse = getattr(bnb.functional, "_convert_weight_packed_for_cpu_inverse", None)
    if inverse is None:
        raise RuntimeError(
            f"this bitsandbytes ({bnb.__version__}) packs CPU weights in a layout peftkit-bnb cannot read; "
            "run the model in train mode (model.train()) before merging, or upgrade peftkit-bnb"
        )
    scratch = copy.copy(state)  # the inverse edits the state it is given
    scratch.original_nested = False  # keep the exact (bfloat16) scales rather than re-quantizing them
    unpacked, _ = inverse(data, scratch)
    restored = bnb.functional.QuantState(
        absmax=state.absmax.T.reshape(-1).float(),
        shape=state.shape,
        code=state.code,
        blocksize=state.blocksize,
        quant_type=state.quant_type,
        dtype=state.original_dtype,
    )
    return unpacked, restored

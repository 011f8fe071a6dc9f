"""Getting a quantized (k-bit) transformers model ready for adapter training."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Quantization methods whose half-precision parameters are part of the packed format (scales,
# zero points) and must keep their dtype.
_KEEP_DTYPE_METHODS = {"gptq", "aqlm", "eetq", "torchao", "hqq"}


def prepare_model_for_kbit_training(
    model: nn.Module,
    use_gradient_checkpointing: bool = True,
    gradient_checkpointing_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Freeze ``model``, upcast its unquantized fp16/bf16 parameters (norms, embeddings, head) to fp32,
    and, for a quantized model, make the input embeddings require grad and turn on gradient checkpointing.

    Returns ``model`` itself. Call it before :func:`peftkit.get_peft_model`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"prepare_model_for_kbit_training expects a torch model, got {type(model).__name__}")
    checkpoint = use_gradient_checkpointing and _is_quantized(model)
    if checkpoint:
        _check_checkpointing(model)  # before changing anything, so a refusal leaves the model as it was
    model.requires_grad_(False)
    if _quant_method(model) not in _KEEP_DTYPE_METHODS:
        for param in model.parameters():
            if param.dtype in (torch.float16, torch.bfloat16) and not _is_quantized_param(param):
                # Small parameters trained or accumulated in half precision lose too much; fp32 is cheap for them.
                param.data = param.data.to(torch.float32)
    if checkpoint:
        _enable_input_grads(model)
        kwargs = None if gradient_checkpointing_kwargs is None else dict(gradient_checkpointing_kwargs)
        hf_model: Any = model  # a transformers model: _check_checkpointing found one of these methods
        if hasattr(hf_model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            hf_model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model


def _quant_method(model: nn.Module) -> str | None:
    method = getattr(model, "quantization_method", None)
    if method is None:
        quantizer = getattr(model, "hf_quantizer", None)
        method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if method is None and getattr(model, "hqq_quantized", False):
        method = "hqq"
    return None if method is None else str(getattr(method, "value", method)).lower()


def _is_quantized_param(param: torch.Tensor) -> bool:
    # bitsandbytes' 4-bit storage may use a float dtype (quant_storage=bfloat16) but holds packed data.
    return hasattr(param, "quant_state") or type(param).__name__ in ("Params4bit", "Int8Params")


def _is_quantized(model: nn.Module) -> bool:
    if getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False):
        return True
    if _quant_method(model) is not None:
        return True
    return any(_is_quantized_param(p) or not p.is_floating_point() for p in model.parameters())


def _check_checkpointing(model: nn.Module) -> None:
    can = hasattr(model, "activation_checkpointing_enable") or hasattr(model, "gradient_checkpointing_enable")
    if not can or not getattr(model, "supports_gradient_checkpointing", True):
        raise ValueError(
            f"{type(model).__name__} does not support gradient checkpointing; call "
            "prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)"
        )


def _enable_input_grads(model: Any) -> None:
    """Checkpointed blocks recompute from their inputs, so the frozen embeddings' output must carry grad."""
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
        return

    def require_grad(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        output.requires_grad_(True)

    model.get_input_embeddings().register_forward_hook(require_grad)

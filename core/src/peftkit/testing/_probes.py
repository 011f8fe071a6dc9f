"""Small model probes the conformance suite uses: outputs, parameters by kind, gradient flags."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from peftkit.layer import AdapterLayer, ModulesToSave
from peftkit.testing.models import make_model


def _run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def _cast_input(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype) if x.is_floating_point() else x


def _supported_low_precision(model_name: str, x: torch.Tensor) -> list[torch.dtype]:
    """bf16 always; fp16 too where this CPU build runs the base model's ops in it."""
    dtypes = [torch.bfloat16]
    try:
        _run(make_model(model_name).to(torch.float16), _cast_input(x, torch.float16))
    except (RuntimeError, NotImplementedError):
        return dtypes
    return [*dtypes, torch.float16]


def _adapter_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (AdapterLayer, ModulesToSave))]


def _copy_param_names(model: nn.Module) -> Iterator[str]:
    for path, module in model.named_modules():
        if isinstance(module, ModulesToSave):
            for name, _ in module.modules_to_save.named_parameters():
                yield f"{path}.modules_to_save.{name}"


def _base_params(model: nn.Module, is_adapter: Any) -> list[tuple[str, nn.Parameter]]:
    """The parameters of the model being adapted: neither adapter tensors nor module copies."""
    copies = set(_copy_param_names(model))
    return [(n, p) for n, p in model.named_parameters() if not is_adapter(n) and n not in copies]


def _assert_grad(model: nn.Module, adapter: str, expected: bool) -> None:
    params = {
        n: p.requires_grad
        for n, p in model.named_parameters()
        if adapter in n.split(".") and p.is_floating_point()
    }
    assert params, f"adapter {adapter!r} has no parameters"
    wrong = sorted(n for n, flag in params.items() if flag != expected)
    assert not wrong, f"adapter {adapter!r}: expected requires_grad={expected}, but not for {wrong}"


def _expect_grad_change(model: nn.Module, call: Any, adapter: str | None, expected: bool | None) -> None:
    """Run ``call``; only ``adapter``'s parameters may change requires_grad, and they must end at ``expected``."""
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    call()
    after = {n: p.requires_grad for n, p in model.named_parameters()}
    changed = sorted(n for n in after if after[n] != before.get(n))
    outside = [n for n in changed if adapter is None or adapter not in n.split(".")]
    assert not outside, f"requires_grad changed on parameters it should not touch: {outside}"
    if adapter is not None:
        _assert_grad(model, adapter, bool(expected))

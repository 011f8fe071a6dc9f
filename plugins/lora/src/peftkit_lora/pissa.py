"""Inits that start LoRA from the base weight (PiSSA, OLoRA), and saving such an adapter as plain LoRA.

PiSSA puts the top-``r`` singular directions of ``W`` into the adapter (``B = U sqrt(S/s)``,
``A = sqrt(S/s) Vh``) and OLoRA the first ``r`` columns / rows of its QR decomposition; both then
leave the residual ``W - s*B@A`` as the base weight, so the model's output is unchanged at init but
the base model is not. After training, ``W_res + s*B@A = W + s*(B@A - B0@A0)``: the adapter with
``A' = [A; A0]`` and ``B' = [B, -B0]`` (rank ``2r``, alpha doubled so the scaling stays) applies to
the original ``W``. That is what :func:`convert_for_initial_model` writes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch

_NITER = re.compile(r"pissa_niter_(\d+)\Z")
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def check_supported(layers: Sequence[Any], init: str) -> None:
    """Refuse, before any base weight changes, layers whose weight these inits cannot decompose."""
    for layer in layers:
        view = layer.view
        where = layer.path or type(view.module).__name__
        if view.kind != "linear":
            raise ValueError(
                f"init_lora_weights={init!r} works on linear layers (nn.Linear, GPT-2 Conv1D) only, "
                f"but {where} is a {view.layer_type}; leave it out of target_modules"
            )
        if view.weight_dtype not in _FLOATS:
            raise TypeError(
                f"init_lora_weights={init!r} needs a float32/float16/bfloat16 base weight; {where} holds "
                f"{view.weight_dtype}. Initialise on the unquantized model, then quantize the residual"
            )


def init_from_base(layer: Any, name: str, init: str) -> None:
    """Fill adapter ``name``'s A and B from the base weight and leave the residual in the base layer."""
    view = layer.view
    r, scaling = layer.r[name], layer.scaling[name]
    weight = view.read_weight().float()
    with torch.no_grad():
        if init.lower() == "olora":
            Q, R = torch.linalg.qr(weight)
            B, A = Q[:, :r], R[:r]
        else:
            match = _NITER.match(init)
            if match:
                U, S, V = torch.svd_lowrank(weight, q=r, niter=int(match.group(1)))
                Vh = V.T
            else:
                U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
            root = torch.sqrt(S[:r] / scaling)
            B, A = U[:, :r] * root, root[:, None] * Vh[:r]
        layer.lora_A[name].weight.data = A.contiguous().to(layer.lora_A[name].weight.dtype)
        layer.lora_B[name].weight.data = B.contiguous().to(layer.lora_B[name].weight.dtype)
        view.write_weight(weight - scaling * (B @ A))


def convert_for_initial_model(
    peft_model: Any, adapter_name: str, config: Any, tensors: dict[str, torch.Tensor], initial_path: Any
) -> tuple[Any, dict[str, torch.Tensor]]:
    """The plain LoRA adapter (config and tensors) equal to ``adapter_name`` applied on the original base model.

    ``initial_path`` is the folder the adapter was saved to right after its PiSSA/OLoRA init.
    """
    from peftkit.checkpoint import load_tensors

    if config.use_rslora and (config.rank_pattern or config.alpha_pattern):
        raise ValueError(
            "path_initial_model_for_weight_conversion cannot keep the scaling when use_rslora=True is combined "
            "with rank_pattern/alpha_pattern; the adapter was not saved"
        )
    if config.use_dora:
        raise ValueError(
            "a DoRA adapter cannot be converted for the initial model (its magnitude is not additive)"
        )
    initial, _ = load_tensors(_folder(initial_path))
    converted = dict(tensors)
    for key, value in tensors.items():
        leaf = key.rsplit(".", 2)[-2:]
        if leaf not in (["lora_A", "weight"], ["lora_B", "weight"]):
            continue
        start = initial.get(key)
        if start is None or start.shape != value.shape:
            found = None if start is None else tuple(start.shape)
            raise ValueError(
                f"{initial_path}: the initial adapter has {found} for {key}, the trained one {tuple(value.shape)}; "
                "pass the folder saved right after get_peft_model, before training"
            )
        start = start.to(value)
        if leaf[0] == "lora_A":
            converted[key] = torch.cat([value, start], dim=0)
        else:
            converted[key] = torch.cat([value, -start], dim=1)
    alpha_factor = math.sqrt(2) if config.use_rslora else 2
    new_config = config.replace(
        init_lora_weights=True,
        r=2 * config.r,
        lora_alpha=config.lora_alpha * alpha_factor,
        rank_pattern={k: 2 * v for k, v in config.rank_pattern.items()},
        alpha_pattern={k: 2 * v for k, v in config.alpha_pattern.items()},
    )
    return new_config, converted


def _folder(path: Any) -> str:
    import os

    folder = os.fspath(path)
    if not os.path.isdir(folder):
        raise ValueError(
            f"path_initial_model_for_weight_conversion={folder!r} is not a folder; save the adapter there "
            "right after get_peft_model (before training) with model.save_pretrained(path)"
        )
    return folder

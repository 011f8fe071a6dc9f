"""Loading an adapter without risk: shapes checked before allocating, everything undone on failure.

A config is a stranger's text: ``r=2**20`` over weights saved with ``r=8`` would make the real
build allocate gigabytes before the shape check refuses it. So the adapter is first built on the
meta device (no memory), its tensors compared with the checkpoint, and thrown away; only then is
it built for real. Whatever fails, the model is left as it was.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from peftkit import _injection, _state_dict

if TYPE_CHECKING:
    from peftkit.peft_model import PeftModel


def _discard(owner: nn.Module, name: str) -> None:
    """Take adapter ``name``, which the failed call added, out of ``owner`` (a PeftModel or a plain model)."""
    configs = getattr(owner, "peft_config", None)
    if isinstance(configs, dict) and hasattr(owner, "get_base_model"):
        peft_model = cast("PeftModel", owner)  # for the type only: peft_model is a layer above
        _injection.remove_adapter_layers(peft_model.get_base_model(), name)
        if name in configs:
            peft_model._drop_model_level(peft_model.method_for(name), name)
            del configs[name]
    else:
        _injection.remove_adapter_layers(owner, name)


@contextmanager
def restored_on_error(owner: nn.Module, name: str) -> Iterator[None]:
    """On any error inside, remove adapter ``name`` again and restore every ``requires_grad`` flag of ``owner``.

    The caller has checked that ``name`` was free, so only what this call added is removed.
    """
    flags = {param: param.requires_grad for param in owner.parameters()}
    try:
        yield
    except BaseException:
        _discard(owner, name)
        for param, flag in flags.items():
            param.requires_grad_(flag)
        raise


def check_shapes_on_meta(
    build: Callable[[bool], Any],
    owner: nn.Module,
    name: str,
    tensors: dict[str, torch.Tensor],
    ignore_mismatched_sizes: bool = False,
) -> None:
    """Build adapter ``name`` on the meta device and check ``tensors`` against it; then remove it again.

    ``build(meta)`` adds the adapter and returns the PeftModel holding it; with ``meta`` true it must
    leave the new tensors where they are made (``low_cpu_mem_usage``), not move them to the base's device.

    Raises the loader's ``CheckpointError`` (missing tensors, shapes, the config fields to check)
    before anything is allocated. A method whose adapter cannot be built on the meta device is
    checked by the real load instead, after its build.
    """
    flags = {param: param.requires_grad for param in owner.parameters()}
    try:
        try:
            with torch.device("meta"):
                probe = build(True)
        except Exception:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the real load gives the warnings (skipped tensors) once
            _state_dict.check_adapter_state(probe, name, tensors, ignore_mismatched_sizes)
    finally:
        _discard(owner, name)
        for param, flag in flags.items():
            param.requires_grad_(flag)

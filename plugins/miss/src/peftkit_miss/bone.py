"""Bone, MiSS's former name: read Bone adapter folders as MiSS and convert them on disk.

Bone (peft_type ``"BONE"``) stored the same block under ``bone_block`` with the same shapes and
math as MiSS balance (``init_weights`` True/False) and bat (``"bat"``); it had no dropout and no
mini variant. Reading one as MiSS therefore renames the tensors and the PEFT type, and adds the
MiSS fields Bone lacked at their defaults.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from typing import Any

from peftkit import CheckpointError

BONE_TYPE = "BONE"
MISS_TYPE = "MISS"
_MISS_DEFAULTS = {"miss_dropout": 0.0, "mini_r": 1}


class BoneConversionError(CheckpointError):
    """A folder given to ``bone-to-miss`` is not a Bone adapter, or the output cannot be written."""


def is_bone(config: dict[str, Any]) -> bool:
    return str(config.get("peft_type", "")).upper() == BONE_TYPE


def bone_config_to_miss(config: dict[str, Any]) -> dict[str, Any]:
    """The MiSS config dict for a Bone config dict (same fields, MiSS type, MiSS-only fields at defaults)."""
    out = {**_MISS_DEFAULTS, **config, "peft_type": MISS_TYPE}
    return out


def bone_tensors_to_miss(tensors: dict[str, Any]) -> dict[str, Any]:
    """Tensors with every ``bone_block`` key segment renamed ``miss_block``; other keys unchanged."""
    return {
        ".".join("miss_block" if part == "bone_block" else part for part in key.split(".")): value
        for key, value in tensors.items()
    }


def translate(
    config: dict[str, Any], tensors: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(config, tensors)`` of a Bone checkpoint rewritten as MiSS, with one warning; None for anything else."""
    if not is_bone(config):
        return None
    warnings.warn(
        "this adapter was saved as Bone (peft_type 'BONE'); Bone is MiSS's former name and it is read as MiSS "
        "with identical outputs. Rewrite the folder once with `peftkit convert bone-to-miss IN OUT`",
        stacklevel=2,
    )
    return bone_config_to_miss(config), bone_tensors_to_miss(tensors)


def convert_bone_to_miss(in_dir: str, out_dir: str) -> None:
    """Write the Bone adapter folder ``in_dir`` (and its per-adapter sub-folders) as MiSS into ``out_dir``.

    ``out_dir`` must not exist or be empty. Everything is written into a temporary folder beside it
    and renamed into place at the end, so a failure never leaves a half-written ``out_dir``.
    """
    in_dir, out_dir = os.path.abspath(os.fspath(in_dir)), os.path.abspath(os.fspath(out_dir))
    if not os.path.isdir(in_dir):
        raise BoneConversionError(f"{in_dir!r} is not a folder; pass the Bone adapter folder to convert")
    if os.path.commonpath([in_dir, out_dir]) in (in_dir, out_dir):
        raise BoneConversionError(
            f"the output {out_dir!r} must be a separate folder, not inside or around {in_dir!r}"
        )
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise BoneConversionError(
            f"{out_dir!r} already exists and is not an empty folder; choose a new output path"
        )
    adapters = _adapter_folders(in_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".peftkit-bone-to-miss-", dir=parent)
    try:
        for relative in adapters:
            _convert_one(os.path.join(in_dir, relative), os.path.join(staging, relative))
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above); rename cannot replace it on every platform
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _adapter_folders(in_dir: str) -> list[str]:
    """Relative paths of the Bone adapters in ``in_dir``: itself and/or its per-adapter sub-folders."""
    from peftkit.checkpoint import CONFIG_NAME

    found = []
    if os.path.isfile(os.path.join(in_dir, CONFIG_NAME)):
        found.append("")
    for entry in sorted(os.listdir(in_dir)):
        if os.path.isfile(os.path.join(in_dir, entry, CONFIG_NAME)):
            found.append(entry)
    if not found:
        raise BoneConversionError(
            f"{in_dir!r} holds no adapter_config.json (nor do its sub-folders); is it an adapter folder?"
        )
    return found


def _convert_one(src: str, dst: str) -> None:
    from safetensors.torch import save_file

    from peftkit import ConfigError
    from peftkit.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_tensors, read_config_dict
    from peftkit_miss.config import MissConfig

    config = read_config_dict(src)
    if not is_bone(config):
        raise BoneConversionError(
            f"{src!r} has peft_type {config.get('peft_type')!r}, not 'BONE'; only Bone adapters can be converted"
        )
    miss = bone_config_to_miss(config)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unknown keys are kept on disk, as written
            MissConfig.from_dict(miss)
    except (ConfigError, TypeError) as exc:
        raise BoneConversionError(f"{src}: the Bone config is not valid as MiSS: {exc}") from None
    tensors, _ = load_tensors(src)
    os.makedirs(dst, exist_ok=True)
    plain = {key: value.detach().contiguous() for key, value in bone_tensors_to_miss(tensors).items()}
    save_file(plain, os.path.join(dst, WEIGHTS_NAME), metadata={"format": "pt"})
    with open(os.path.join(dst, CONFIG_NAME), "w", encoding="utf-8") as fh:
        fh.write(json.dumps(miss, indent=2, sort_keys=True) + "\n")

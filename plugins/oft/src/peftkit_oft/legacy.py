"""Recognising OFT checkpoints written in Hugging Face PEFT's retired formats, to refuse them clearly.

OFT changed its on-disk format twice in Hugging Face PEFT. Up to PEFT 0.13 the config had no
``oft_block_size``; up to PEFT 0.15 each layer stored full ``(r, b, b)`` matrices named ``oft_r``.
Current checkpoints store ``oft_R.weight``: the strict upper triangle of each block's
skew-symmetric generator. Old weights parameterise a different rotation, so loading them as if
they were current would silently compute something else.
"""

from __future__ import annotations

from typing import Any

_RETRAIN = (
    "retrain the adapter with a current Hugging Face PEFT (>= 0.16) or peftkit, or load it with the "
    "version that wrote it"
)


def check_config_dict(data: dict[str, Any]) -> None:
    """Raise ``ConfigError`` when an OFT config dict predates ``oft_block_size`` (Hugging Face PEFT <= 0.13)."""
    from peftkit import ConfigError

    if "oft_block_size" not in data:
        raise ConfigError(
            "this OFT adapter config has no 'oft_block_size': it was written by Hugging Face PEFT 0.13 or "
            "older, whose OFT weights use a retired parameterisation that cannot be converted; " + _RETRAIN
        )


def check_checkpoint(config: dict[str, Any], tensors: dict[str, Any]) -> None:
    """Raise when an OFT adapter folder is in a retired format; any other checkpoint passes untouched."""
    if str(config.get("peft_type", "")).upper() != "OFT":
        return
    check_config_dict(config)
    old = [key for key in tensors if "oft_r" in key.split(".")]
    if old:
        from peftkit import CheckpointError

        raise CheckpointError(
            f"this OFT checkpoint stores full rotation matrices under 'oft_r' (e.g. {old[0]!r}): it was "
            "written by Hugging Face PEFT 0.15 or older. OFT now stores the upper triangle of each block's "
            "skew-symmetric generator as 'oft_R.weight', and the old weights cannot be converted; " + _RETRAIN
        )

"""One adapter folder: written atomically, read with every check done before the model is touched."""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from peftkit import _io, _state_dict
from peftkit._config import CONFIG_NAME, ConfigError, PeftConfig, config_from_dict, read_config_dict

DIGEST_KEY = "peftkit_config_digest"
# The new config, complete on disk before the weights are replaced; renamed into place last.
PENDING_CONFIG = ".peftkit-pending-" + CONFIG_NAME
# Descriptive fields a user may edit by hand without changing what the tensors mean.
_UNDIGESTED = ("base_model_name_or_path", "revision", "inference_mode", "peft_version", "auto_mapping")


def _digest(config: dict[str, Any]) -> str:
    """A short hash of the config fields that give the saved tensors their meaning."""
    kept = {k: v for k, v in config.items() if k not in _UNDIGESTED}
    return _io.config_digest(json.dumps(kept, sort_keys=True))


def save_adapter(peft_model: Any, name: str, folder: str, transform: Any = None) -> None:
    """Write adapter ``name`` into ``folder``: weights first, then the config they were saved with.

    ``transform(config, tensors) -> (config, tensors)``, when given, rewrites both before anything is written.

    Every file is written to a temporary name and renamed into place, and the weights carry a
    digest of their config. The new config is written completely (as ``PENDING_CONFIG``) before
    the weights are replaced, and renamed over ``adapter_config.json`` last: a save killed at any
    point leaves either the previous pair, or the new weights with their config still pending,
    which ``read_adapter`` recognises by the digest and loads. Never a mix of the two.
    """
    config = peft_model.peft_config[name].replace(inference_mode=True)
    tensors = _state_dict.adapter_state_dict(peft_model, name)
    if transform is not None:
        config, tensors = transform(config, tensors)
    os.makedirs(folder, exist_ok=True)
    text = config.to_json()
    metadata = {"format": "pt", DIGEST_KEY: _digest(config.to_dict())}
    pending = os.path.join(folder, PENDING_CONFIG)
    _io.write_text_atomic(pending, text)
    _io.save_tensors_atomic(tensors, os.path.join(folder, _io.WEIGHTS_NAME), metadata)
    os.replace(pending, os.path.join(folder, CONFIG_NAME))


def resolve_folder(model_id: str | os.PathLike[str], subfolder: str | None = None, **hub_kwargs: Any) -> str:
    """A local adapter folder for ``model_id``: a path, or a Hub repo id resolved through the local cache."""
    path = os.fspath(model_id)
    if subfolder:
        path = os.path.join(path, subfolder)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise _io.CheckpointError(f"{path!r} is a file; pass the adapter folder that contains it")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            os.fspath(model_id), allow_patterns=["*.json", "*.safetensors"], **hub_kwargs
        )
    except Exception as exc:
        raise _io.CheckpointError(
            f"{path!r} is not a folder and could not be resolved as a Hugging Face Hub repo "
            f"({type(exc).__name__}: {exc})"
        ) from None
    return os.path.join(local, subfolder) if subfolder else local


def read_adapter(
    model_id: str | os.PathLike[str],
    config: PeftConfig | None = None,
    subfolder: str | None = None,
    **hub_kwargs: Any,
) -> tuple[PeftConfig, dict[str, torch.Tensor]]:
    """The config and tensors of a saved adapter, legacy formats translated by the plugins."""
    from peftkit._plugins import plugin_manager

    folder = resolve_folder(model_id, subfolder, **hub_kwargs)
    raw = read_config_dict(folder) if config is None else config.to_dict()
    tensors, metadata = _io.load_tensors(folder)
    digest = metadata.get(DIGEST_KEY)
    if config is None and digest is not None and _digest(raw) != digest:
        raw = _interrupted_save(folder, digest) or raw
    on_disk = dict(raw)
    translated = plugin_manager().hook.peftkit_translate_checkpoint(config=raw, tensors=tensors)
    if translated is not None:
        raw, tensors = translated
    loaded = config if config is not None and translated is None else config_from_dict(raw)
    if not isinstance(loaded, PeftConfig):
        raise TypeError(f"config must be a peftkit config, got {type(loaded).__name__}")
    # Checked after the config is understood, so an unknown peft_type is reported as such.
    if config is None and digest is not None and _digest(on_disk) != digest:
        raise _io.CheckpointError(
            f"{folder}: {CONFIG_NAME} does not match adapter_model.safetensors (a setting that shapes the "
            "weights was edited, or a save was interrupted between the two files); save the adapter again, "
            "or pass config=... to load it with a config you trust"
        )
    return loaded, tensors


def _interrupted_save(folder: str, digest: str) -> dict[str, Any] | None:
    """The config of a save killed after replacing the weights, if it is the one they were saved with."""
    pending = os.path.join(folder, PENDING_CONFIG)
    if not os.path.isfile(pending):
        return None
    try:
        data = read_config_dict(pending)
    except ConfigError:
        return None
    return data if _digest(data) == digest else None

"""One adapter folder: written atomically, read with every check done before the model is touched."""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from peftkit import _io, _state_dict
from peftkit._api import config_from_dict
from peftkit._config import (
    CONFIG_NAME,
    DESCRIPTIVE_FIELDS,
    ConfigError,
    PeftConfig,
    config_dict_from_bytes,
    read_config_dict,
)

# The weights' metadata pairs them with their config: a digest of the whole config (every field but
# the descriptive ones, as peftkit 0.1 computed it, so both versions read each other's adapters),
# and the values of the fields that shape the weights, so a hand edit can be told from a harmless one.
DIGEST_KEY = "peftkit_config_digest"
SHAPING_KEY = "peftkit_shaping_fields"
# The new config, complete on disk before the weights are replaced; renamed into place last. Named
# after its digest, so concurrent or killed saves never take each other's pending file.
PENDING_PREFIX = ".peftkit-pending-"
_OLD_PENDING = PENDING_PREFIX + CONFIG_NAME  # peftkit 0.1's single pending name, still recognised
_READ_ATTEMPTS = 3
_SHOWN_CHARS = 60


def _digest(config: dict[str, Any]) -> str:
    """A short hash of every config field but the descriptive ones: which config the weights were saved with."""
    kept = {k: v for k, v in config.items() if k not in DESCRIPTIVE_FIELDS}
    return _io.config_digest(json.dumps(kept, sort_keys=True))


def _shaping_values(config: PeftConfig) -> str:
    """The config's shaping fields and their values as JSON, recorded beside the weights."""
    data = config.to_dict()
    return json.dumps({name: data[name] for name in config.shaping_fields()}, sort_keys=True)


def _pending_name(digest: str) -> str:
    return f"{PENDING_PREFIX}{digest}.json"


def save_adapter(peft_model: Any, name: str, folder: str, transform: Any = None) -> None:
    """Write adapter ``name`` into ``folder``: weights first, then the config they were saved with.

    ``transform(config, tensors) -> (config, tensors)``, when given, rewrites both before anything is written.

    Every file is written to a temporary name and renamed into place, and the weights carry a
    digest of their config and the values of its shaping fields (so that a hand edit of any other
    field, see ``PeftConfig.NON_SHAPING_FIELDS``, still loads). The new config is written
    completely (as a pending file named after its digest) before the weights are replaced, and
    renamed over ``adapter_config.json`` last: a save killed at any point leaves either the
    previous pair, or the new weights with their config still pending, which ``read_adapter``
    recognises by the digest and loads. Never a mix of the two. Saves to one folder hold its lock,
    so concurrent ones take turns; each removes what killed saves left behind (temporary files,
    pending configs of older saves) once its own pair is in place.
    """
    config = peft_model.peft_config[name].replace(inference_mode=True)
    tensors = _state_dict.adapter_state_dict(peft_model, name)
    if transform is not None:
        config, tensors = transform(config, tensors)
    write_adapter_folder(folder, config, tensors)


def write_adapter_folder(folder: str, config: PeftConfig, tensors: dict[str, torch.Tensor]) -> None:
    """Write one adapter, ``config`` and its on-disk ``tensors``, into ``folder`` as ``save_pretrained`` does.

    Atomic and locked as described in :func:`save_adapter`, with the digest and shaping-field
    metadata that let a later load tell a hand edit from a harmless one. Public as
    ``peftkit.checkpoint.write_adapter_folder`` for converters, which build the config and tensors
    themselves.
    """
    os.makedirs(folder, exist_ok=True)
    text = config.to_json()
    digest = _digest(config.to_dict())
    metadata = {"format": "pt", DIGEST_KEY: digest, SHAPING_KEY: _shaping_values(config)}
    pending = os.path.join(folder, _pending_name(digest))
    with _io.folder_lock(folder):
        _io.remove_leftovers(folder, (_io.TMP_GLOB,))
        _io.write_text_atomic(pending, text)
        _io.save_tensors_atomic(tensors, os.path.join(folder, _io.WEIGHTS_NAME), metadata)
        os.replace(pending, os.path.join(folder, CONFIG_NAME))
        _io.remove_leftovers(folder, (PENDING_PREFIX + "*",))


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
    allow_nonfinite: bool = False,
    **hub_kwargs: Any,
) -> tuple[PeftConfig, dict[str, torch.Tensor]]:
    """The config and tensors of a saved adapter, legacy formats translated by the plugins.

    Config and weights come from one consistent snapshot of the folder, even while another process
    saves into it: the weights file is read in one go and the config is read again afterwards; if
    it changed meanwhile, the read starts over (a clear "changed while reading" error after three
    tries). Tensors holding NaN or inf are refused unless ``allow_nonfinite``.
    """
    folder = resolve_folder(model_id, subfolder, **hub_kwargs)
    for _ in range(_READ_ATTEMPTS):
        snapshot = _read_snapshot(folder, config)
        if snapshot is not None:
            raw, tensors, metadata = snapshot
            break
    else:
        raise _io.CheckpointError(
            f"{folder}: the adapter changed while it was being read (another process is saving into it); "
            "load it again once the save has finished"
        )
    loaded, tensors = _understood(folder, config, raw, tensors, metadata)
    if not allow_nonfinite:
        _check_finite(folder, tensors)
    return loaded, tensors


def _read_snapshot(
    folder: str, config: PeftConfig | None
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, str]] | None:
    """``(config dict, tensors, metadata)`` read consistently, or None when a save changed the folder meanwhile."""
    config_file = os.path.join(folder, CONFIG_NAME)
    if config is not None:
        return (config.to_dict(), *_io.load_tensors(folder))
    if not os.path.isfile(config_file):
        read_config_dict(folder)  # raises the "not an adapter folder" error
    before = _io.read_bytes(config_file)
    tensors, metadata = _io.load_tensors(folder)
    after = _io.read_bytes(config_file)
    if after != before:
        return None
    raw = config_dict_from_bytes(after, config_file)
    digest = metadata.get(DIGEST_KEY)
    if digest is not None and _digest(raw) != digest:
        pending = _interrupted_save(folder, digest)
        if pending is None and _io.read_bytes(config_file) != after:
            return None  # a save renamed its config in meanwhile: read the new pair
        raw = pending or raw
    return raw, tensors, metadata


def _understood(
    folder: str,
    config: PeftConfig | None,
    raw: dict[str, Any],
    tensors: dict[str, Any],
    metadata: dict[str, str],
) -> tuple[PeftConfig, dict[str, torch.Tensor]]:
    """The config as a peftkit config (legacy formats translated by the plugins), checked against the weights'."""
    from peftkit._plugins import first_answer

    on_disk = dict(raw)
    translated = first_answer(
        "peftkit_translate_checkpoint",
        lambda answer: isinstance(answer, tuple) and len(answer) == 2 and isinstance(answer[0], dict),
        "a (config dict, tensors dict) pair",
        config=raw,
        tensors=tensors,
    )
    if translated is not None:
        raw, tensors = translated
    loaded = config if config is not None and translated is None else config_from_dict(raw)
    if not isinstance(loaded, PeftConfig):
        raise TypeError(f"config must be a peftkit config, got {type(loaded).__name__}")
    # Checked after the config is understood, so an unknown peft_type is reported as such.
    digest = metadata.get(DIGEST_KEY)
    if config is None and digest is not None and _digest(on_disk) != digest:
        _check_edits(folder, on_disk, metadata.get(SHAPING_KEY))
    return loaded, tensors


def _check_edits(folder: str, on_disk: dict[str, Any], recorded: str | None) -> None:
    """Accept a config edited since its weights were saved only if no shaping field changed; else name them."""
    saved = _recorded_values(recorded)
    if saved is None:
        raise _io.CheckpointError(
            f"{folder}: {CONFIG_NAME} does not match adapter_model.safetensors (it was edited, or a save was "
            "interrupted between the two files; the weights do not record which settings shape them, as "
            "peftkit 0.1 saved none, so any edit but a descriptive field is refused); save the adapter again, "
            "or pass config=... to load it with a config you trust"
        )
    changed = [
        f"{name}: {_brief(value)} -> {_brief(on_disk[name]) if name in on_disk else '(removed)'}"
        for name, value in sorted(saved.items())
        if name not in on_disk or on_disk[name] != value
    ]
    if changed:
        raise _io.CheckpointError(
            f"{folder}: {CONFIG_NAME} does not match adapter_model.safetensors: {'; '.join(changed)} "
            "(saved value -> value now). A setting that shapes the weights was edited, or a save was interrupted "
            "between the two files; set it back, save the adapter again, or pass config=... to load it with a "
            "config you trust"
        )


def _recorded_values(text: str | None) -> dict[str, Any] | None:
    """The shaping fields recorded in the weights' metadata; None if absent (peftkit 0.1) or unreadable."""
    if text is None:
        return None
    try:
        values = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return values if isinstance(values, dict) else None


def _brief(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= _SHOWN_CHARS else shown[: _SHOWN_CHARS - 3] + "..."


def _check_finite(folder: str, tensors: dict[str, torch.Tensor]) -> None:
    bad = [
        key for key, value in tensors.items() if value.is_floating_point() and not torch.isfinite(value).all()
    ]
    if bad:
        raise _io.CheckpointError(
            f"{folder}: {len(bad)} adapter tensor(s) hold NaN or inf, e.g. {bad[:3]}; the adapter would turn "
            "every output into NaN. Train or save it again, or pass allow_nonfinite=True to load it anyway"
        )


def _interrupted_save(folder: str, digest: str) -> dict[str, Any] | None:
    """The config of a save killed after replacing the weights, if it is the one they were saved with."""
    for name in (_pending_name(digest), _OLD_PENDING):
        pending = os.path.join(folder, name)
        if not os.path.isfile(pending):
            continue
        try:
            data = read_config_dict(pending)
        except (ConfigError, OSError):
            continue
        if _digest(data) == digest:
            return data
    return None

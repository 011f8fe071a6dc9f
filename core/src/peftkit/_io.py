"""Reading and writing adapter files: atomic writes, safetensors first, no unpickling by default."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import torch

from peftkit.errors import CheckpointError

WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"


def _write_atomic(path: str, write: Any) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".peftkit-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


TMP_GLOB = ".peftkit-*.tmp"
_HELD: set[str] = set()  # folders this process holds the lock of


@contextlib.contextmanager
def folder_lock(folder: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (an advisory ``flock`` on the directory itself, no lock file).

    peftkit saves into a folder only while holding it, so two processes saving to the same folder
    take turns (the last one wins) instead of interleaving their files. Readers never lock: each
    save keeps the folder loadable at every step. Where ``fcntl`` is missing (Windows) saves do not
    serialise.
    """
    key = os.path.realpath(folder)
    try:
        import fcntl
    except ImportError:
        yield
        return
    if key in _HELD:  # flock is per open file: this process locking the folder again would wait forever
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _HELD.add(key)
        yield
    finally:
        _HELD.discard(key)
        os.close(fd)  # closing releases the lock


def remove_leftovers(folder: str, patterns: tuple[str, ...]) -> None:
    """Delete files a killed save left in ``folder`` (call while holding :func:`folder_lock`)."""
    for pattern in patterns:
        for path in glob.glob(os.path.join(glob.escape(folder), pattern)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def read_bytes(path: str) -> bytes:
    """The whole file from one open: a save renaming a new file over ``path`` meanwhile cannot mix in."""
    with open(path, "rb") as fh:
        return fh.read()


def write_text_atomic(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    _write_atomic(path, write)


def config_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def save_tensors_atomic(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
    """Save contiguous, unshared copies as safetensors, atomically."""
    from safetensors.torch import save_file

    plain = {k: v.detach().contiguous() for k, v in tensors.items()}
    _write_atomic(path, lambda tmp: save_file(plain, tmp, metadata=metadata))


def load_tensors(
    folder: str, weights_only_bin: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of an adapter folder; a damaged file is a ``CheckpointError``."""
    file = os.path.join(folder, WEIGHTS_NAME)
    if os.path.isfile(file):
        return _load_safetensors(file)
    legacy = os.path.join(folder, LEGACY_WEIGHTS_NAME)
    if os.path.isfile(legacy):
        try:
            # weights_only=True: a pickle from a stranger may load tensors but never run code.
            loaded = torch.load(legacy, map_location="cpu", weights_only=weights_only_bin)
        except Exception as exc:
            raise CheckpointError(
                f"{legacy} could not be read safely ({type(exc).__name__}: {_pickle_reason(exc)}); peftkit "
                "never runs code from a pickle: convert it to adapter_model.safetensors with a tool you trust"
            ) from None
        if not isinstance(loaded, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
        ):
            raise CheckpointError(f"{legacy} does not hold a dict of named tensors")
        return loaded, {}
    raise CheckpointError(f"no {WEIGHTS_NAME} (or {LEGACY_WEIGHTS_NAME}) in {folder!r}")


def _pickle_reason(exc: Exception) -> str:
    """The line of torch's long weights-only refusal that says what the pickle asked for."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    found = [line for line in lines if line.startswith("WeightsUnpickler error")]
    return (found or lines or [""])[0]


def _load_safetensors(file: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata parsed from one read of ``file``, so both come from the same save."""
    import json
    import struct

    from safetensors.torch import load

    data = read_bytes(file)
    try:
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + size])
        metadata = header.get("__metadata__") or {}
        tensors = load(data)
    except Exception as exc:
        raise CheckpointError(
            f"{file} is not a readable safetensors file ({type(exc).__name__}: {exc}); "
            "it may be truncated or corrupt - save the adapter again"
        ) from None
    return tensors, metadata

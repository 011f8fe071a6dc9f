"""The keyword arguments of ``from_pretrained`` / ``load_adapter`` beyond the named ones: sorted, checked, refused.

Hugging Face PEFT passes unknown keywords on to the Hub download or drops them; peftkit names every
keyword it does not act on instead, so an option that would change the result is never silently
lost. PEFT's options that peftkit does not implement are accepted at their default value only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

# Passed to huggingface_hub.snapshot_download for a Hub id (unused for a local folder, as in PEFT).
HUB_KEYWORDS = frozenset(
    {
        "revision",
        "cache_dir",
        "token",
        "force_download",
        "local_files_only",
        "etag_timeout",
        "user_agent",
        "endpoint",
        "repo_type",
        "headers",
        "local_dir",
        "max_workers",
        "library_name",
        "library_version",
    }
)
# Understood by peftkit's adapter reader itself.
READER_KEYWORDS = frozenset({"subfolder", "allow_nonfinite"})

# PEFT's options that peftkit does not implement -> (their default, what to do instead).
NOT_IMPLEMENTED: dict[str, tuple[Any, str]] = {
    "ephemeral_gpu_offload": (False, "peftkit does not offload adapter weights; leave it False"),
    "key_mapping": (
        None,
        "rename the checkpoint's keys beforehand (load it with safetensors, rename, save) and load the result",
    ),
    "device_map": (
        None,
        "peftkit does not dispatch models over several devices or offload them; place the base model "
        "before loading (a device_map naming one device is accepted: adapter weights follow the base layers)",
    ),
    "max_memory": (None, "peftkit does not dispatch offloaded models; place the base model before loading"),
    "offload_folder": (None, "peftkit does not offload to disk; load the base model without disk offload"),
    "offload_dir": (None, "peftkit does not offload to disk; load the base model without disk offload"),
    "offload_index": (None, "peftkit does not offload to disk; load the base model without disk offload"),
    "use_safetensors": (
        True,
        "peftkit reads adapter_model.safetensors, and a legacy adapter_model.bin only where no "
        ".safetensors file exists; leave it True",
    ),
}


@dataclass
class LoadOptions:
    """What the extra keywords of one load call asked for."""

    #: Keywords for ``_saving.read_adapter``, Hub download options included.
    reader: dict[str, Any] = field(default_factory=dict)
    torch_device: torch.device | None = None


def split_load_kwargs(caller: str, kwargs: dict[str, Any]) -> LoadOptions:
    """Sort ``caller``'s extra keywords; raise TypeError naming any that peftkit would otherwise ignore."""
    options = LoadOptions()
    for key, value in kwargs.items():
        if key in HUB_KEYWORDS or key in READER_KEYWORDS:
            options.reader[key] = value
        elif key == "use_auth_token":  # PEFT's older spelling of ``token``
            options.reader.setdefault("token", value)
        elif key == "torch_device":
            options.torch_device = _device(caller, value)
        elif key == "device_map" and _single_device(value):
            pass  # every adapter tensor goes to its base layer's device anyway
        elif key in NOT_IMPLEMENTED:
            default, instead = NOT_IMPLEMENTED[key]
            if value != default:
                raise TypeError(
                    f"{caller}({key}={value!r}) is a Hugging Face PEFT option that peftkit does not implement: "
                    f"{instead}. Nothing was loaded"
                )
        else:
            raise TypeError(
                f"{caller}() got an unexpected keyword argument {key!r}; it takes the Hub download options "
                f"{', '.join(sorted(HUB_KEYWORDS))}, plus {', '.join(sorted(READER_KEYWORDS))} and torch_device"
            )
    return options


def _single_device(device_map: Any) -> bool:
    """Whether ``device_map`` puts everything on one device (``"cpu"``, ``{"": "cuda:0"}``), offloading nothing."""
    devices = set(device_map.values()) if isinstance(device_map, dict) else {device_map}
    if len(devices) != 1:
        return False
    (device,) = devices
    if device in ("disk", "meta", "auto", "balanced", "balanced_low_0", "sequential"):
        return False
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        return False
    return True


def _device(caller: str, value: Any) -> torch.device | None:
    if value is None:
        return None
    try:
        return torch.device(value)
    except (RuntimeError, TypeError) as exc:
        raise TypeError(
            f"{caller}(torch_device={value!r}) is not a torch device ({exc}); pass e.g. 'cpu' or 'cuda:0'"
        ) from None


def to_device(tensors: dict[str, torch.Tensor], device: torch.device | None) -> dict[str, torch.Tensor]:
    """The loaded tensors on ``device`` (None: where they were read), before anything in the model changes."""
    if device is None:
        return tensors
    try:
        return {key: tensor.to(device) for key, tensor in tensors.items()}
    except (RuntimeError, AssertionError) as exc:  # torch asserts when built without that device's backend
        raise RuntimeError(
            f"cannot read the adapter onto torch_device={str(device)!r} ({exc}); nothing was loaded"
        ) from None

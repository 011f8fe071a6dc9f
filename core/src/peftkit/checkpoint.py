"""The adapter folder format, for plugins and converters: file names, readers and the writer.

A converter (bone-to-miss) or an init that reads an adapter saved earlier (LoRA's PiSSA conversion)
uses these instead of the core's private modules. ``write_adapter_folder(folder, config, tensors)``
writes a folder exactly as ``save_pretrained`` does (atomically, with the digest that pairs the
weights with their config).
"""

from __future__ import annotations

from peftkit._config import CONFIG_NAME, read_config_dict
from peftkit._io import WEIGHTS_NAME, CheckpointError, load_tensors
from peftkit._saving import write_adapter_folder

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CheckpointError",
    "load_tensors",
    "read_config_dict",
    "write_adapter_folder",
]

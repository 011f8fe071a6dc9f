"""The adapter folder format, for plugins and converters: file names and readers.

A converter (bone-to-miss) or an init that reads an adapter saved earlier (LoRA's PiSSA conversion)
uses these instead of the core's private modules.
"""

from __future__ import annotations

from peftkit._config import CONFIG_NAME, read_config_dict
from peftkit._io import WEIGHTS_NAME, CheckpointError, load_tensors

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "CheckpointError", "load_tensors", "read_config_dict"]

"""What an adapter may be called: checked once, where a name enters the API.

An adapter's name becomes a key of the layers' ``ModuleDict``s, a segment of in-memory tensor
names (removed again on disk), and the sub-folder it is saved in. So it must be a single
path-free segment that cannot be mistaken for another segment of a tensor name.
"""

from __future__ import annotations

import os

# Segments of tensor names the core itself uses; an adapter called so would be confused with them.
_TENSOR_SEGMENTS = frozenset({"weight", "bias", "base_layer", "original_module", "modules_to_save"})
BASE = "__base__"  # the per-sample name for "no adapter" (peftkit._per_sample.BASE)


def check_adapter_name(name: object, method_prefix: str = "") -> str:
    """``name`` if it can name an adapter; otherwise a ``ValueError`` saying what is wrong with it.

    ``method_prefix`` (``"lora_"``) is refused as a start too: it marks the method's own tensors.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"an adapter name must be a non-empty string, got {name!r}")
    separators = {"/", "\\", ".", os.sep, *([os.altsep] if os.altsep else [])}
    bad = sorted(c for c in separators if c in name)
    if bad or "\0" in name:
        raise ValueError(
            f"adapter name {name!r} contains {bad or ['NUL']}: it becomes a tensor-name segment and a "
            "sub-folder when saved, so use letters, digits, '_' or '-' (like 'task_a')"
        )
    if name != name.strip():
        raise ValueError(f"adapter name {name!r} starts or ends with whitespace; remove it")
    if name == BASE:
        raise ValueError(f"{BASE!r} is reserved: in adapter_names it means 'no adapter' for that sample")
    if name in _TENSOR_SEGMENTS or (method_prefix and name.startswith(method_prefix)):
        raise ValueError(
            f"adapter name {name!r} would be confused with a segment of the tensor names "
            f"({', '.join(sorted(_TENSOR_SEGMENTS))}{', ' + method_prefix + '*' if method_prefix else ''}); "
            "pick another name"
        )
    return name

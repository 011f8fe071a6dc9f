"""Method options from the command line: ``--set key=value`` and ``--config FILE.json``, over per-method defaults."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from peftkit.finetune.errors import FinetuneError

# Defaults for the methods the demo is tuned for: every linear projection of each block (for a
# Llama-style model q, k, v, o, gate, up and down), a few million parameters on SmolLM2-135M.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "miss": {"r": 32, "target_modules": "all-linear"},
    "lora": {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"},
}
# MiSS measured on the built-in task (3e-4: 100% after 40 steps; 1e-3: 88%; 2e-3 diverges); LoRA untuned.
DEFAULT_LR = {"miss": 3e-4, "lora": 5e-4}
FALLBACK_LR = 1e-3


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["r=16", "init_weights=bat"]`` -> ``{"r": 16, "init_weights": "bat"}``; values are JSON when they parse as JSON."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise FinetuneError(f"--set {item!r}: write it as key=value, for example --set r=16")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text  # a bare word such as bat or q_proj
        options[key.strip()] = value
    return options


def read_config_file(path: str | None) -> dict[str, Any]:
    """The JSON object in ``path`` (method options, as in adapter_config.json), or {} for None."""
    if path is None:
        return {}
    if not os.path.isfile(path):
        raise FinetuneError(f"--config {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as fh:
            options = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FinetuneError(f"--config {path}: not valid JSON ({exc})") from None
    if not isinstance(options, dict):
        raise FinetuneError(f"--config {path}: expected a JSON object of method options")
    # Fields that describe a saved adapter, not a choice of the user, would only conflict.
    for key in ("peft_type", "peft_version", "base_model_name_or_path", "inference_mode", "auto_mapping"):
        options.pop(key, None)
    return options


def method_options(method: str, config_file: str | None, sets: Sequence[str]) -> dict[str, Any]:
    """The options for ``peftkit.config(method, ...)``: defaults, then the config file, then ``--set``."""
    return {
        **METHOD_DEFAULTS.get(method, {}),
        "task_type": "CAUSAL_LM",
        **read_config_file(config_file),
        **parse_set(sets),
    }


def learning_rate(method: str, lr: float | None) -> float:
    """``--lr`` when given, else the measured default for ``method``."""
    return lr if lr is not None else DEFAULT_LR.get(method, FALLBACK_LR)

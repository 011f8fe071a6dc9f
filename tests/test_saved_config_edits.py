"""Editing a saved ``adapter_config.json`` by hand: harmless edits load, edits that shape the weights are
refused with the field named, and adapters saved by peftkit 0.1 (every base field, a digest only) still load.

The weights' metadata carries a digest of the whole config (as peftkit 0.1 computed it) and the
values of the fields that shape the weights; see ``PeftConfig.NON_SHAPING_FIELDS``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import peftkit
from peftkit import CheckpointError, ConfigError
from peftkit.testing import make_inputs, make_model

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
# What peftkit 0.1 left out of its digest, and every base field it wrote whatever the method.
DESCRIPTIVE = ("base_model_name_or_path", "revision", "inference_mode", "peft_version", "auto_mapping")
BASE_DEFAULTS = {
    "target_modules": None,
    "exclude_modules": None,
    "layers_to_transform": None,
    "layers_pattern": None,
    "modules_to_save": None,
    "bias": "none",
}


def _save(folder: Path, method: str = "lora", **kwargs: Any) -> Any:
    model = peftkit.get_peft_model(
        make_model("mlp"), peftkit.config(method, target_modules=["lin0"], **kwargs)
    )
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.1)
    model.save_pretrained(folder)
    return model


def _edit(folder: Path, **changes: Any) -> dict[str, Any]:
    data = json.loads((folder / CONFIG).read_text())
    data.update(changes)
    (folder / CONFIG).write_text(json.dumps(data))
    return data


def _metadata(folder: Path) -> dict[str, str]:
    with safe_open(str(folder / WEIGHTS), "pt") as fh:
        return fh.metadata()


def _digest_of_01(config: dict[str, Any]) -> str:
    """peftkit 0.1's digest of a config dict, written out here so the test pins the format."""
    kept = {k: v for k, v in config.items() if k not in DESCRIPTIVE}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def _as_saved_by_01(folder: Path, **extra: Any) -> None:
    """Rewrite a save the way peftkit 0.1 wrote it: every base field in the config, only a digest beside the weights."""
    data = _edit(folder, **{**BASE_DEFAULTS, **json.loads((folder / CONFIG).read_text()), **extra})
    save_file(
        load_file(folder / WEIGHTS),
        folder / WEIGHTS,
        {"format": "pt", "peftkit_config_digest": _digest_of_01(data)},
    )


def test_editing_a_field_that_does_not_shape_the_weights_loads_and_saves_again(tmp_path: Path) -> None:
    saved = _save(tmp_path, lora_dropout=0.0)
    _edit(tmp_path, lora_dropout=0.25, base_model_name_or_path="elsewhere")
    loaded = peftkit.PeftModel.from_pretrained(make_model("mlp"), tmp_path, is_trainable=True)
    assert loaded.peft_config["default"].lora_dropout == 0.25
    inputs = make_inputs("mlp")
    loaded.eval()
    torch.testing.assert_close(loaded(inputs), saved(inputs))
    loaded.save_pretrained(tmp_path)
    again = peftkit.PeftModel.from_pretrained(make_model("mlp"), tmp_path)
    assert again.peft_config["default"].lora_dropout == 0.25


def test_an_init_flag_may_be_edited(tmp_path: Path) -> None:
    """The issue's case: an init-only flag (here VeRA's init_weights and d_initial) edited by hand."""
    _save(tmp_path, "vera", r=4, init_weights=True)
    _edit(tmp_path, init_weights=False, d_initial=0.5)
    loaded = peftkit.PeftModel.from_pretrained(make_model("mlp"), tmp_path)
    assert loaded.peft_config["default"].init_weights is False


def test_editing_a_shaping_field_names_it_with_both_values(tmp_path: Path) -> None:
    _save(tmp_path, lora_alpha=8)
    _edit(tmp_path, lora_alpha=16, lora_dropout=0.5)
    with pytest.raises(
        CheckpointError, match=r"does not match adapter_model\.safetensors: lora_alpha: 8 -> 16 \("
    ):
        peftkit.PeftModel.from_pretrained(make_model("mlp"), tmp_path)


def test_a_removed_shaping_field_is_named(tmp_path: Path) -> None:
    _save(tmp_path, use_rslora=True)
    data = json.loads((tmp_path / CONFIG).read_text())
    del data["use_rslora"]
    (tmp_path / CONFIG).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"use_rslora: True -> \(removed\)"):
        peftkit.PeftModel.from_pretrained(make_model("mlp"), tmp_path)


def test_weights_carry_the_01_digest_and_the_shaping_values(tmp_path: Path) -> None:
    """peftkit 0.1 checks the digest against the file as written, so it reads adapters saved now."""
    _save(tmp_path, r=2)
    metadata = _metadata(tmp_path)
    config = json.loads((tmp_path / CONFIG).read_text())
    assert metadata["peftkit_config_digest"] == _digest_of_01(config)
    shaping = json.loads(metadata["peftkit_shaping_fields"])
    assert shaping["r"] == 2 and shaping["target_modules"] == ["lin0"]
    assert not {"lora_dropout", *DESCRIPTIVE} & set(shaping)


def test_an_adapter_saved_by_01_still_loads(tmp_path: Path) -> None:
    """SHiRA's 0.1 files hold bias, exclude_modules and layer selection at their defaults: dropped silently."""
    saved = _save(tmp_path, "shira", r=1)
    _as_saved_by_01(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = peftkit.PeftModel.from_pretrained(make_model("mlp"), tmp_path)
    inputs = make_inputs("mlp")
    torch.testing.assert_close(loaded(inputs), saved(inputs))
    assert "bias" not in loaded.peft_config["default"].to_dict()


def test_an_01_adapter_using_a_field_its_method_lacks_is_refused(tmp_path: Path) -> None:
    _save(tmp_path, "shira", r=1)
    _as_saved_by_01(tmp_path, layers_to_transform=[0])
    with pytest.raises(
        ConfigError, match=r"ShiraConfig has no layers_to_transform field.*peftkit 0\.1 accepted"
    ):
        peftkit.PeftModel.from_pretrained(make_model("mlp"), tmp_path)


def test_an_01_adapter_edited_by_hand_is_refused_without_field_names(tmp_path: Path) -> None:
    """Its weights record no shaping values, so any edit but a descriptive one is refused, as 0.1 did."""
    _save(tmp_path, lora_dropout=0.0)
    _as_saved_by_01(tmp_path)
    _edit(tmp_path, revision="v2")
    peftkit.PeftModel.from_pretrained(make_model("mlp"), tmp_path)
    _edit(tmp_path, lora_dropout=0.25)
    with pytest.raises(
        CheckpointError, match=r"do not record which settings shape them, as peftkit 0\.1 saved none"
    ):
        peftkit.PeftModel.from_pretrained(make_model("mlp"), tmp_path)

"""OFT checkpoints in Hugging Face PEFT's retired formats are refused with an explanation, the model untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import peftkit
from peftkit.testing import make_model


def _save(tmp_path: Path, **kwargs: object) -> Path:
    config = peftkit.config("oft", target_modules=["lin0", "lin1"], oft_block_size=8, **kwargs)
    peftkit.get_peft_model(make_model("mlp"), config).save_pretrained(tmp_path)
    return tmp_path


def _edit_config(folder: Path, edit: object) -> None:
    path = folder / "adapter_config.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _untouched(model: object) -> bool:
    return not any("oft_" in name for name, _ in model.named_parameters())


def test_config_without_oft_block_size_is_refused(tmp_path: Path) -> None:
    folder = _save(tmp_path)
    _edit_config(folder, lambda data: data.pop("oft_block_size"))
    model = make_model("mlp")
    with pytest.raises(peftkit.ConfigError, match=r"no 'oft_block_size'.*PEFT 0\.13 or older.*retrain"):
        peftkit.PeftModel.from_pretrained(model, folder)
    assert _untouched(model)


def test_oft_r_tensors_are_refused(tmp_path: Path) -> None:
    folder = _save(tmp_path)
    weights = folder / "adapter_model.safetensors"
    tensors = {key.replace(".oft_R.weight", ".oft_r"): value for key, value in load_file(weights).items()}
    save_file(tensors, weights)
    model = make_model("mlp")
    with pytest.raises(
        peftkit.CheckpointError, match=r"under 'oft_r'.*PEFT 0\.15 or older.*cannot be converted"
    ):
        peftkit.PeftModel.from_pretrained(model, folder)
    assert _untouched(model)


def test_unversioned_neumann_config_warns(tmp_path: Path) -> None:
    folder = _save(tmp_path)
    _edit_config(folder, lambda data: data.pop("peft_version"))
    with pytest.warns(UserWarning, match="Cayley-Neumann parameterisation and carries no 'peft_version'"):
        peftkit.PeftModel.from_pretrained(make_model("mlp"), folder, config=None)


def test_other_methods_checkpoints_are_not_inspected(tmp_path: Path) -> None:
    """The legacy check only looks at OFT adapters: a LoRA adapter loads as before."""
    peftkit.get_peft_model(
        make_model("mlp"), peftkit.config("lora", target_modules=["lin0"])
    ).save_pretrained(tmp_path)
    peftkit.PeftModel.from_pretrained(make_model("mlp"), tmp_path)

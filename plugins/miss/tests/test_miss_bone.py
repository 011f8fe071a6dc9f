"""Bone adapter folders: read as MiSS with one warning, and converted on disk by ``bone-to-miss``."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import peftkit
from peftkit.testing import make_inputs, make_model
from peftkit_miss.bone import BoneConversionError, convert_bone_to_miss
from peftkit_miss.config import MissConfig


def write_bone_folder(folder: Path, init_weights: bool | str, r: int, seed: int = 0) -> torch.Tensor:
    """Write a Bone adapter for the tiny "mlp" model as Hugging Face PEFT's Bone did; return its expected output.

    The expected output comes from the same blocks loaded into a MiSS model, whose math Bone shares.
    """
    model = peftkit.get_peft_model(
        make_model("mlp"), MissConfig(r=r, init_weights=init_weights, target_modules=["lin0", "lin1"])
    )
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "miss_block" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
                path = name.replace(".miss_block.default", "").replace("base_model.model.", "")
                tensors[f"base_model.model.{path}.bone_block"] = param.detach().clone()
        expected = model(make_inputs("mlp"))
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "auto_mapping": None,
        "base_model_name_or_path": None,
        "bias": "none",
        "exclude_modules": None,
        "inference_mode": True,
        "init_weights": init_weights,
        "layers_pattern": None,
        "layers_to_transform": None,
        "modules_to_save": None,
        "peft_type": "BONE",
        "peft_version": "0.14.0",
        "r": r,
        "revision": None,
        "target_modules": ["lin1", "lin0"],
        "task_type": None,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return expected


@pytest.mark.parametrize(("init_weights", "r"), [(True, 5), (False, 4), ("bat", 8)])
def test_bone_folder_loads_as_miss_with_one_warning(tmp_path: Path, init_weights: bool | str, r: int) -> None:
    expected = write_bone_folder(tmp_path, init_weights, r)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peftkit.PeftModel.from_pretrained(make_model("mlp"), tmp_path)
    assert [str(w.message).count("Bone") > 0 for w in caught] == [True], [str(w.message) for w in caught]
    assert "read as MiSS" in str(caught[0].message)
    assert model.peft_config["default"].peft_type == "MISS"
    assert model.peft_config["default"].init_weights == init_weights
    with torch.no_grad():
        torch.testing.assert_close(model(make_inputs("mlp")), expected, atol=0, rtol=0)


def test_convert_bone_to_miss(tmp_path: Path) -> None:
    src, dst = tmp_path / "bone", tmp_path / "out" / "miss"
    expected = write_bone_folder(src, "bat", 8)
    write_bone_folder(src / "second", True, 3, seed=1)
    convert_bone_to_miss(str(src), str(dst))

    for folder in (dst, dst / "second"):
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["peft_type"] == "MISS" and config["mini_r"] == 1 and config["miss_dropout"] == 0.0
        assert list(config) == sorted(config)
        keys = load_file(str(folder / "adapter_model.safetensors"))
        assert keys and all(k.endswith(".miss_block") for k in keys)
    assert json.loads((dst / "adapter_config.json").read_text())["init_weights"] == "bat"

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a converted folder is plain MiSS: no Bone warning any more
        model = peftkit.PeftModel.from_pretrained(make_model("mlp"), dst)
        model.load_adapter(dst / "second", adapter_name="second")
    with torch.no_grad():
        torch.testing.assert_close(model(make_inputs("mlp")), expected, atol=0, rtol=0)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["miss"], "staging folder left behind"


def test_converter_is_registered_through_the_hook() -> None:
    from peftkit._plugins import plugin_manager

    found = {}
    plugin_manager().hook.peftkit_register_converters(
        register=lambda name, fn, help: found.setdefault(name, (fn, help))
    )
    assert found["bone-to-miss"][0] is convert_bone_to_miss and "Bone" in found["bone-to-miss"][1]


def test_convert_refuses_without_writing(tmp_path: Path) -> None:
    src = tmp_path / "bone"
    write_bone_folder(src, True, 4)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(BoneConversionError, match="already exists"):
        convert_bone_to_miss(str(src), str(taken))
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]

    with pytest.raises(BoneConversionError, match="not inside"):
        convert_bone_to_miss(str(src), str(src / "miss"))

    miss = tmp_path / "miss"
    peftkit.get_peft_model(make_model("mlp"), MissConfig(r=4, target_modules=["lin0"])).save_pretrained(miss)
    with pytest.raises(BoneConversionError, match="not 'BONE'"):
        convert_bone_to_miss(str(miss), str(tmp_path / "never"))
    assert not (tmp_path / "never").exists()


def test_failed_conversion_leaves_no_half_written_folder(tmp_path: Path) -> None:
    src, dst = tmp_path / "bone", tmp_path / "out"
    write_bone_folder(src, True, 4)
    write_bone_folder(src / "broken", True, 4)
    (src / "broken" / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception, match="safetensors"):
        convert_bone_to_miss(str(src), str(dst))
    assert sorted(os.listdir(tmp_path)) == ["bone"], "the output or a staging folder was left behind"

"""MiSS checkpoints move between peftkit and Hugging Face ``peft`` (the test-only oracle) unchanged.

Every adapter's ``miss_block`` is filled with random values before saving (MiSS starts as a
no-op), ``modules_to_save`` copies are perturbed too, and logits are compared on the other side.
Tiny Llama: hidden 32, intermediate 64, k/v projections 16 wide, so r=5 and r=3 leave a tail shard
(``in % r != 0``) on every layer. Hugging Face PEFT keeps one variant per layer, so each peft model
here holds adapters of a single variant; mixing variants is tested in the plugin's own tests.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from _models import run, text_inputs, tiny_llama, tiny_opt
from torch import nn

import peftkit

ATOL = 1e-5
BUILDERS = {"llama": tiny_llama, "opt": tiny_opt}
_LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]
_OPT_TARGETS = ["q_proj", "v_proj", "out_proj", "fc1", "fc2"]

# id -> (model, MissConfig keyword arguments shared by both libraries)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-balance-r8": ("llama", {"r": 8, "target_modules": _LLAMA_TARGETS}),
    "llama-balance-odd-r5": ("llama", {"r": 5, "target_modules": _LLAMA_TARGETS, "miss_dropout": 0.1}),
    "llama-random-odd-r3": (
        "llama",
        {"r": 3, "init_weights": False, "target_modules": ["q_proj", "down_proj"]},
    ),
    "llama-bat-r4": ("llama", {"r": 4, "init_weights": "bat", "target_modules": _LLAMA_TARGETS}),
    "llama-bat-r8": (
        "llama",
        {"r": 8, "init_weights": "bat", "target_modules": ["q_proj", "gate_proj", "down_proj"]},
    ),
    "llama-mini-odd-r5": (
        "llama",
        {"r": 5, "init_weights": "mini", "mini_r": 4, "target_modules": _LLAMA_TARGETS},
    ),
    "llama-mini-r6": (
        "llama",
        {"r": 6, "init_weights": "mini", "mini_r": 8, "target_modules": ["q_proj", "up_proj"]},
    ),
    "llama-modules-to-save": (
        "llama",
        {
            "r": 4,
            "target_modules": ["q_proj", "v_proj"],
            "modules_to_save": ["lm_head"],
            "task_type": "CAUSAL_LM",
        },
    ),
    "opt-balance-r8": ("opt", {"r": 8, "target_modules": _OPT_TARGETS}),
    "opt-balance-odd-r5": ("opt", {"r": 5, "target_modules": _OPT_TARGETS}),
    "opt-bat-r4": ("opt", {"r": 4, "init_weights": "bat", "target_modules": _OPT_TARGETS}),
    "opt-mini-odd-r3": ("opt", {"r": 3, "init_weights": "mini", "mini_r": 2, "target_modules": _OPT_TARGETS}),
    "opt-modules-to-save": (
        "opt",
        {"r": 6, "target_modules": ["k_proj", "fc2"], "modules_to_save": ["final_layer_norm"]},
    ),
}

# Several adapters: (model, first adapter, second adapter), same variant within one peft model.
MULTI: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "llama-balance": (
        "llama",
        {"r": 8, "target_modules": ["q_proj", "v_proj"]},
        {"r": 5, "target_modules": ["v_proj", "up_proj"]},
    ),
    "llama-bat": (
        "llama",
        {"r": 4, "init_weights": "bat", "target_modules": ["q_proj", "o_proj"]},
        {"r": 8, "init_weights": "bat", "target_modules": ["q_proj"]},
    ),
    "opt-mini": (
        "opt",
        {
            "r": 4,
            "init_weights": "mini",
            "mini_r": 4,
            "target_modules": ["q_proj", "fc1"],
            "modules_to_save": ["final_layer_norm"],
        },
        {"r": 3, "init_weights": "mini", "mini_r": 8, "target_modules": ["fc1", "fc2"]},
    ),
}


def _perturb(model: nn.Module, seed: int) -> None:
    """Random MiSS blocks (small, so bat stays well conditioned) and perturbed ``modules_to_save`` copies."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "miss_block" in name or ".modules_to_save." in name:
                param.add_(torch.randn(param.shape, generator=gen) * 0.1)


def _peft_model(model_name: str, kwargs: dict[str, Any], seed: int = 0) -> peft.PeftModel:
    model = peft.get_peft_model(BUILDERS[model_name](), peft.MissConfig(**kwargs))
    _perturb(model, seed)
    return model.eval()


def _peftkit_model(model_name: str, kwargs: dict[str, Any], seed: int = 0) -> peftkit.PeftModel:
    model = peftkit.get_peft_model(BUILDERS[model_name](), peftkit.config("miss", **kwargs))
    _perturb(model, seed)
    return model.eval()


def _quiet_load(load: Any, *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers deprecation chatter; the logits are what is checked
        return load(*args, **kwargs)


@pytest.mark.parametrize("case", list(CASES))
def test_peft_adapter_loads_in_peftkit(case: str, tmp_path: Path) -> None:
    model_name, kwargs = CASES[case]
    inputs = text_inputs()
    source = _peft_model(model_name, kwargs)
    expected = run(source, inputs)
    assert not torch.allclose(expected, run(BUILDERS[model_name](), inputs), atol=1e-3), (
        "the adapter is a no-op"
    )
    source.save_pretrained(tmp_path)

    loaded = _quiet_load(peftkit.PeftModel.from_pretrained, BUILDERS[model_name](), tmp_path)
    torch.testing.assert_close(run(loaded, inputs), expected, atol=ATOL, rtol=0)
    # Merging in peftkit gives the same logits as peft's unmerged forward.
    torch.testing.assert_close(run(loaded.merge_and_unload(), inputs), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", list(CASES))
def test_peftkit_adapter_loads_in_peft(case: str, tmp_path: Path) -> None:
    model_name, kwargs = CASES[case]
    inputs = text_inputs()
    source = _peftkit_model(model_name, kwargs)
    expected = run(source, inputs)
    assert not torch.allclose(expected, run(BUILDERS[model_name](), inputs), atol=1e-3), (
        "the adapter is a no-op"
    )
    source.save_pretrained(tmp_path)

    loaded = _quiet_load(peft.PeftModel.from_pretrained, BUILDERS[model_name](), tmp_path)
    torch.testing.assert_close(run(loaded, inputs), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", list(MULTI))
def test_several_adapters_both_ways(case: str, tmp_path: Path) -> None:
    model_name, first, second = MULTI[case]
    inputs = text_inputs()

    source = _peft_model(model_name, first)
    source.add_adapter("second", peft.MissConfig(**second))
    _perturb(source, seed=1)
    want = {"default": run(source, inputs)}
    source.set_adapter("second")
    want["second"] = run(source, inputs)
    assert not torch.allclose(want["default"], want["second"], atol=1e-3)
    source.save_pretrained(tmp_path / "from-peft")

    ours = _quiet_load(peftkit.PeftModel.from_pretrained, BUILDERS[model_name](), tmp_path / "from-peft")
    _quiet_load(ours.load_adapter, tmp_path / "from-peft" / "second", adapter_name="second")
    for name in ("default", "second"):
        ours.set_adapter(name)
        torch.testing.assert_close(run(ours, inputs), want[name], atol=ATOL, rtol=0, msg=f"adapter {name}")

    # ... and back: what peftkit saves (default at the root, "second" in a sub-folder) loads in peft.
    ours.save_pretrained(tmp_path / "from-peftkit")
    theirs = _quiet_load(peft.PeftModel.from_pretrained, BUILDERS[model_name](), tmp_path / "from-peftkit")
    _quiet_load(theirs.load_adapter, tmp_path / "from-peftkit" / "second", adapter_name="second")
    for name in ("default", "second"):
        theirs.set_adapter(name)
        torch.testing.assert_close(run(theirs, inputs), want[name], atol=ATOL, rtol=0, msg=f"adapter {name}")


def test_converted_bone_folder_loads_in_peft(tmp_path: Path) -> None:
    """A Bone folder (peft's old format) loads in peftkit as MiSS and, once converted, in peft with equal logits."""
    import json

    from safetensors.torch import load_file, save_file

    from peftkit_miss.bone import convert_bone_to_miss

    inputs = text_inputs()
    source = _peft_model("llama", {"r": 4, "init_weights": "bat", "target_modules": ["q_proj", "up_proj"]})
    expected = run(source, inputs)
    source.save_pretrained(tmp_path / "miss")
    bone = tmp_path / "bone"
    bone.mkdir()
    config = json.loads((tmp_path / "miss" / "adapter_config.json").read_text())
    for key in ("miss_dropout", "mini_r"):
        del config[key]
    (bone / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "BONE"}))
    tensors = load_file(str(tmp_path / "miss" / "adapter_model.safetensors"))
    save_file(
        {k.replace(".miss_block", ".bone_block"): v for k, v in tensors.items()},
        str(bone / "adapter_model.safetensors"),
    )

    with pytest.warns(UserWarning, match="Bone"):
        ours = peftkit.PeftModel.from_pretrained(tiny_llama(), bone)
    torch.testing.assert_close(run(ours, inputs), expected, atol=ATOL, rtol=0)

    convert_bone_to_miss(str(bone), str(tmp_path / "converted"))
    theirs = _quiet_load(peft.PeftModel.from_pretrained, tiny_llama(), tmp_path / "converted")
    torch.testing.assert_close(run(theirs, inputs), expected, atol=ATOL, rtol=0)

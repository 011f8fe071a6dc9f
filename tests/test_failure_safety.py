"""A save killed at any moment leaves a folder that loads into the last complete save or the one being
written (never a mix, never nothing); a failed save or safe merge changes nothing.

Each save ``g`` writes a LoRA adapter whose config has ``lora_alpha = g`` and whose tensors are all
``g``: a loaded folder says which save its config came from and which its weights came from.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import peftkit
from peftkit.layer import UnsafeMergeError
from peftkit.testing import make_model

SAVER = textwrap.dedent(
    """
    import os, sys
    import torch
    from torch import nn
    import peftkit

    torch.set_num_threads(1)

    def save(folder, generation):
        torch.manual_seed(0)
        base = nn.Sequential(nn.Linear(256, 256))
        config = peftkit.config("lora", r=32, lora_alpha=generation, target_modules=["0"])
        model = peftkit.get_peft_model(base, config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.fill_(generation)
        model.save_pretrained(folder)

    mode, folder, first = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "forever":  # saves first, first + 1, ... reporting each one once it is complete
        generation = first
        while True:
            save(folder, generation)
            print(generation, flush=True)
            generation += 1
    else:  # "die-at-rename": save `first`, then die (as if killed) at rename number N of the next save
        save(folder, first)
        real_replace, calls = os.replace, [0]
        def dying_replace(src, dst):
            calls[0] += 1
            if calls[0] == int(mode.split("=")[1]):
                os._exit(9)
            real_replace(src, dst)
        os.replace = dying_replace
        save(folder, first + 1)
        print("completed", flush=True)
    """
)


def _base() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 256))


def _loaded_generation(folder: Path) -> int:
    """Which save the folder holds; fails if its config and weights come from different saves."""
    model = peftkit.PeftModel.from_pretrained(_base(), folder)
    from_config = model.peft_config["default"].lora_alpha
    values = {p.unique().item() for n, p in model.named_parameters() if "lora_" in n}
    assert values == {from_config}, f"config of save {from_config} loaded with weights of saves {values}"
    return int(from_config)


def _run_saver(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", SAVER, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.slow
@pytest.mark.parametrize("rename", [1, 2, 3, 4, 5])
def test_death_at_each_rename_of_a_save(rename: int, tmp_path: Path) -> None:
    """Dying at each rename of save 2 (pending config, weights, config, model card; 5 = no death) leaves save 1
    or save 2."""
    proc = _run_saver(f"die-at-rename={rename}", str(tmp_path), "1")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (0 if rename == 5 else 9), err
    generation = _loaded_generation(tmp_path)
    # Before the weights are replaced the old pair stands; from then on the new save is complete.
    assert generation == (1 if rename <= 2 else 2)


@pytest.mark.slow
def test_sigkill_at_random_moments(tmp_path: Path) -> None:
    rng = random.Random(1234)
    for round_ in range(3):
        first = 1 + 1000 * round_
        proc = _run_saver("forever", str(tmp_path), str(first))
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == str(first)  # one complete save exists
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate(timeout=60)
        last = max([first, *(int(line) for line in rest.split())])
        # The kill may land after save `last + 1` completed but before it was reported.
        assert _loaded_generation(tmp_path) in (last, last + 1)


def test_save_that_fails_while_writing_weights_keeps_previous_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def model_with(value: float) -> Any:
        config = peftkit.config("lora", r=2, lora_alpha=value, target_modules=["lin0"])
        model = peftkit.get_peft_model(make_model("mlp"), config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.fill_(value)
        return model

    model_with(1.0).save_pretrained(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    import safetensors.torch

    def half_written(tensors: Any, path: str, metadata: Any = None) -> None:
        with open(path, "wb") as fh:
            fh.write(b"\x00" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    with pytest.raises(OSError, match="disk full"):
        model_with(2.0).save_pretrained(tmp_path)
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.name.startswith(".peftkit-")}
    assert after == before  # the visible files are byte for byte the previous save
    loaded = peftkit.PeftModel.from_pretrained(make_model("mlp"), tmp_path)
    assert loaded.peft_config["default"].lora_alpha == 1.0


def test_saved_folder_is_what_hugging_face_peft_reads(tmp_path: Path) -> None:
    """The pending config is renamed away: a finished save leaves exactly the files PEFT writes."""
    model = peftkit.get_peft_model(make_model("mlp"), peftkit.config("lora", r=2, target_modules=["lin0"]))
    model.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)  # overwriting works the same way
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "LORA"


def test_safe_merge_refused_in_last_layer_changes_no_layer() -> None:
    """NaN only in the last adapted layer: no earlier layer may have been merged when it is refused."""
    config = peftkit.config("lora", r=2, target_modules=["lin0", "lin1", "lin2"], init_lora_weights=False)
    model = peftkit.get_peft_model(make_model("mlp"), config)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    with torch.no_grad():
        model.base_model.model.lin2.lora_B["default"].weight[0, 0] = float("inf")
    for merge in (model.merge_adapter, model.merge_and_unload):
        with pytest.raises(UnsafeMergeError):
            merge(safe_merge=True)
        assert all(
            not layer.merged_adapters for layer in model.modules() if hasattr(layer, "merged_adapters")
        )
        for name, param in model.named_parameters():
            if name in weights:
                assert torch.equal(param, weights[name]), f"{name} changed"

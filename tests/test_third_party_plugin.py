"""A third-party method, installed as a real distribution, is discovered and trained like a built-in one.

``tests/plugins/peftkit-scale`` uses only peftkit's public API; ``tests/plugins/peftkit-broken``
fails at import. Both are built and installed into a temporary folder (no network: no build
isolation, no dependencies), which the child processes put on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
            "--disable-pip-version-check", "--target", str(target),
            str(PLUGINS / "peftkit-scale"), str(PLUGINS / "peftkit-broken"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return target


def run_python(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    env.pop("PEFTKIT_LOAD_PLUGINS", None)
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.slow
def test_installed_plugin_is_listed_and_broken_one_reported(site: Path) -> None:
    doc = json.loads(run_python(site, "-m", "peftkit", "list-methods", "--json").stdout)
    methods = {m["method"]: m for m in doc["methods"]}
    assert "dense" in methods["scale"].pop("backends")  # plus any installed backend serving Linear
    assert methods["scale"] == {
        "method": "scale",
        "peft_type": "SCALE",
        "distribution": "peftkit-scale",
        "version": "0.3.1",
        "layer_types": ["Linear", "Conv1D"],
        "view_kinds": ["linear"],  # derived from layer_types: the plugin predates view kinds
    }
    assert methods["lora"]["distribution"] == "peftkit-lora"
    assert doc["broken"]["broken"] == (
        "peftkit-broken==0.0.1: ImportError: peftkit-broken needs the package 'not_installed_anywhere'"
    )


TRAIN = textwrap.dedent(
    """
    import json, sys, tempfile
    import torch
    from torch import nn
    import peftkit

    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 3))

    # The target is reachable by the method: a copy whose output channels are scaled.
    teacher = mlp()
    teacher[2].weight.data *= torch.tensor([1.5, 0.5, 2.0])[:, None]
    torch.manual_seed(1)
    x = torch.randn(64, 6)
    with torch.no_grad():
        y = teacher(x)
    model = peftkit.get_peft_model(mlp(), peftkit.config("scale", target_modules=["0", "2"]))
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    with torch.no_grad():
        identity = torch.equal(model(x), mlp()(x))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for _ in range(30):
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        trained = model(x)
    folder = tempfile.mkdtemp()
    model.save_pretrained(folder)
    from safetensors.torch import load_file
    keys = sorted(load_file(folder + "/adapter_model.safetensors"))
    loaded = peftkit.PeftModel.from_pretrained(mlp(), folder)
    with torch.no_grad():
        reloaded = loaded(x)
        merged = loaded.merge_and_unload()(x)
    json.dump({
        "type": type(model.base_model.model[0]).__module__,
        "trainable": trainable,
        "identity": identity,
        "losses": losses,
        "keys": keys,
        "reload_diff": (reloaded - trained).abs().max().item(),
        "merge_diff": (merged - trained).abs().max().item(),
    }, sys.stdout)
    """
)


@pytest.mark.slow
def test_installed_plugin_trains_saves_and_loads_by_name(site: Path) -> None:
    result: dict[str, Any] = json.loads(run_python(site, "-c", TRAIN).stdout)
    assert result["type"] == "peftkit_scale.layer"
    assert result["trainable"] == [
        "base_model.model.0.scale_vector.default",
        "base_model.model.2.scale_vector.default",
    ]
    assert result["identity"]  # s starts at zero
    losses = result["losses"]
    assert losses[-1] < 0.1 * losses[0]
    assert result["keys"] == ["base_model.model.0.scale_vector", "base_model.model.2.scale_vector"]
    assert result["reload_diff"] < 1e-6
    assert result["merge_diff"] < 1e-5

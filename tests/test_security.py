"""Loading an adapter from a stranger never runs their code.

* A pickled ``adapter_model.bin`` is read with ``torch.load(weights_only=True)``: tensors only; a
  pickle that would run code is refused with a clear error, and its code does not run. peftkit
  offers no switch to unpickle arbitrary objects.
* Nothing in an adapter folder is imported: ``auto_mapping`` and every other config string is
  data, even when the folder is importable.
* Plugins come only from installed distributions' ``peftkit`` entry points, and
  ``PEFTKIT_LOAD_PLUGINS`` restricts which of those load.
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
import torch
from safetensors.torch import load_file

import peftkit
from peftkit import CheckpointError
from peftkit.testing import make_inputs, make_model


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    config = peftkit.config("lora", r=2, target_modules=["lin0"], init_lora_weights=False)
    folder = tmp_path / "adapter"
    peftkit.get_peft_model(make_model("mlp"), config).save_pretrained(folder)
    return folder


class _Payload:
    """Unpickling this creates ``marker``: the stand-in for any code an attacker would run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (open, (self.marker, "w"))


def test_malicious_bin_is_refused_and_runs_nothing(saved: Path, tmp_path: Path) -> None:
    tensors = load_file(saved / "adapter_model.safetensors")
    (saved / "adapter_model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save(
        {**tensors, "base_model.model.lin0.lora_A.weight": _Payload(str(marker))}, saved / "adapter_model.bin"
    )

    base = make_model("mlp")
    with pytest.raises(
        CheckpointError,
        match=r"could not be read safely \(UnpicklingError: WeightsUnpickler error: Unsupported global.*never runs code",
    ):
        peftkit.PeftModel.from_pretrained(base, saved)
    assert not marker.exists(), "loading the adapter ran code from the pickle"
    assert not any(isinstance(m, peftkit.AdapterLayer) for m in base.modules())

    # The payload is live: an unrestricted unpickler would have run it.
    torch.load(saved / "adapter_model.bin", weights_only=False)
    assert marker.exists()


def test_bin_of_plain_tensors_still_loads(saved: Path) -> None:
    """Old Hugging Face PEFT adapters (.bin of tensors) load through the restricted unpickler."""
    reference = peftkit.PeftModel.from_pretrained(make_model("mlp"), saved)
    tensors = load_file(saved / "adapter_model.safetensors")
    (saved / "adapter_model.safetensors").unlink()
    torch.save(tensors, saved / "adapter_model.bin")
    model = peftkit.PeftModel.from_pretrained(make_model("mlp"), saved)
    x = make_inputs("mlp")
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=0, rtol=0)


@pytest.mark.parametrize("content", [[1, 2], {"key": 3}, {5: torch.ones(1)}])
def test_bin_that_is_not_named_tensors(content: Any, saved: Path) -> None:
    (saved / "adapter_model.safetensors").unlink()
    torch.save(content, saved / "adapter_model.bin")
    with pytest.raises(CheckpointError, match="does not hold a dict of named tensors"):
        peftkit.PeftModel.from_pretrained(make_model("mlp"), saved)


def test_peftkit_never_writes_pickles(saved: Path) -> None:
    model = peftkit.PeftModel.from_pretrained(make_model("mlp"), saved)
    with pytest.raises(ValueError, match="safetensors only"):
        model.save_pretrained(saved, safe_serialization=False)


EVIL_MODULE = 'open({marker!r}, "w").close()\nclass Evil:\n    pass\n'


def test_no_code_is_imported_from_the_adapter_folder(
    saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auto_mapping names a module sitting in the (importable) folder: it is kept as data, never imported."""
    marker = tmp_path / "imported"
    (saved / "peftkit_evil_mapping.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    config = json.loads((saved / "adapter_config.json").read_text())
    config["auto_mapping"] = {"base_model_class": "Evil", "parent_library": "peftkit_evil_mapping"}
    config["base_model_name_or_path"] = "peftkit_evil_mapping.Evil"
    (saved / "adapter_config.json").write_text(json.dumps(config))
    monkeypatch.syspath_prepend(str(saved))
    monkeypatch.chdir(saved)

    model = peftkit.PeftModel.from_pretrained(make_model("mlp"), saved)
    model.load_adapter(saved, adapter_name="second")
    assert model.peft_config["default"].auto_mapping["parent_library"] == "peftkit_evil_mapping"
    assert "peftkit_evil_mapping" not in sys.modules and not marker.exists()


def test_peft_type_naming_a_module_is_not_imported(
    saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "imported"
    (saved / "peftkit_evil_type.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    config = json.loads((saved / "adapter_config.json").read_text())
    config["peft_type"] = "peftkit_evil_type:Evil"
    (saved / "adapter_config.json").write_text(json.dumps(config))
    monkeypatch.syspath_prepend(str(saved))
    with pytest.raises(KeyError, match="which no installed plugin serves"):
        peftkit.PeftModel.from_pretrained(make_model("mlp"), saved)
    assert "peftkit_evil_type" not in sys.modules and not marker.exists()


LIST_PLUGINS = textwrap.dedent(
    """
    import json, sys
    from peftkit._plugins import make_plugin_manager, build_registry
    registry = build_registry(make_plugin_manager())
    json.dump({
        "methods": sorted(registry.methods),
        "plugin_modules": sorted(m for m in sys.modules if m.startswith("peftkit_")),
    }, sys.stdout)
    """
)


def _plugins_in_child(cwd: Path, allow: str | None) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(cwd)}
    env.pop("PEFTKIT_LOAD_PLUGINS", None)
    if allow is not None:
        env["PEFTKIT_LOAD_PLUGINS"] = allow
    proc = subprocess.run(
        [sys.executable, "-c", LIST_PLUGINS], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


PLANTED_PLUGIN = textwrap.dedent(
    """
    import peftkit

    open({marker!r}, "w").close()

    @peftkit.hookimpl
    def peftkit_register_methods(register):
        register(peftkit.Method(name="planted", peft_type="PLANTED", config="x:y", prefix="planted_"))
    """
)


@pytest.mark.slow
def test_plugins_come_only_from_installed_distributions(tmp_path: Path) -> None:
    """A plugin-looking module on the path (in the working folder) is not a plugin without an entry point."""
    marker = tmp_path / "planted-imported"
    (tmp_path / "peftkit_planted.py").write_text(PLANTED_PLUGIN.format(marker=str(marker)))
    everything = _plugins_in_child(tmp_path, None)
    assert "lora" in everything["methods"] and "planted" not in everything["methods"]
    assert "peftkit_planted" not in everything["plugin_modules"] and not marker.exists()


@pytest.mark.slow
def test_peftkit_load_plugins_restricts_what_is_imported(tmp_path: Path) -> None:
    only_lora = _plugins_in_child(tmp_path, "lora")
    assert only_lora["methods"] == ["lora"]
    assert only_lora["plugin_modules"] == [
        m for m in only_lora["plugin_modules"] if m.startswith("peftkit_lora")
    ]
    nothing = _plugins_in_child(tmp_path, "")
    assert nothing == {"methods": [], "plugin_modules": []}

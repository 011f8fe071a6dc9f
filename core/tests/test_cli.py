"""The ``peftkit`` command line: list-methods, inspect and convert, in process and as a program."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import peftkit
from peftkit import cli
from peftkit._registry import Backend, Converter, Method, Registry


class MLP(nn.Module):
    def __init__(self, layers: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.blocks = nn.ModuleList(nn.Linear(16, 16) for _ in range(layers))
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        for block in self.blocks:
            h = torch.relu(block(h))
        return self.fc2(h)


def run_cli(
    capsys: pytest.CaptureFixture[str], *argv: str, registry: Registry | None = None
) -> tuple[int, str, str]:
    code = cli.main(list(argv), registry=registry)
    out, err = capsys.readouterr()
    return code, out, err


def save_lora(folder: Path, layers: int = 1, targets: list[str] | str = ("fc1", "fc2")) -> Any:
    torch.manual_seed(0)
    targets = targets if isinstance(targets, str) else list(targets)
    model = peftkit.get_peft_model(MLP(layers), peftkit.config("lora", r=4, target_modules=targets))
    model.save_pretrained(folder)
    return model


def fake_registry() -> Registry:
    registry = Registry(broken={"broken": "peftkit-broken==0.0.1: ImportError: needs zzz"})
    registry.add(
        Method("scale", "SCALE", "x:Y", layer_types=("Linear",), dist="peftkit-scale", version="0.3")
    )
    registry.add(Method("twin", "TWIN", "x:Y", dist="dist-a", version="1"))
    registry.add(Method("twin", "TWIN", "x:Y", dist="dist-b", version="2"))
    registry.backends.append(Backend("dense", ["Linear"], "peftkit", "0.1.0"))
    return registry


# --- list-methods --------------------------------------------------------------------------
def test_list_methods_table_shows_installed_lora_and_the_dense_backend(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(capsys, "list-methods")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "Methods"
    assert lines[1].split()[:5] == ["method", "PEFT", "type", "distribution", "version"]
    lora = next(line for line in lines if line.split()[:1] == ["lora"])
    assert lora.split()[:4] == ["lora", "LORA", "peftkit-lora", "0.1.0"]
    assert "Linear, Conv1D, Embedding" in lora
    dense = next(line for line in lines[lines.index("Backends") :] if line.split()[:1] == ["dense"])
    assert dense.split()[:3] == ["dense", "peftkit", peftkit.__version__]


def test_list_methods_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "list-methods", "--json")
    doc = json.loads(out)
    assert code == 0
    assert {"methods", "backends", "broken"} <= set(doc)
    lora = next(m for m in doc["methods"] if m["method"] == "lora")
    assert (lora["peft_type"], lora["distribution"], lora["version"]) == ("LORA", "peftkit-lora", "0.1.0")
    assert "Embedding" in lora["layer_types"]
    assert doc["backends"][0]["backend"] == "dense"
    assert doc["broken"] == {}


def test_list_methods_reports_broken_plugins_and_conflicts(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "list-methods", registry=fake_registry())
    assert code == 0
    assert "scale   SCALE      peftkit-scale  0.3" in out
    assert "Broken plugins (skipped)\n  broken: peftkit-broken==0.0.1: ImportError: needs zzz" in out
    assert "method 'twin' (PEFT type 'TWIN') is registered by both dist-a==1 and dist-b==2" in out
    doc = json.loads(run_cli(capsys, "list-methods", "--json", registry=fake_registry())[1])
    assert [m["method"] for m in doc["methods"]] == ["scale"]
    assert doc["broken"] == {"broken": "peftkit-broken==0.0.1: ImportError: needs zzz"}
    assert len(doc["conflicts"]) == 1 and "dist-a==1" in doc["conflicts"][0]


def test_list_methods_shows_view_kinds_and_matches_methods_by_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    registry = fake_registry()
    registry.backends.append(
        Backend(
            "hqq", ["HQQLinear", "HQQEmbedding"], kinds={"HQQLinear": "linear", "HQQEmbedding": "embedding"}
        )
    )
    registry.backends.append(Backend("odd", ["Weird"]))  # no kind declared, none to guess from the name
    out = run_cli(capsys, "list-methods", registry=registry)[1]
    assert "linear: HQQLinear; embedding: HQQEmbedding" in out and "unknown kind: Weird" in out
    scale = next(line for line in out.splitlines() if line.split()[:1] == ["scale"])
    assert "dense, hqq " in scale and "odd" not in scale
    doc = json.loads(run_cli(capsys, "list-methods", "--json", registry=registry)[1])
    assert doc["methods"][0]["view_kinds"] == ["linear"]
    assert doc["backends"][1]["view_kinds"] == {"HQQLinear": "linear", "HQQEmbedding": "embedding"}


def test_list_methods_as_a_program_imports_no_torch() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "peftkit.cli", "list-methods"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "lora" in proc.stdout
    assert "import time:" in proc.stderr  # importtime really ran, so the check below means something
    assert [line for line in proc.stderr.splitlines() if "torch" in line] == []


def test_python_dash_m_peftkit_runs_the_cli() -> None:
    proc = subprocess.run([sys.executable, "-m", "peftkit", "--version"], capture_output=True, text=True)
    assert (proc.returncode, proc.stdout.strip()) == (0, f"peftkit {peftkit.__version__}")
    proc = subprocess.run(
        [sys.executable, "-m", "peftkit", "inspect", "/no/such/folder"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "is not a folder" in proc.stderr


# --- inspect -------------------------------------------------------------------------------
def test_inspect_lora_adapter_json_counts_match_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = save_lora(tmp_path)
    code, out, err = run_cli(capsys, "inspect", str(tmp_path), "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    trainable, _ = model.get_nb_trainable_parameters()
    assert doc["num_parameters"] == trainable == 4 * 8 + 16 * 4 + 4 * 16 + 4 * 4
    assert (doc["method"], doc["peft_type"], doc["distribution"]) == ("lora", "LORA", "peftkit-lora")
    assert doc["file_size"] == os.path.getsize(tmp_path / "adapter_model.safetensors")
    assert doc["config"]["r"] == 4 and sorted(doc["config"]["target_modules"]) == ["fc1", "fc2"]
    shapes = {t["name"]: (tuple(t["shape"]), t["dtype"]) for t in doc["tensors"]}
    assert shapes == {
        "base_model.model.fc1.lora_A.weight": ((4, 8), "float32"),
        "base_model.model.fc1.lora_B.weight": ((16, 4), "float32"),
        "base_model.model.fc2.lora_A.weight": ((4, 16), "float32"),
        "base_model.model.fc2.lora_B.weight": ((4, 4), "float32"),
    }


def test_inspect_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_lora(tmp_path)
    code, out, _ = run_cli(capsys, "inspect", str(tmp_path))
    assert code == 0
    assert "Method      lora (PEFT type LORA) from peftkit-lora==0.1.0" in out
    assert "Parameters  176 in 4 tensors (float32)" in out
    assert '    "r": 4,' in out  # the config, pretty-printed and indented
    assert "base_model.model.fc1.lora_B.weight  (16, 4)  float32" in out


def test_inspect_groups_many_tensors_unless_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_lora(tmp_path, layers=12, targets=r".*(fc1|fc2|blocks\.\d+)")
    out = run_cli(capsys, "inspect", str(tmp_path))[1]
    assert "base_model.model.blocks.*.lora_A.weight  12     (4, 16)  float32" in out
    assert "(28 tensors grouped; --all lists each)" in out
    out = run_cli(capsys, "inspect", str(tmp_path), "--all")[1]
    assert "base_model.model.blocks.11.lora_B.weight" in out and "*" not in out.split("Tensors")[1]


def test_inspect_adapter_of_a_method_not_installed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import save_file

    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "FANCY_NEW", "r": 2}))
    save_file(
        {"base_model.model.fc.fancy_w": torch.zeros(2, 3, dtype=torch.bfloat16)},
        tmp_path / "adapter_model.safetensors",
    )
    code, out, _ = run_cli(capsys, "inspect", str(tmp_path), "--json", registry=Registry())
    doc = json.loads(out)
    assert code == 0 and doc["method"] is None
    assert "pip install peftkit-fancy-new" in doc["note"]
    assert (doc["num_parameters"], doc["tensors"][0]["dtype"]) == (6, "bfloat16")


def test_inspect_legacy_bin_adapter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_lora(tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    from safetensors.torch import load_file

    torch.save({k: v.half() for k, v in load_file(weights).items()}, tmp_path / "adapter_model.bin")
    weights.unlink()
    doc = json.loads(run_cli(capsys, "inspect", str(tmp_path), "--json")[1])
    assert (doc["weights_file"], doc["num_parameters"], doc["num_tensors"]) == ("adapter_model.bin", 176, 4)
    assert {t["dtype"] for t in doc["tensors"]} == {"float16"}


def assert_user_error(code: int, out: str, err: str, *fragments: str) -> None:
    assert (code, out) == (2, "")
    assert err.startswith("peftkit inspect: error: ") and err.count("\n") == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_inspect_folder_without_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_user_error(*run_cli(capsys, "inspect", str(tmp_path)), "no adapter_config.json", "save_pretrained")


def test_inspect_points_at_adapters_in_sub_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_lora(tmp_path / "other")
    assert_user_error(*run_cli(capsys, "inspect", str(tmp_path)), "sub-folders ['other']")


def test_inspect_config_without_peft_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "adapter_config.json").write_text('{"r": 8}')
    assert_user_error(*run_cli(capsys, "inspect", str(tmp_path)), "no 'peft_type'")


def test_inspect_missing_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_lora(tmp_path)
    (tmp_path / "adapter_model.safetensors").unlink()
    assert_user_error(*run_cli(capsys, "inspect", str(tmp_path)), "no adapter_model.safetensors")


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda data: data[:-10], "truncated?"),
        (lambda data: data[:5], "only 5 bytes long"),
        (lambda data: b"\xff" * 8 + data[8:], "header claims"),
        (lambda data: data[:8] + b"?" + data[9:], "not valid JSON"),
    ],
)
def test_inspect_corrupt_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: Any, fragment: str
) -> None:
    save_lora(tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    assert_user_error(*run_cli(capsys, "inspect", str(tmp_path)), "not a readable safetensors file", fragment)


# --- convert -------------------------------------------------------------------------------
def upper_case_copy(in_path: str, out_path: str) -> None:
    """A fake converter: copies a text file, upper-cased; refuses empty input like a real one would."""
    text = Path(in_path).read_text()
    if not text:
        raise peftkit.ConfigError(f"{in_path} is empty")
    if text == "crash":
        raise RuntimeError("a bug in the converter")
    Path(out_path).write_text(text.upper())


def converter_registry() -> Registry:
    registry = Registry()
    registry.add_converter(
        Converter("lower-to-upper", upper_case_copy, "upper-case a file", "peftkit-fake", "1.0")
    )
    registry.add_converter(
        Converter("bone-to-miss", f"{__name__}:upper_case_copy", "lazy", "peftkit-miss", "0.1")
    )
    return registry


def test_convert_runs_a_plugin_converter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in.txt").write_text("bone")
    code, out, _ = run_cli(
        capsys,
        "convert",
        "lower-to-upper",
        str(tmp_path / "in.txt"),
        str(tmp_path / "out.txt"),
        registry=converter_registry(),
    )
    assert code == 0 and "with lower-to-upper (peftkit-fake==1.0)" in out
    assert (tmp_path / "out.txt").read_text() == "BONE"


def test_convert_unknown_name_lists_the_available_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "convert", "nope", "a", "b", registry=converter_registry())
    assert (code, out) == (2, "")
    assert (
        err
        == "peftkit convert: error: no installed plugin provides the converter 'nope'; available: bone-to-miss, lower-to-upper\n"
    )


def test_convert_errors_are_one_line_and_bugs_keep_their_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = converter_registry()
    empty, crash = tmp_path / "empty.txt", tmp_path / "crash.txt"
    empty.write_text("")
    crash.write_text("crash")
    code, _, err = run_cli(
        capsys, "convert", "lower-to-upper", str(empty), str(tmp_path / "o"), registry=registry
    )
    assert (code, err) == (2, f"peftkit convert: error: {empty} is empty\n")
    code, _, err = run_cli(
        capsys, "convert", "bone-to-miss", str(tmp_path / "missing"), "o", registry=registry
    )
    assert code == 2 and "does not exist" in err
    with pytest.raises(RuntimeError, match="a bug in the converter"):
        cli.main(["convert", "lower-to-upper", str(crash), str(tmp_path / "o")], registry=registry)


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys)
    assert code == 2 and "usage: peftkit" in err

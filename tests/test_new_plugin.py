"""``peftkit new-plugin NAME`` writes a package that installs, passes its own tests and is listed.

The slow test builds the generated package into a temporary folder (no network, no build
isolation, no dependencies: the venv is never touched) and runs its pytest and ``list-methods``
in child processes that put that folder on ``PYTHONPATH``, so CI proves the template still
works against the current core.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peftkit import cli
from peftkit.scaffold import ScaffoldError, new_plugin, plugin_files


def _env(site: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    env.pop("PEFTKIT_LOAD_PLUGINS", None)
    return env


@pytest.mark.slow
def test_generated_plugin_installs_passes_its_tests_and_is_listed(tmp_path: Path) -> None:
    assert cli.main(["new-plugin", "mymethod", "--dir", str(tmp_path)]) == 0
    root = tmp_path / "peftkit-mymethod"
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
            "--disable-pip-version-check", "--target", str(site), str(root),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=root,
        env=_env(site),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-3000:]
    summary = tests.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary, summary
    # Conformance tests on both required models really ran.
    verbose = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=root,
        env=_env(site),
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "test_save_load_roundtrip[mlp-0]" in verbose and "[gpt2-conv1d]" in verbose

    listed = subprocess.run(
        [sys.executable, "-m", "peftkit", "list-methods", "--json"],
        env=_env(site),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    methods = {m["method"]: m for m in json.loads(listed.stdout)["methods"]}
    assert methods["mymethod"]["distribution"] == "peftkit-mymethod"
    assert methods["mymethod"]["peft_type"] == "MYMETHOD"


def test_package_layout_and_entry_point() -> None:
    files = plugin_files("my_method")
    assert set(files) == {
        "pyproject.toml",
        "README.md",
        "src/peftkit_my_method/__init__.py",
        "src/peftkit_my_method/config.py",
        "src/peftkit_my_method/layer.py",
        "tests/test_my_method_conformance.py",
        "tests/test_my_method_layer.py",
    }
    pyproject = files["pyproject.toml"]
    assert 'name = "peftkit-my-method"' in pyproject
    assert '[project.entry-points.peftkit]\nmy_method = "peftkit_my_method"' in pyproject
    assert '"peftkit>=0.1,<0.2"' in pyproject and 'build-backend = "hatchling.build"' in pyproject
    assert "class MyMethodLayer(AdapterLayer)" in files["src/peftkit_my_method/layer.py"]
    # The entry-point module stays light: it names its classes lazily and imports no torch.
    init = files["src/peftkit_my_method/__init__.py"]
    assert "import torch" not in init and '"peftkit_my_method.layer:MyMethodLayer"' in init
    for path, text in files.items():
        if path.endswith(".py"):
            compile(text, path, "exec")  # every template renders to valid Python


@pytest.mark.parametrize("name", ["MyMethod", "my-method", "1method", "", "class", "with space", "trailing_"])
def test_bad_names_are_refused(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["new-plugin", name, "--dir", str(tmp_path)]) == cli.EXIT_USER_ERROR
    assert "must be a lower-case Python identifier" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_is_never_overwritten(tmp_path: Path) -> None:
    mine = tmp_path / "peftkit-mymethod" / "src" / "notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("my work")
    with pytest.raises(ScaffoldError, match="already exists and is not empty"):
        new_plugin("mymethod", tmp_path)
    assert mine.read_text() == "my work"
    assert sorted(p.name for p in (tmp_path / "peftkit-mymethod").rglob("*")) == ["notes.txt", "src"]


def test_empty_existing_folder_is_used(tmp_path: Path) -> None:
    (tmp_path / "peftkit-mymethod").mkdir()
    root = Path(new_plugin("mymethod", tmp_path))
    assert (root / "src" / "peftkit_mymethod" / "layer.py").is_file()


def test_cli_does_not_import_torch_for_new_plugin(tmp_path: Path) -> None:
    code = (
        "import sys; from peftkit import cli; "
        f"rc = cli.main(['new-plugin', 'light', '--dir', {str(tmp_path)!r}]); "
        "print(rc, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[-2:] == ["0", "False"]

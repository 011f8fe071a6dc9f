"""Every distribution's import package carries ``py.typed`` (PEP 561), so type checkers read its annotations.

hatch puts every file of a wheel's package folder in the wheel, so the marker needs no build setting.
"""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECTS = [ROOT / "core" / "pyproject.toml", *sorted((ROOT / "plugins").glob("*/pyproject.toml"))]


def test_every_wheel_package_has_a_py_typed_marker() -> None:
    missing = []
    for pyproject in PYPROJECTS:
        wheel = tomllib.loads(pyproject.read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
        missing += [
            f"{pyproject.parent.name}/{package}"
            for package in wheel["packages"]
            if not (pyproject.parent / package / "py.typed").is_file()
        ]
    assert not missing, f"packages without py.typed (add an empty one): {missing}"

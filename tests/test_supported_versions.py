"""The declared version ranges, the lock and the oldest stack agree (README, "Supported versions").

``make test`` installs the lock (constraints.txt), ``make test-oldest`` the declared minimums
(constraints-oldest.txt); these checks keep both in step with every pyproject.toml, so a range
that nothing tests cannot be declared.
"""

from __future__ import annotations

from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECTS = [ROOT / "core" / "pyproject.toml", *sorted((ROOT / "plugins").glob("*/pyproject.toml"))]


def _pins(path: Path) -> dict[str, Version]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _requirements(extras: bool) -> list[Requirement]:
    found = []
    for path in PYPROJECTS:
        project = tomllib.loads(path.read_text())["project"]
        lists = [project.get("dependencies", [])]
        if extras:
            lists += list(project.get("optional-dependencies", {}).values())
        found += [Requirement(text) for group in lists for text in group]
    return [req for req in found if not canonicalize_name(req.name).startswith("peftkit")]


def test_the_lock_pins_every_direct_dependency_inside_its_declared_range() -> None:
    lock = _pins(ROOT / "constraints.txt")
    for req in _requirements(extras=True):
        name = canonicalize_name(req.name)
        assert name in lock, (
            f"{req.name} is a dependency but constraints.txt does not pin it: run `make lock`"
        )
        assert req.specifier.contains(lock[name], prereleases=True), (
            f"the lock's {name}=={lock[name]} is outside {req}"
        )


def test_the_oldest_stack_installs_each_declared_minimum() -> None:
    oldest = _pins(ROOT / "constraints-oldest.txt")
    for req in _requirements(extras=False):
        minimums = [Version(spec.version) for spec in req.specifier if spec.operator == ">="]
        assert minimums, f"{req} declares no lower bound: say which oldest version is supported"
        name = canonicalize_name(req.name)
        assert oldest.get(name) == minimums[0], (
            f"{req.name}: declared minimum {minimums[0]}, constraints-oldest.txt tests {oldest.get(name)}"
        )

"""The import contracts that ``make lint`` checks (``[tool.importlinter]`` in the root pyproject.toml)
cover every installed plugin.

import-linter analyses only the packages it is given, and its module patterns cannot say "any
package named peftkit_*", so each plugin is listed by name; a plugin added without being listed
would escape the "no private core imports" and "the core never imports a plugin" contracts.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
# Each contract that must name every plugin, and the option where it does.
PLUGIN_LISTS = {
    "core-imports-no-plugin": "forbidden_modules",
    "plugins-independent": "modules",
    "discovery-names-no-torch": "source_modules",
}


def _installed_plugin_packages() -> set[str]:
    """The top-level import package behind every ``peftkit`` entry point."""
    return {ep.module.partition(".")[0] for ep in metadata.entry_points(group="peftkit")}


def test_every_installed_plugin_is_listed_in_the_import_contracts() -> None:
    plugins = _installed_plugin_packages()
    assert len(plugins) >= 7, f"only {sorted(plugins)} installed: run `make install`"
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contracts = {contract["id"]: contract for contract in config["contracts"]}
    lists = {"root_packages": set(config["root_packages"])} | {
        f"contract {cid!r} {option}": set(contracts[cid][option]) for cid, option in PLUGIN_LISTS.items()
    }
    missing = {where: sorted(plugins - listed) for where, listed in lists.items() if plugins - listed}
    assert not missing, f"plugins missing from [tool.importlinter] in pyproject.toml: {missing}"

"""docs/plugins.md is checked against the code that is the contract: every extension point is documented."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from peftkit import errors, hookspecs
from peftkit._registry import Method
from peftkit.layer import CONTRACT_METHODS, AdapterLayer

DOC = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
DOCUMENTED = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", DOC))  # prose, tables and code blocks alike


def _names() -> list[tuple[str, str]]:
    plugin_hooks = [
        n for n, f in vars(hookspecs).items() if n.startswith("peftkit_") and inspect.isfunction(f)
    ]
    layer_attributes = [n for n in AdapterLayer.__annotations__ if not n.startswith("_")]
    return (
        [("plugin hook", n) for n in plugin_hooks]
        + [("method hook", n) for n in hookspecs.METHOD_HOOK_NAMES]
        + [("Method field", f.name) for f in dataclasses.fields(Method)]
        + [("layer method", n) for n in CONTRACT_METHODS]
        + [("layer attribute", n) for n in layer_attributes]
        + [("error", n) for n in errors.__all__]
    )


@pytest.mark.parametrize(("kind", "name"), _names(), ids=lambda v: v if isinstance(v, str) else None)
def test_every_extension_point_is_in_docs_plugins(kind: str, name: str) -> None:
    assert name in DOCUMENTED, (
        f"the {kind} {name!r} is part of the plugin contract but docs/plugins.md never names it"
    )

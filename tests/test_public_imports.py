"""Plugins import only peftkit's public names, so the core can change its private modules freely."""

from __future__ import annotations

import re
from pathlib import Path

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"
PRIVATE = re.compile(r"^\s*(from|import)\s+peftkit\._", re.MULTILINE)


def test_no_plugin_imports_a_private_core_module() -> None:
    found = [
        f"{path.relative_to(PLUGINS)}:{text[: m.start()].count(chr(10)) + 1}"
        for path in sorted(PLUGINS.glob("*/src/**/*.py"))
        for text in [path.read_text()]
        for m in PRIVATE.finditer(text)
    ]
    assert not found, f"plugins import private core modules (export what they need instead): {found}"

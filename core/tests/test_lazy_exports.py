"""``peftkit``'s lazily exported names and the imports that give them their types agree.

``import peftkit`` stays light by resolving public names in ``__getattr__`` from ``_LAZY``; type
checkers cannot follow that, so ``peftkit/__init__.py`` also imports each name under
``TYPE_CHECKING``. A name in one but not the other is either untyped for plugins or missing at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import peftkit


def _type_checking_imports() -> dict[str, str]:
    tree = ast.parse(Path(peftkit.__file__).read_text())
    blocks = [
        node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    ]
    assert len(blocks) == 1, "expected one `if TYPE_CHECKING:` block in peftkit/__init__.py"
    return {
        alias.asname or alias.name: node.module or ""
        for node in blocks[0].body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


def test_every_lazy_name_is_imported_for_type_checkers_from_the_same_module() -> None:
    typed = _type_checking_imports()
    wrong = {
        name: (typed.get(name), module) for name, module in peftkit._LAZY.items() if typed.get(name) != module
    }
    extra = sorted(set(typed) - set(peftkit._LAZY))
    assert not wrong and not extra, (
        "make the `if TYPE_CHECKING:` imports in peftkit/__init__.py match _LAZY; "
        f"name: (imported from, exported from) {wrong}; imported but not exported: {extra}"
    )

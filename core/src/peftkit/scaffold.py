"""``peftkit new-plugin NAME``: write a ready method plugin package to start a new PEFT method from.

The package it writes installs with ``pip install -e``, registers the method through the ``peftkit``
entry point, and runs the core's conformance suite in its tests. Its method is a small working
low-rank additive update, so every test passes before the author changes a line. Imports no torch.
"""

from __future__ import annotations

import keyword
import os
import re
from string import Template

from peftkit.errors import PeftkitError

__all__ = ["ScaffoldError", "new_plugin", "plugin_files"]

_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


class ScaffoldError(PeftkitError, ValueError):
    """The plugin name or target folder given to ``new-plugin`` cannot be used."""


def check_name(name: str) -> None:
    """Raise ScaffoldError unless ``name`` is a lower-case Python identifier usable as a method name."""
    if not _NAME.match(name) or keyword.iskeyword(name) or name.endswith("_"):
        raise ScaffoldError(
            f"plugin name {name!r} must be a lower-case Python identifier: a letter, then lower-case "
            "letters, digits or '_' (not ending in '_'), for example 'mymethod' or 'my_method'"
        )


def _words(name: str) -> dict[str, str]:
    camel = "".join(part.capitalize() for part in name.split("_") if part)
    return {
        "name": name,
        "Name": camel,
        "NAME": name.upper(),
        "pkg": f"peftkit_{name}",
        "dist": f"peftkit-{name.replace('_', '-')}",
    }


def plugin_files(name: str) -> dict[str, str]:
    """The files of a new plugin for method ``name``: path relative to the package folder -> text."""
    check_name(name)
    words = _words(name)
    pkg = words["pkg"]
    files = {
        "pyproject.toml": _PYPROJECT,
        "README.md": _README,
        f"src/{pkg}/__init__.py": _INIT,
        f"src/{pkg}/config.py": _CONFIG,
        f"src/{pkg}/layer.py": _LAYER,
        f"tests/test_{name}_conformance.py": _CONFORMANCE,
        f"tests/test_{name}_layer.py": _LAYER_TEST,
    }
    return {path: Template(text).substitute(words) for path, text in files.items()}


def new_plugin(name: str, directory: str | os.PathLike[str] = ".") -> str:
    """Write the plugin package for ``name`` into ``directory/peftkit-NAME`` and return that folder.

    Refuses (ScaffoldError) a folder that exists and is not empty, so nothing is ever overwritten.
    """
    files = plugin_files(name)
    root = os.path.join(os.fspath(directory), _words(name)["dist"])
    if os.path.isfile(root):
        raise ScaffoldError(f"{root!r} is a file; pick another --dir")
    if os.path.isdir(root) and os.listdir(root):
        raise ScaffoldError(
            f"{root!r} already exists and is not empty; remove it or pick another --dir (nothing was written)"
        )
    for path, text in files.items():
        file = os.path.join(root, path)
        os.makedirs(os.path.dirname(file), exist_ok=True)
        with open(file, "w", encoding="utf-8") as fh:
            fh.write(text)
    return root


_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "$dist"
version = "0.1.0"
description = "The $name method for peftkit."
readme = "README.md"
requires-python = ">=3.10"
license = "Apache-2.0"
# The plugin contract may change between peftkit minor versions: pin the minor you tested against.
dependencies = ["peftkit>=0.1,<0.2"]

[project.optional-dependencies]
test = ["pytest>=8"]

# How peftkit finds the plugin: group "peftkit", entry-point name = method name, value = the module
# holding the hook implementations.
[project.entry-points.peftkit]
$name = "$pkg"

[tool.hatch.build.targets.wheel]
packages = ["src/$pkg"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

_README = """\
# $dist

The `$name` method for [peftkit](https://github.com/peftkit/peftkit), written with
`peftkit new-plugin $name`. It starts as a small working method, a low-rank additive update

    y = W x + b + (alpha / r) * B A x        A: (r, in), B: (out, r)

on linear layers (`nn.Linear`, GPT-2 `Conv1D`), so that everything below works before you change
a line. Replace the math with your method's.

## Layout

| file | what it holds |
| --- | --- |
| `pyproject.toml` | the `peftkit` entry point `$name = "$pkg"` that makes peftkit find the plugin |
| `src/$pkg/__init__.py` | `peftkit_register_methods`: registers the method by name, lazily |
| `src/$pkg/config.py` | `${Name}Config`, the settings saved in `adapter_config.json` |
| `src/$pkg/layer.py` | `${Name}Layer`: adapter tensors, forward and merge |
| `tests/test_${name}_conformance.py` | the core's conformance suite on this method's configs |
| `tests/test_${name}_layer.py` | the method's own math |

## Develop

    pip install -e .
    peftkit list-methods        # shows $name, from $dist
    pytest

```python
import peftkit

config = peftkit.config("$name", r=8, target_modules=["q_proj", "v_proj"])
model = peftkit.get_peft_model(base_model, config)
```

Adapters are saved as `adapter_config.json` (with `"peft_type": "$NAME"`) and
`adapter_model.safetensors`, whose keys are the in-memory parameter names with the adapter name
removed, for example `base_model.model.lin0.${name}_A`.

## Publish

Keep the distribution name `$dist` and the import package `$pkg`, depend on the peftkit minor
version you tested (`peftkit>=0.1,<0.2`), then `python -m build` and upload the wheel. The
plugin author's guide (`docs/plugins.md` in peftkit) describes every hook.
"""

_INIT = '''\
"""$dist: the $name method for peftkit.

The ``peftkit`` entry point names this module, so it imports nothing heavy: the config and layer
classes are given as ``"module:attr"`` strings, imported when the method is first used.
"""

from __future__ import annotations

from typing import Any

from peftkit import Method, hookimpl

__all__ = ["${Name}Config"]


@hookimpl
def peftkit_register_methods(register: Any) -> None:
    register(
        Method(
            name="$name",
            peft_type="$NAME",
            config="$pkg.config:${Name}Config",
            layer="$pkg.layer:${Name}Layer",
            prefix="${name}_",
            # Modules adapted when the user leaves target_modules unset, per transformers model_type.
            default_targets={"llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"]},
            layer_types=("Linear", "Conv1D"),
        )
    )


def __getattr__(name: str) -> Any:
    if name == "${Name}Config":
        from $pkg.config import ${Name}Config

        return ${Name}Config
    raise AttributeError(name)
'''

_CONFIG = '''\
"""``${Name}Config``: the settings of the $name method, saved in ``adapter_config.json``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import peftkit


@dataclass
class ${Name}Config(peftkit.PeftConfig):
    """Settings of a $name adapter.

    ``r`` is the rank of the update and ``alpha`` its scale (the update is multiplied by
    ``alpha / r``). ``init_weights=True`` starts ``B`` at zero, so the adapter begins as the
    identity; ``False`` starts it random (for tests).
    """

    PEFT_TYPE: ClassVar[str] = "$NAME"
    # Only used when the adapter is created, so editing it in a saved adapter_config.json is harmless.
    NON_SHAPING_FIELDS: ClassVar[frozenset[str]] = frozenset({"init_weights"})

    r: int = 8
    alpha: float = 8.0
    init_weights: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise peftkit.ConfigError(f"r must be a positive integer, got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)):
            raise peftkit.ConfigError(f"alpha must be a number, got {self.alpha!r}")
        if not isinstance(self.init_weights, bool):
            raise peftkit.ConfigError(f"init_weights must be true or false, got {self.init_weights!r}")
'''

_LAYER = '''\
"""The $name layer: ``y = base(x) + (alpha / r) * B A x`` for every active adapter.

Shapes: ``x`` ``(..., in)``, ``A`` ``(r, in)`` (stored as ``${name}_A[adapter]``), ``B`` ``(out, r)``
(``${name}_B[adapter]``). The base-layer view gives ``in_features`` / ``out_features`` in PyTorch's
``(out, in)`` layout whatever the layer stores (GPT-2 ``Conv1D`` is transposed for you), so one
code path serves every linear backend. Merging is additive: ``delta_W = (alpha / r) * B @ A``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from peftkit import AdapterLayer


class ${Name}Layer(AdapterLayer):
    """A base linear layer plus named $name adapters; see the module docstring for the math."""

    # Plain dicts keyed by adapter name, cleaned by the core when an adapter is deleted.
    adapter_dicts = ("scaling",)

    def __init__(self, base_layer: nn.Module, view: Any) -> None:
        super().__init__(base_layer, view)
        # Attribute names start with the method's prefix ("${name}_"): the core saves, freezes and
        # counts adapter tensors by it.
        self.${name}_A = nn.ParameterDict()
        self.${name}_B = nn.ParameterDict()
        self.scaling: dict[str, float] = {}

    def create_adapter(self, name: str, config: Any) -> None:
        if self.view.kind != "linear":
            raise ValueError(f"$name adapts linear layers only, not {self.view.layer_type}")
        r, n_in, n_out = config.r, self.view.in_features, self.view.out_features
        a = torch.empty(r, n_in)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        b = torch.zeros(n_out, r) if config.init_weights else torch.randn(n_out, r) * 0.1
        self.${name}_A[name] = nn.Parameter(a)
        self.${name}_B[name] = nn.Parameter(b)
        self.scaling[name] = config.alpha / r

    def adapter_forward(self, x: torch.Tensor, result: torch.Tensor, name: str) -> torch.Tensor:
        a, b = self.${name}_A[name], self.${name}_B[name]
        update = (x.to(a.dtype) @ a.T) @ b.T * self.scaling[name]
        return result + update.to(result.dtype)

    def delta_weight(self, name: str) -> torch.Tensor:
        return self.${name}_B[name] @ self.${name}_A[name] * self.scaling[name]
'''

_CONFORMANCE = '''\
"""peftkit's conformance suite on the $name method: forward, identity at init, training, save and
load, merge, safe merge, disable, several adapters, requires_grad rules, dtypes, modules_to_save."""

from __future__ import annotations

from peftkit.testing import Case, ConformanceSuite


class Test${Name}Conformance(ConformanceSuite):
    method = "$name"
    identity_init = {"init_weights": True}
    random_init = {"init_weights": False}
    cases = [
        Case("mlp", {"target_modules": ["lin0", "lin1"], "r": 2}),
        Case("emb_conv1d", {"target_modules": ["conv1d"], "r": 4}, id="gpt2-conv1d"),
    ]
'''

_LAYER_TEST = '''\
"""The $name method's own math and settings."""

from __future__ import annotations

import pytest
import torch

import peftkit
from peftkit.testing import make_inputs, make_model


def test_registered_under_its_name() -> None:
    names = {m["method"] for m in peftkit.list_methods()}
    assert "$name" in names


def test_forward_matches_the_formula() -> None:
    config = peftkit.config("$name", target_modules=["lin0"], r=2, alpha=4.0, init_weights=False)
    model = peftkit.get_peft_model(make_model("mlp"), config)
    layer = model.base_model.model.lin0
    x = make_inputs("mlp")
    a, b = layer.${name}_A["default"], layer.${name}_B["default"]
    expected = layer.base_layer(x) + (4.0 / 2) * x @ a.T @ b.T
    torch.testing.assert_close(layer(x), expected)


def test_bad_rank_is_a_config_error() -> None:
    with pytest.raises(peftkit.ConfigError, match="positive integer"):
        peftkit.config("$name", r=0)
'''

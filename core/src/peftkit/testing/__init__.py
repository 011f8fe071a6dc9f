"""peftkit's conformance suite: the behaviours every method plugin must pass, as a pytest plugin.

This module is registered with pytest through the ``pytest11`` entry point of the ``peftkit``
distribution, so it is active in every pytest run once peftkit is installed. It imports
neither torch nor the suite until a test file asks for them.

How a plugin author uses it
---------------------------
Write one test file in your plugin (name it ``test_<method>_conformance.py`` so its module
name is unique across plugins) containing one class::

    from peftkit.testing import Case, ConformanceSuite

    class TestMissConformance(ConformanceSuite):
        method = "miss"                          # the name your plugin registers
        identity_init = {"init_weights": True}   # config fields that make the adapter a no-op at init
        random_init = {"init_weights": False}    # config fields that make it change the output at init
        cases = [
            Case("mlp", {"target_modules": ["lin0", "lin1"], "r": 2}),
            Case("emb_conv1d", {"target_modules": ["conv1d"], "r": 4}, id="gpt2-conv1d"),
        ]

Every ``test_*`` method of :class:`ConformanceSuite` then runs once per case: forward shape,
identity at init, training touches only adapter parameters (names starting with your
method's registered ``prefix``), save/load round trip and on-disk format, merge / unmerge /
unload, safe merge refusing NaN, ``disable_adapter``, several adapters (deleting one leaves
none of its tensors), ``requires_grad`` rules, bf16/fp16 bases, ``modules_to_save``, moving the
model with ``.to(dtype)``, ``.half()``, ``.bfloat16()``, ``.float()`` and ``.to(device)`` (CUDA
where present; a layer class that shadows a ``torch.nn.Module`` method fails here), and
``torch.compile``. Then the behaviours of adapters used together, each with a second random
adapter ``other``:

* several active adapters stack: with ``set_adapter(["default", "other"])`` the output differs
  from each adapter alone, and merging both gives the output of running them unmerged (input
  scales multiply, updates of the running output compose, as stacked merges do);
* mixed batches: ``model(x, adapter_names=[...])`` gives each sample what its adapter gives
  alone (``"__base__"``: none), whatever adapters are active;
* input and output sides: each adapted layer runs its base layer at most once per forward (one
  adapter, two, a mixed batch), and where a case declares ``input_side=[...]`` (modules the
  method acts on through their input, like ``target_modules``) exactly those base layers see a
  changed input.

One behaviour runs once per class rather than per case: on the ``llama_like`` model, whose
``config.model_type`` is ``"llama"``, a config without ``target_modules`` adapts exactly the
method's ``default_targets["llama"]``, saves them and reloads; an explicit ``target_modules`` wins
over them; and every key of ``default_targets`` is a ``model_type`` transformers knows. It is
skipped for methods without llama defaults; set ``default_targets_config`` on the class if the
method's defaults need other fields there.

The tiny models are described in :mod:`peftkit.testing.models` (non-square Linear and GPT-2
``Conv1D`` layers, every bias random); build them yourself with ``make_model(name)`` and
``make_inputs(name)`` for method-specific tests. A case's ``config`` never contains the init
fields: the suite adds ``identity_init`` or ``random_init`` itself. ``test_modules_to_save``
runs on cases that set ``modules_to_save`` and on those that leave the model's output layer
untargeted (it is then saved as the module copy). A method whose merge is inherently
inexact may widen ``merge_atol`` / ``unmerge_atol`` on its class, where reviewers see it;
one whose configs need more than keyword fields can override ``config(case, init)``.
With ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, enable the plugin with ``-p peftkit.testing``.

A backend plugin subclasses :class:`BackendSuite` instead, which runs every installed method
that adapts its kinds of view on its layers; see :mod:`peftkit.testing.backend_suite`.
"""

from __future__ import annotations

import sys
from importlib import import_module
from typing import Any

_LAZY = {
    "Case": "peftkit.testing.suite",
    "ConformanceSuite": "peftkit.testing.suite",
    "make_model": "peftkit.testing.models",
    "make_inputs": "peftkit.testing.models",
    "MODEL_NAMES": "peftkit.testing.models",
    "BackendCase": "peftkit.testing.backend_suite",
    "BackendSuite": "peftkit.testing.backend_suite",
}

__all__ = [
    "MODEL_NAMES",
    "BackendCase",
    "BackendSuite",
    "Case",
    "ConformanceSuite",
    "make_inputs",
    "make_model",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'peftkit.testing' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def pytest_generate_tests(metafunc: Any) -> None:
    """Parametrize each test method of a ConformanceSuite subclass over the class's cases (argument ``case``)."""
    # A ConformanceSuite subclass can only exist once the suite module was imported, so a run
    # without conformance tests never imports torch from here.
    suite = sys.modules.get("peftkit.testing.suite")
    cls = metafunc.cls
    backends = sys.modules.get("peftkit.testing.backend_suite")
    if backends is not None and cls is not None and issubclass(cls, backends.BackendSuite):
        if "case" in metafunc.fixturenames:
            cases = cls.cases()
            metafunc.parametrize("case", cases, ids=[case.id for case in cases])
        return
    if suite is None or cls is None or not issubclass(cls, suite.ConformanceSuite):
        return
    if "case" not in metafunc.fixturenames:
        return
    pairs = cls.cases_for(metafunc.function.__name__)
    metafunc.parametrize("case", [case for case, _ in pairs], ids=[label for _, label in pairs])

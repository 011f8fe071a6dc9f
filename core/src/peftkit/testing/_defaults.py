"""The suite's behaviour about a method's default targets, on a model that says what it is.

A mixin of :class:`peftkit.testing.ConformanceSuite`, which provides ``wrap``, ``method``,
``random_init`` and ``identity_atol``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch

from peftkit.layer import AdapterLayer
from peftkit.testing._probes import _run
from peftkit.testing.models import make_inputs, make_model

#: The ``model_type`` of the ``llama_like`` model, whose default targets the behaviour fills.
_MODEL_TYPE = "llama"
#: Modules of ``llama_like`` that an explicit ``target_modules`` may name instead of the defaults.
_EXPLICIT = ("o_proj", "up_proj", "q_proj")


class DefaultTargetBehaviours:
    """Behaviour 17: ``target_modules`` left unset fills the method's defaults for the model's type."""

    method: ClassVar[str]
    random_init: ClassVar[dict[str, Any]]
    identity_atol: ClassVar[float]
    #: Config fields of the ``llama_like`` model's adapter in this behaviour (``target_modules`` is left
    #: unset). Empty by default: the method's own defaults, which the user who passes nothing gets.
    default_targets_config: ClassVar[dict[str, Any]] = {}

    def wrap(self, case: Any, init: Any, seed: int = 0, **kwargs: Any) -> Any:
        raise NotImplementedError

    # --- 17. default targets ----------------------------------------------------------------------
    def test_default_targets_fill(self, tmp_path: Any) -> None:
        """Every ``model_type`` in the method's ``default_targets`` is one transformers knows. On the
        ``llama_like`` model (``config.model_type == "llama"``), a config without ``target_modules`` adapts
        exactly the method's defaults for llama, saves them as its ``target_modules`` and reloads with
        the same outputs; an explicit ``target_modules`` there is used instead of the defaults.
        Skipped for methods with no defaults for llama."""
        from peftkit import PeftModel, name_matcher
        from peftkit._plugins import registry
        from peftkit.testing.suite import Case

        defaults_by_type = registry().by_name(self.method).default_targets
        unknown = sorted(set(defaults_by_type) - _transformers_model_types(defaults_by_type))
        assert not unknown, f"default_targets names model types transformers does not know: {unknown}"
        defaults = defaults_by_type.get(_MODEL_TYPE)
        if not defaults:
            pytest.skip(f"method {self.method!r} has no default targets for model_type {_MODEL_TYPE!r}")

        x = make_inputs("llama_like")
        paths = [path for path, _ in make_model("llama_like").named_modules() if path]
        expected = {path for path in paths if name_matcher(list(defaults))(path)}
        assert expected, f"the llama_like model has none of the method's llama defaults {list(defaults)}"
        model = self.wrap(Case("llama_like", self.default_targets_config), self.random_init)
        assert _adapted(model) == expected, (
            f"with target_modules unset, {sorted(_adapted(model))} were adapted, not the defaults {list(defaults)}"
        )
        saved = model.peft_config["default"].target_modules
        assert saved is not None and set(saved) == set(defaults), (
            f"the config keeps target_modules={saved!r}, not the defaults it adapted {list(defaults)}"
        )
        out = _run(model, x)
        assert not torch.allclose(out, _run(make_model("llama_like"), x), atol=self.identity_atol), (
            "the adapter on the default targets does not change the output"
        )
        model.save_pretrained(tmp_path)
        loaded = PeftModel.from_pretrained(make_model("llama_like"), tmp_path)
        assert torch.equal(_run(loaded, x), out), "the adapter on the default targets reloads differently"

        explicit = next(name for name in _EXPLICIT if name not in defaults)
        config = {**self.default_targets_config, "target_modules": [explicit]}
        chosen = _adapted(self.wrap(Case("llama_like", config), self.random_init))
        assert {path.rsplit(".", 1)[-1] for path in chosen} == {explicit}, (
            f"target_modules=[{explicit!r}] on a llama model adapted {sorted(chosen)}"
        )


def _adapted(model: Any) -> set[str]:
    """Paths of the adapted layers, relative to the base model (``model.layers.0.self_attn.q_proj``)."""
    return {path for path, m in model.get_base_model().named_modules() if isinstance(m, AdapterLayer)}


def _transformers_model_types(fallback: Any) -> set[str]:
    """The ``model_type`` names transformers registers; ``fallback``'s keys when transformers is missing."""
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    except ImportError:
        return set(fallback)
    return set(CONFIG_MAPPING_NAMES)

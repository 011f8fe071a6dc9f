"""peftkit: parameter-efficient fine-tuning as a small core plus method plugins.

``import peftkit`` stays light: torch and transformers load on first use of a name that needs them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

import pluggy

from peftkit import errors as _errors
from peftkit._version import __version__

hookimpl = pluggy.HookimplMarker("peftkit")

# public name -> module that defines it (imported on first access)
_LAZY = {
    "Method": "peftkit._registry",
    "PeftConfig": "peftkit._config",
    "TaskType": "peftkit._config",
    "PeftType": "peftkit._config",
    "name_matcher": "peftkit._targeting",
    "config": "peftkit._api",
    "list_methods": "peftkit._api",
    "get_peft_model": "peftkit.tasks",
    "prepare_model_for_kbit_training": "peftkit.kbit",
    "PeftModel": "peftkit.peft_model",
    "PeftModelForCausalLM": "peftkit.tasks",
    "PeftModelForSeq2SeqLM": "peftkit.tasks",
    "PeftModelForSequenceClassification": "peftkit.tasks",
    "PeftModelForTokenClassification": "peftkit.tasks",
    "PeftModelForQuestionAnswering": "peftkit.tasks",
    "PeftModelForFeatureExtraction": "peftkit.tasks",
    "AdapterLayer": "peftkit.layer",
    "hotswap_adapter": "peftkit._hotswap",
    "prepare_model_for_compiled_hotswap": "peftkit._hotswap",
    "BaseLayerView": "peftkit.views",
    "inject_adapter_in_model": "peftkit.functional",
    "get_peft_model_state_dict": "peftkit.functional",
    "set_peft_model_state_dict": "peftkit.functional",
    "get_base_model_state_dict": "peftkit.functional",
    "set_base_model_state_dict": "peftkit.functional",
}
# The error classes (peftkit.errors imports nothing heavy, so they are cheap to import eagerly).
_LAZY.update(dict.fromkeys(_errors.__all__, "peftkit.errors"))

__all__ = ["__version__", "hookimpl", *_LAZY]

# The same names for type checkers, which cannot see through __getattr__; a test keeps the two in step.
if TYPE_CHECKING:
    from peftkit._api import config, list_methods
    from peftkit._config import PeftConfig, PeftType, TaskType
    from peftkit._hotswap import hotswap_adapter, prepare_model_for_compiled_hotswap
    from peftkit._registry import Method
    from peftkit._targeting import name_matcher
    from peftkit.errors import (
        CheckpointError,
        ConfigError,
        DuplicateMethodError,
        HotswapError,
        LayerContractError,
        MergeNotSupportedError,
        PeftkitError,
        PluginContractError,
        PluginImportError,
        UnknownMethodError,
        UnsafeMergeError,
        UnsupportedLayerError,
    )
    from peftkit.functional import (
        get_base_model_state_dict,
        get_peft_model_state_dict,
        inject_adapter_in_model,
        set_base_model_state_dict,
        set_peft_model_state_dict,
    )
    from peftkit.kbit import prepare_model_for_kbit_training
    from peftkit.layer import AdapterLayer
    from peftkit.peft_model import PeftModel
    from peftkit.tasks import (
        PeftModelForCausalLM,
        PeftModelForFeatureExtraction,
        PeftModelForQuestionAnswering,
        PeftModelForSeq2SeqLM,
        PeftModelForSequenceClassification,
        PeftModelForTokenClassification,
        get_peft_model,
    )
    from peftkit.views import BaseLayerView


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        if name.endswith("Config") and not name.startswith("_"):
            return _plugin_config_class(name)
        raise AttributeError(f"module 'peftkit' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def _plugin_config_class(name: str) -> type:
    """An installed method's config class by its name, so ``from peftkit import LoraConfig`` works as in PEFT.

    Looked up in the plugin registry on every access (not cached): which plugins are installed decides it.
    """
    from peftkit._plugins import registry

    found = registry().config_class_named(name)
    if found is None:
        installed = ", ".join(sorted(registry().methods)) or "none"
        raise AttributeError(
            f"module 'peftkit' has no attribute {name!r}: no installed method plugin has a config class of "
            f"that name (installed methods: {installed}); install the plugin that provides it"
        )
    return found


def __dir__() -> list[str]:
    return sorted(__all__)

"""Every error peftkit raises on purpose, under one root: :class:`PeftkitError`. Imports nothing heavy.

``except peftkit.PeftkitError`` catches what a caller can act on (a bad config, a checkpoint that
does not fit, a layer no method can adapt, a broken plugin); anything else is a bug. Each class
also derives from the built-in exception code written for Hugging Face PEFT catches (``ValueError``
for bad values, ``TypeError`` for wrong kinds, ``KeyError`` for unknown names), so switching the
import keeps working ``except`` clauses. Plugins raise these, never their own look-alikes.
"""

from __future__ import annotations


class PeftkitError(Exception):
    """The root of every error peftkit (or a plugin, through these classes) raises for the caller to act on."""


class ConfigError(PeftkitError, ValueError):
    """An adapter config is malformed or names something that does not exist."""


class CheckpointError(PeftkitError, ValueError):
    """An adapter weights file is missing, corrupt, or does not fit the model."""


class UnsupportedLayerError(PeftkitError, TypeError):
    """A targeted module is of a type no installed backend or the method can adapt."""


class UnknownMethodError(PeftkitError, KeyError):
    """No installed plugin serves the requested method name, PEFT type or converter."""

    def __str__(self) -> str:
        return str(self.args[0])


class DuplicateMethodError(PeftkitError, RuntimeError):
    """Two installed distributions register the same method name, PEFT type or converter name."""


class PluginImportError(PeftkitError, ImportError):
    """A plugin's lazily named class or hook (``"module:attr"``) could not be imported when first used."""


class PluginContractError(PeftkitError, TypeError):
    """A plugin provides something the contract does not declare, or declares it with the wrong shape."""


class LayerContractError(PluginContractError):
    """A method's layer class breaks the adapter-layer contract (for example it shadows an nn.Module method)."""


class MergeNotSupportedError(PeftkitError, RuntimeError):
    """The base layer cannot take a merged weight (for example an integer weight with no writer)."""


class UnsafeMergeError(PeftkitError, ValueError):
    """Merging would put NaN or inf into the base weight; nothing was changed."""


class HotswapError(ConfigError):
    """The saved adapter cannot replace the loaded one in place; nothing was changed."""


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DuplicateMethodError",
    "HotswapError",
    "LayerContractError",
    "MergeNotSupportedError",
    "PeftkitError",
    "PluginContractError",
    "PluginImportError",
    "UnknownMethodError",
    "UnsafeMergeError",
    "UnsupportedLayerError",
]

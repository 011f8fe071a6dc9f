"""Merging adapters into the base weights and taking adapter layers out again, for ``PeftModel``."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from peftkit import _injection
from peftkit.layer import AdapterLayer, ModulesToSave, UnsafeMergeError


class MergingMixin:
    """``merge_adapter``, ``unmerge_adapter``, ``merge_and_unload`` and ``unload`` over every adapter layer."""

    def _adapter_modules(self) -> Iterator[AdapterLayer[Any] | ModulesToSave]:
        raise NotImplementedError

    def get_base_model(self) -> Any:
        raise NotImplementedError

    def merge_adapter(self, adapter_names: Sequence[str] | None = None, safe_merge: bool = False) -> None:
        """Fold adapters (default: active) into the base weights; with ``safe_merge`` NaN/inf are caught first."""
        layers = [m for m in self._adapter_modules() if isinstance(m, AdapterLayer)]
        _warn_if_merged(layers, adapter_names)
        if safe_merge:
            self._check_merge_safe(layers, adapter_names)
        for layer in layers:
            layer.merge(safe_merge=safe_merge, adapter_names=adapter_names)

    def _check_merge_safe(self, layers: list[AdapterLayer[Any]], adapter_names: Sequence[str] | None) -> None:
        """Check every layer before merging any, so a bad adapter leaves the whole model untouched."""
        for layer in layers:
            names = layer.active_adapters if adapter_names is None else adapter_names
            weight = layer.view.read_weight().float()
            finite_bias = True
            for name in names:
                if name in layer.adapter_configs and name not in layer.merged_adapters:
                    weight = layer.merged_weight(weight, name)
                    bias_delta = layer.delta_bias(name)  # a bias update would be merged too
                    finite_bias = finite_bias and (
                        bias_delta is None or bool(torch.isfinite(bias_delta).all())
                    )
            if not finite_bias or not torch.isfinite(weight).all():
                raise UnsafeMergeError(
                    f"merging {list(names)} would put NaN/inf into a {layer.view.layer_type}; nothing was merged"
                )

    def unmerge_adapter(self) -> None:
        for module in self._adapter_modules():
            if isinstance(module, AdapterLayer):
                module.unmerge()

    def merge_and_unload(
        self, safe_merge: bool = False, adapter_names: Sequence[str] | None = None
    ) -> nn.Module:
        """Merge adapters into the base weights and return the plain model, adapter layers removed."""
        self.merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge)
        return self._unload(keep_merged=True)

    def unload(self) -> nn.Module:
        """Remove every adapter layer without merging and return the original model."""
        return self._unload(keep_merged=False)

    def _unload(self, keep_merged: bool) -> nn.Module:
        model = self.get_base_model()
        self._unloaded = True  # the wrapper no longer holds its adapters: saving it must refuse
        for path, module in list(model.named_modules()):
            if isinstance(module, AdapterLayer):
                if not keep_merged:
                    module.unmerge()
                _injection.set_submodule(model, path, module.base_layer)
            elif isinstance(module, ModulesToSave):
                _injection.set_submodule(
                    model, path, module.current() if keep_merged else module.original_module
                )
        return model

    def _switch_merged(self, layers: list[AdapterLayer[Any]], names: list[str]) -> None:
        blocked = [
            layer
            for layer in layers
            if not layer.view.supports_merge and any(n in layer.adapter_configs for n in names)
        ]
        if blocked:
            warnings.warn(
                f"set_adapter on a merged model: {blocked[0].view.layer_type} cannot be merged into, "
                "so every adapter is unmerged and runs unfused"
            )
            for layer in layers:
                layer.unmerge()
            return
        for layer in layers:
            layer.switch_merged(names)


def _warn_if_merged(layers: list[AdapterLayer[Any]], adapter_names: Sequence[str] | None) -> None:
    """Warn, as Hugging Face PEFT does, when asked to merge adapters already merged (peftkit leaves those as they are)."""
    already = sorted(
        {
            name
            for layer in layers
            for name in (layer.active_adapters if adapter_names is None else adapter_names)
            if name in layer.merged_adapters
        }
    )
    if already:
        warnings.warn(
            f"adapter(s) {already} are already merged; merging them again changes nothing "
            "(peftkit merges an adapter at most once)"
        )

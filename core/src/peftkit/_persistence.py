"""Saving adapters to folders (and the Hub) and loading them back, for ``PeftModel``.

Loads go through one sequence (:func:`_checked_load`): the adapter is first built on the meta device
and its shapes checked against the file, then built for real and filled; on any error the model is
left exactly as it was.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from peftkit import _injection, _state_dict
from peftkit._adapter_names import check_adapter_name
from peftkit._config import PeftConfig
from peftkit.layer import AdapterLayer

if TYPE_CHECKING:
    from peftkit._registry import Method
    from peftkit.layer import ModulesToSave

    _MixedInto = nn.Module
else:
    _MixedInto = object


def _read(
    kind: str, model_id: Any, config: PeftConfig | None, kwargs: dict[str, Any]
) -> tuple[Any, dict[str, torch.Tensor]]:
    """The saved adapter's config and tensors, read with the load keywords ``kind`` accepts (on ``torch_device``)."""
    from peftkit import _load_options
    from peftkit._saving import read_adapter

    options = _load_options.split_load_kwargs(kind, kwargs)
    loaded, tensors = read_adapter(model_id, config, **options.reader)
    return loaded, _load_options.to_device(tensors, options.torch_device)


def _checked_load(
    owner: nn.Module,
    name: str,
    build: Callable[[bool], Any],
    tensors: dict[str, torch.Tensor],
    source: Any,
    low_cpu_mem_usage: bool,
    autocast: bool,
    ignore_mismatched_sizes: bool,
) -> tuple[Any, list[str]]:
    """Add adapter ``name`` with ``build(meta)`` and fill it from ``tensors``; ``(peft model, unexpected keys)``.

    Shapes are checked on the meta device first; any error leaves ``owner`` as it was.
    """
    from peftkit import _preflight

    with _preflight.restored_on_error(owner, name):
        _preflight.check_shapes_on_meta(
            build, owner, name, tensors, ignore_mismatched_sizes=ignore_mismatched_sizes
        )
        peft_model = build(False)
        unexpected = peft_model._load_state(
            name, tensors, low_cpu_mem_usage, source, autocast, ignore_mismatched_sizes
        )
    return peft_model, unexpected


class PersistenceMixin(_MixedInto):
    """``save_pretrained``, ``push_to_hub``, ``from_pretrained`` and ``load_adapter`` of ``PeftModel``."""

    peft_config: dict[str, PeftConfig]

    if TYPE_CHECKING:  # PeftModel, which this is mixed into, defines these

        def method_for(self, adapter_name: str) -> Method: ...
        def _method_hook(self, adapter_name: str, name: str) -> Any: ...
        def _adapter_modules(self) -> Iterator[AdapterLayer[Any] | ModulesToSave]: ...
        def _cast_adapter(self, adapter_name: str, autocast: bool | None = None) -> None: ...
        def add_adapter(
            self,
            adapter_name: str,
            peft_config: PeftConfig,
            low_cpu_mem_usage: bool = False,
            autocast_adapter_dtype: bool | None = None,
        ) -> None: ...

    def save_pretrained(
        self,
        save_directory: str | os.PathLike[str],
        selected_adapters: Sequence[str] | None = None,
        safe_serialization: bool = True,
        is_main_process: bool = True,
        path_initial_model_for_weight_conversion: str | os.PathLike[str] | None = None,
        save_embedding_layers: bool | str = "auto",
    ) -> None:
        """Write each adapter as ``adapter_config.json`` + ``adapter_model.safetensors``; non-default ones in a sub-folder.

        ``path_initial_model_for_weight_conversion``: the folder where an adapter whose init changed the base
        weights (LoRA's PiSSA / OLoRA) was saved before training; the adapter is then saved converted into one
        that applies to the original base model (for methods that provide this conversion).
        ``save_embedding_layers`` (True, False, or "auto": when an adapter adapts ``embed_tokens`` / ``lm_head``)
        also saves the model's embedding layers in full. Each folder gets a ``README.md`` model card.
        """
        if not safe_serialization:
            raise ValueError("peftkit saves safetensors only; pickled .bin adapters can run code when loaded")
        names = list(self.peft_config) if selected_adapters is None else list(selected_adapters)
        unknown = [n for n in names if n not in self.peft_config]
        if unknown:
            raise ValueError(
                f"cannot save unknown adapter(s) {unknown}; this model has {list(self.peft_config)}"
            )
        for name in names:
            self._check_holds(name)
        converters: dict[str, Any] = {}
        if path_initial_model_for_weight_conversion is not None:
            if len(names) != 1:
                raise ValueError(
                    f"path_initial_model_for_weight_conversion converts one adapter; pass selected_adapters=[name] "
                    f"(this model has {names})"
                )
            convert = self._method_hook(names[0], "convert_for_initial_model")
            if convert is None:
                raise ValueError(
                    f"the {self.method_for(names[0]).name} method cannot convert adapters for the initial model; "
                    "drop path_initial_model_for_weight_conversion"
                )
            converters[names[0]] = lambda config, tensors, name=names[0]: convert(
                name, config, tensors, path_initial_model_for_weight_conversion
            )
        if not is_main_process:
            return
        from peftkit import _io
        from peftkit._embeddings import with_embeddings
        from peftkit._model_card import write_model_card
        from peftkit._saving import save_adapter

        root = os.fspath(save_directory)
        os.makedirs(root, exist_ok=True)
        # Each folder is written atomically; the lock on the root keeps two multi-adapter saves from
        # interleaving (a kill between two folders still leaves each one whole: see docs/guarantees.md).
        with _io.folder_lock(root):
            for name in names:
                folder = root if name == "default" else os.path.join(root, name)
                transform = with_embeddings(self, name, save_embedding_layers, converters.get(name))
                save_adapter(self, name, folder, transform=transform)
                write_model_card(self, name, folder)

    def _check_holds(self, name: str) -> None:
        """Refuse to save adapter ``name`` when this wrapper no longer holds it (after merge_and_unload/unload)."""
        method = self.method_for(name)
        holds = any(name in m.adapter_names for m in self._adapter_modules() if isinstance(m, AdapterLayer))
        if self.__dict__.get("_unloaded") or (method.layer is not None and not holds):
            raise ValueError(
                f"adapter {name!r} is no longer in this model (merge_and_unload() or unload() took its layers "
                "out), so there is nothing to save; save before merging. Nothing was written"
            )

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Save the adapters and upload them to the Hugging Face Hub repo ``repo_id`` (see ``peftkit._hub``)."""
        from peftkit._hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module,
        model_id: str | os.PathLike[str],
        adapter_name: str = "default",
        is_trainable: bool = False,
        config: PeftConfig | None = None,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        ignore_mismatched_sizes: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Wrap ``model`` and load the adapter saved in ``model_id``; on error ``model`` is left as it was.

        Extra keywords: Hub download options, ``subfolder``, ``torch_device`` (as in ``load_adapter``);
        PEFT's options that peftkit does not implement raise a TypeError naming them (see ``_load_options``).
        """
        from peftkit.tasks import model_class_for

        check_adapter_name(adapter_name)
        _injection.check_name_free(model, adapter_name)
        loaded_config, tensors = _read("from_pretrained", model_id, config, kwargs)
        loaded_config = loaded_config.replace(inference_mode=not is_trainable)
        wrapper = model_class_for(loaded_config)  # a task wrapper subclass, defined in peftkit.tasks

        def build(meta: bool) -> Any:
            return wrapper(
                model,
                loaded_config,
                adapter_name,
                autocast_adapter_dtype=autocast_adapter_dtype,
                low_cpu_mem_usage=low_cpu_mem_usage or meta,
            )

        peft_model, _ = _checked_load(
            model,
            adapter_name,
            build,
            tensors,
            model_id,
            low_cpu_mem_usage,
            autocast_adapter_dtype,
            ignore_mismatched_sizes,
        )
        if not is_trainable:
            peft_model.eval()  # as Hugging Face PEFT does: an inference load runs with dropout off
        return peft_model

    def load_adapter(
        self,
        model_id: str | os.PathLike[str],
        adapter_name: str,
        is_trainable: bool = False,
        low_cpu_mem_usage: bool = False,
        autocast_adapter_dtype: bool = True,
        ignore_mismatched_sizes: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Load another saved adapter under ``adapter_name``; on error the model is left as it was.

        Returns ``(missing_keys, unexpected_keys)``; a missing tensor is an error, so ``missing_keys`` is empty.
        ``torch_device`` is, as in PEFT, the device the saved tensors are read onto: they are copied into
        adapter weights on the base layers' devices, or kept there with ``low_cpu_mem_usage=True``.
        """
        from peftkit._state_dict import LoadReport

        check_adapter_name(adapter_name)
        if adapter_name in self.peft_config:
            raise ValueError(
                f"an adapter named {adapter_name!r} already exists; delete_adapter it first or pick another name"
            )
        config, tensors = _read("load_adapter", model_id, None, kwargs)
        config = config.replace(inference_mode=not is_trainable)

        def build(meta: bool) -> Any:
            self.add_adapter(adapter_name, config, low_cpu_mem_usage or meta, autocast_adapter_dtype)
            return self

        _, unexpected = _checked_load(
            self,
            adapter_name,
            build,
            tensors,
            model_id,
            low_cpu_mem_usage,
            autocast_adapter_dtype,
            ignore_mismatched_sizes,
        )
        if not is_trainable:
            self.eval()  # as Hugging Face PEFT does: the new adapter's dropout must not run at inference
        return LoadReport([], unexpected)

    def _load_state(
        self,
        name: str,
        tensors: dict[str, torch.Tensor],
        assign: bool,
        source: Any,
        autocast: bool | None = None,
        ignore_mismatched_sizes: bool = False,
    ) -> list[str]:
        unexpected = _state_dict.load_adapter_state(
            self, name, tensors, assign=assign, ignore_mismatched_sizes=ignore_mismatched_sizes
        )
        if unexpected:
            warnings.warn(
                f"{source}: ignored {len(unexpected)} tensor(s) this adapter does not use, e.g. {unexpected[:3]}"
            )
        if assign:
            self._cast_adapter(name, autocast)
        return unexpected

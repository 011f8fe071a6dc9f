"""The model wrapper users hold: adapters, activation, training flags, merging, saving, loading."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import nn

from peftkit import _injection, _state_dict
from peftkit._adapter_names import check_adapter_name
from peftkit._config import ConfigError, PeftConfig
from peftkit._merging import MergingMixin
from peftkit._persistence import PersistenceMixin
from peftkit._registry import Method
from peftkit.errors import PluginContractError
from peftkit.layer import AdapterLayer, ModulesToSave

SEQ_CLS_HEADS = ["classifier", "score"]


#: The adapter-managing calls Hugging Face PEFT code makes on ``model.base_model`` (its tuner model);
#: ``AdaptedModel`` answers them from the PeftModel that owns it.
TUNER_API = frozenset(
    {
        "peft_config",
        "active_adapter",
        "active_adapters",
        "set_adapter",
        "add_adapter",
        "delete_adapter",
        "merge_adapter",
        "unmerge_adapter",
        "merge_and_unload",
        "unload",
        "disable_adapter_layers",
        "enable_adapter_layers",
        "set_requires_grad",
        "get_nb_trainable_parameters",
    }
)


class AdaptedModel(nn.Module):
    """Holds the user's model as ``.model`` (hence the ``base_model.model.`` keys) and model-level tensors.

    It stands where Hugging Face PEFT has its tuner model (``LoraModel``...): the adapter calls PEFT
    code makes on ``peft_model.base_model`` (:data:`TUNER_API`) go to the owning PeftModel; any
    other attribute is the wrapped model's.
    """

    #: The start of the adapter parameter names of the method held (``"lora_"``); PEFT's ``base_model.prefix``.
    prefix: str = ""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            owner = self.__dict__.get("_owner")
            if name in TUNER_API and owner is not None and owner() is not None:
                if name == "active_adapter":  # PEFT's tuner answers a list while several are active
                    active = owner().active_adapters
                    return active if len(active) > 1 else owner().active_adapter
                return getattr(owner(), name)
            return getattr(self._modules["model"], name)

    def own(self, peft_model: nn.Module) -> None:
        """Answer the tuner-level calls from ``peft_model`` (held weakly: the model owns this holder, not the reverse)."""
        self.__dict__["_owner"] = weakref.ref(peft_model)


class PeftModel(MergingMixin, PersistenceMixin, nn.Module):
    """A transformers or PyTorch model with named adapters of one method.

    Build it with :func:`peftkit.get_peft_model` or :meth:`PeftModel.from_pretrained`. Attributes
    it does not define (``config``, ``generate``...) are looked up on the wrapped model.
    """

    def __init__(
        self,
        model: nn.Module,
        peft_config: PeftConfig,
        adapter_name: str = "default",
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
    ) -> None:
        super().__init__()
        self.base_model = AdaptedModel(model)
        self.base_model.own(self)
        self.peft_config: dict[str, PeftConfig] = {}
        self._adapters_disabled = False
        self.active_adapters = []
        self.autocast_adapter_dtype = autocast_adapter_dtype
        self.add_adapter(adapter_name, peft_config, low_cpu_mem_usage=low_cpu_mem_usage)
        self.set_adapter(adapter_name)

    # --- lookups ------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            extension = self._model_method(name)
            if extension is not None:
                return extension
            return getattr(self._modules["base_model"], name)

    def _model_method(self, name: str) -> Any:
        """A public model-level function of this model's method (``Method.model_methods``), bound to the model."""
        configs = self.__dict__.get("peft_config")
        if name.startswith("_") or not configs:
            return None
        return self._model_function(next(iter(configs)), name)

    def _method_hook(self, adapter_name: str, name: str) -> Any:
        """Hook ``name`` (see ``peftkit.hookspecs.MethodHooks``) of adapter ``adapter_name``'s method, bound to this model, or None."""
        import functools

        fn = self.method_for(adapter_name).hook(name)
        return None if fn is None else functools.partial(fn, self)

    def _model_function(self, adapter_name: str, name: str) -> Any:
        """``Method.model_methods[name]`` of adapter ``adapter_name``'s method bound to this model, or None."""
        import functools

        from peftkit._registry import resolve

        target = self.method_for(adapter_name).model_methods.get(name)
        return None if target is None else functools.partial(resolve(target), self)

    def get_base_model(self) -> nn.Module:
        """The wrapped model (with adapter layers inside)."""
        return self.base_model.model

    def method_for(self, adapter_name: str) -> Method:
        from peftkit._plugins import registry

        return registry().by_peft_type(str(self.peft_config[adapter_name].peft_type))

    @property
    def prefix(self) -> str:
        """The start of this model's adapter parameter names (``"lora_"``), as PEFT's ``model.prefix``."""
        return self.base_model.prefix

    @property
    def active_adapter(self) -> str:
        return self.active_adapters[0] if self.active_adapters else ""

    @property
    def active_peft_config(self) -> PeftConfig:
        return self.peft_config[self.active_adapter]

    @property
    def active_adapters(self) -> list[str]:
        """The adapters forward uses, in order."""
        return self._active_adapters

    @active_adapters.setter
    def active_adapters(self, names: Sequence[str]) -> None:
        # The active method's _forward/_generate hooks are looked up here, once, and kept as plain
        # attributes: forward then does no registry work that torch.compile would have to trace.
        self._active_adapters = list(names)
        first = self._active_adapters[0] if self._active_adapters else None
        self._forward_hook = None if first is None else self._method_hook(first, "forward")
        self._generate_hook = None if first is None else self._method_hook(first, "generate")

    def _call_hook(self, name: str) -> Any:
        """The active method's ``_forward``/``_generate`` hook bound to this model, or None (also while disabled)."""
        if self._adapters_disabled:
            return None
        return self._forward_hook if name == "forward" else self._generate_hook

    def forward(self, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """The wrapped model's forward; ``adapter_names`` (one per sample, ``"__base__"`` for none) mixes adapters in a batch."""
        hook = self._call_hook("forward")
        if hook is not None:  # a method that changes the inputs (prompt learning) runs the forward itself
            extra = {} if adapter_names is None else {"adapter_names": adapter_names}
            return hook(*args, **extra, **kwargs)
        if adapter_names is None:
            return self.get_base_model()(*args, **kwargs)
        if torch.compiler.is_compiling():
            return self._traced_per_sample(adapter_names, args, kwargs)
        with self._per_sample_adapters(adapter_names):
            return self.get_base_model()(*args, **kwargs)

    def _traced_per_sample(self, adapter_names: Sequence[str], args: Any, kwargs: dict[str, Any]) -> Any:
        """``adapter_names`` under torch.compile: a plain global Dynamo traces (one graph per grouping).

        The eager path keeps a context variable, which Dynamo cannot read; a compiled call runs in
        one thread, so the global is enough there.
        """
        from peftkit import _per_sample

        self._check_sample_names(adapter_names)
        _per_sample.set_traced(_per_sample.SampleAdapters(adapter_names))
        try:
            return self.get_base_model()(*args, **kwargs)
        finally:
            _per_sample.set_traced(None)

    def generate(self, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """The wrapped model's ``generate``; ``adapter_names`` as in :meth:`forward`, repeated per beam for you."""
        base = self.get_base_model()
        if not hasattr(base, "generate"):
            raise AttributeError(f"{type(base).__name__} has no generate method")
        hook = self._call_hook("generate")
        if hook is not None:
            extra = {} if adapter_names is None else {"adapter_names": adapter_names}
            return hook(*args, **extra, **kwargs)
        generate = cast(Callable[..., Any], base.generate)  # a transformers model's, looked up at run time
        if adapter_names is None:
            return generate(*args, **kwargs)
        config = kwargs.get("generation_config") or getattr(base, "generation_config", None)
        # transformers repeats each input max(num_beams, num_return_sequences) times before decoding.
        repeat = max(
            int(kwargs.get("num_beams") or getattr(config, "num_beams", 1) or 1),
            int(kwargs.get("num_return_sequences") or getattr(config, "num_return_sequences", 1) or 1),
        )
        with self._per_sample_adapters(adapter_names, repeat):
            return generate(*args, **kwargs)

    @contextmanager
    def _per_sample_adapters(self, adapter_names: Sequence[str], repeat: int = 1) -> Iterator[None]:
        from peftkit import _per_sample

        self._check_sample_names(adapter_names)
        with _per_sample.sample_adapters(adapter_names, repeat):
            yield

    def _check_sample_names(self, adapter_names: Sequence[str]) -> None:
        from peftkit import _per_sample

        if isinstance(adapter_names, str) or not all(isinstance(n, str) for n in adapter_names):
            raise TypeError(
                f"adapter_names must be a list of adapter names, one per sample; got {adapter_names!r}"
            )
        if self.training:
            raise ValueError("adapter_names is for inference; call model.eval() first (training mode is on)")
        unknown = sorted({n for n in adapter_names if n != _per_sample.BASE and n not in self.peft_config})
        if unknown:
            raise ValueError(
                f"adapter_names names unknown adapter(s) {unknown}; this model has {list(self.peft_config)} "
                f"(use {_per_sample.BASE!r} for the base model)"
            )

    def _adapter_modules(self) -> Iterator[AdapterLayer[Any] | ModulesToSave]:
        return _injection.adapter_modules(self.get_base_model())

    # --- adapters -----------------------------------------------------------------------
    def add_adapter(
        self,
        adapter_name: str,
        peft_config: PeftConfig,
        low_cpu_mem_usage: bool = False,
        autocast_adapter_dtype: bool | None = None,
    ) -> None:
        """Add an adapter; it is trainable unless ``peft_config.inference_mode``, and inactive until set_adapter.

        ``autocast_adapter_dtype`` (default: the model's setting) gives fp16/bf16 bases fp32 adapter weights.
        """
        if adapter_name in self.peft_config:
            raise ValueError(
                f"an adapter named {adapter_name!r} already exists; delete_adapter it first or pick another name"
            )
        if not isinstance(peft_config, PeftConfig):
            raise TypeError(f"expected a peftkit config, got {type(peft_config).__name__}")
        if self.peft_config and peft_config.peft_type != next(iter(self.peft_config.values())).peft_type:
            raise ConfigError(
                f"this model holds {next(iter(self.peft_config.values())).peft_type} adapters; "
                f"cannot add a {peft_config.peft_type} adapter to it"
            )
        from peftkit._adapter_checks import check_bias_sharing
        from peftkit._plugins import registry

        check_bias_sharing(self.peft_config, adapter_name, peft_config)
        method = registry().by_peft_type(str(peft_config.peft_type))
        check_adapter_name(adapter_name, method.prefix)
        model = self.get_base_model()
        _injection.check_name_free(model, adapter_name)
        peft_config = self._prepare_config(peft_config, method)
        first = not self.peft_config
        self.peft_config[adapter_name] = peft_config
        self.base_model.prefix = method.prefix
        try:
            # A method without layers (prompt learning) builds only model-level modules.
            if method.layer is not None:
                _injection.inject_adapter(
                    model, method, peft_config, adapter_name, low_cpu_mem_usage, owner=self.base_model
                )
            create = self._method_hook(adapter_name, "create_adapter")
            if create is not None:
                create(adapter_name, peft_config)
            if peft_config.modules_to_save:
                _injection.wrap_modules_to_save(model, list(peft_config.modules_to_save), adapter_name)
        except Exception:
            _injection.remove_adapter_layers(model, adapter_name)
            self._drop_model_level(method, adapter_name)
            del self.peft_config[adapter_name]
            raise
        self._cast_adapter(adapter_name, autocast_adapter_dtype)
        if first:
            model.requires_grad_(False)
        self.set_requires_grad(adapter_name, not peft_config.inference_mode)
        self._set_bias_trainable(adapter_name, peft_config)

    def _prepare_config(self, config: PeftConfig, method: Method) -> PeftConfig:
        changes: dict[str, Any] = {}
        if config.base_model_name_or_path is None:
            changes["base_model_name_or_path"] = getattr(self.get_base_model(), "name_or_path", None) or None
        model_type = getattr(getattr(self.get_base_model(), "config", None), "model_type", None)
        if config.target_modules is None and model_type is not None and model_type in method.default_targets:
            # Save the modules actually targeted, so a loader with other defaults adapts the same ones.
            changes["target_modules"] = list(method.default_targets[model_type])
        if config.task_type in ("SEQ_CLS", "TOKEN_CLS"):  # as in HF PEFT, the new head is trained and saved
            heads = [
                h
                for h in SEQ_CLS_HEADS
                if any(n.rsplit(".", 1)[-1] == h for n, _ in self.get_base_model().named_modules())
            ]
            wanted = list(config.modules_to_save or [])
            changes["modules_to_save"] = wanted + [h for h in heads if h not in wanted]
        config = config.replace(**changes) if changes else config
        prepare = method.hook("prepare_config")
        if prepare is not None:  # e.g. prompt learning fills in sizes read from the model's config
            prepared = prepare(self, config)
            if not isinstance(prepared, type(config)):
                raise PluginContractError(
                    f"method {method.name!r} of {method.origin}: its prepare_config hook returned "
                    f"{type(prepared).__name__}, expected the {type(config).__name__} to use"
                )
            config = prepared
        return config

    def _cast_adapter(self, adapter_name: str, autocast: bool | None = None) -> None:
        """Adapter weights follow the base dtype, except that fp16/bf16 bases get fp32 adapters when autocasting."""
        autocast = self.autocast_adapter_dtype if autocast is None else autocast
        for module in self._adapter_modules():
            if not isinstance(module, AdapterLayer) or adapter_name not in module.adapter_names:
                continue
            base_dtype = module.view.weight_dtype
            target = base_dtype if base_dtype.is_floating_point else torch.float32
            if autocast and target in (torch.float16, torch.bfloat16):
                target = torch.float32
            for param in module.adapter_parameters(adapter_name):
                if param.is_floating_point() and param.dtype != target and param.device.type != "meta":
                    param.data = param.data.to(target)

    def _set_bias_trainable(self, adapter_name: str, config: PeftConfig) -> None:
        if config.inference_mode:
            return
        slots = _state_dict.bias_slots(
            self.get_base_model(), config.bias, adapter_name, set(self.peft_config)
        )
        for _, _, param in slots.values():
            param.requires_grad_(True)

    def set_adapter(self, adapter_name: str | Sequence[str]) -> None:
        """Use these adapters in forward. Gradients are not touched: see set_requires_grad.

        A merged model stays merged: the new adapters are merged in place of the old ones, each layer
        unmerging and merging only what changes (fast switching of fused adapters).
        """
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        unknown = [n for n in names if n not in self.peft_config]
        if unknown:
            raise ValueError(f"unknown adapter(s) {unknown}; this model has {list(self.peft_config)}")
        modules = list(self._adapter_modules())
        self._check_one_copy_active(names)
        layers = [m for m in modules if isinstance(m, AdapterLayer)]
        if any(layer.merged_adapters for layer in layers):
            self._switch_merged(layers, names)
        for module in modules:
            module.set_active(names)
        self.active_adapters = names

    def _check_one_copy_active(self, names: Sequence[str]) -> None:
        """Refuse several active adapters that each hold a full copy of one module (``modules_to_save``)."""
        if len(names) < 2:
            return
        for path, module in self.get_base_model().named_modules():
            if isinstance(module, ModulesToSave):
                holders = [n for n in names if n in module.adapter_names]
                if len(holders) > 1:
                    raise ValueError(
                        f"adapters {holders} each train their own copy of {path} (modules_to_save), and a full "
                        "copy cannot be combined with another: activate only one of them at a time"
                    )

    def set_requires_grad(self, adapter_names: str | Sequence[str], requires_grad: bool = True) -> None:
        """Turn training on or off for these adapters, whatever is active."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        unknown = [n for n in names if n not in self.peft_config]
        if unknown:
            raise ValueError(f"unknown adapter(s) {unknown}; this model has {list(self.peft_config)}")
        for module in self._adapter_modules():
            module.set_requires_grad(names, requires_grad)
        for attr in {a for n in names for a in self.method_for(n).model_level}:
            holder = getattr(self.base_model, attr, None)
            for n in names:
                if holder is None or n not in holder:
                    continue
                if isinstance(holder[n], nn.Module):  # a model-level module (a prompt encoder)
                    holder[n].requires_grad_(requires_grad)
                elif holder[n].is_floating_point():
                    holder[n].requires_grad_(requires_grad and getattr(holder, "trainable", True))

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise ValueError(f"unknown adapter {adapter_name!r}; this model has {list(self.peft_config)}")
        _injection.remove_adapter_layers(self.get_base_model(), adapter_name)
        self._drop_model_level(self.method_for(adapter_name), adapter_name)
        del self.peft_config[adapter_name]
        self.active_adapters = [n for n in self.active_adapters if n != adapter_name]
        if not self.active_adapters and self.peft_config:
            self.set_adapter(next(iter(self.peft_config)))

    def _drop_model_level(self, method: Method, adapter_name: str) -> None:
        for attr in method.model_level:
            holder = getattr(self.base_model, attr, None)
            if holder is not None and adapter_name in holder:
                del holder[adapter_name]

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the base model alone inside this block; on exit the adapters are as they were before it."""
        was_disabled = self._adapters_disabled
        self.disable_adapter_layers()
        try:
            yield
        finally:
            if not was_disabled:
                self.enable_adapter_layers()

    def disable_adapter_layers(self) -> None:
        """Run the base model alone until :meth:`enable_adapter_layers` (PEFT's switch on the tuner model)."""
        for module in self._adapter_modules():
            module.disable_adapters = True
        self._adapters_disabled = True  # also skips the method's forward/generate hooks

    def enable_adapter_layers(self) -> None:
        """Undo :meth:`disable_adapter_layers`: the active adapters run again."""
        for module in self._adapter_modules():
            module.disable_adapters = False
        self._adapters_disabled = False

    # --- parameters ---------------------------------------------------------------------
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable parameters, all parameters), counting each shared tensor once."""
        trainable = total = 0
        for param in self.parameters():
            count = param.numel()
            if hasattr(param, "quant_state") or type(param).__name__ == "Params4bit":
                count *= 2  # 4-bit weights pack two values per byte-sized element
            total += count
            if param.requires_grad:
                trainable += count
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / max(total, 1):.4f}"
        )

    def get_layer_status(self) -> list[Any]:
        from peftkit._status import layer_status

        return layer_status(self)

    def get_model_status(self) -> Any:
        from peftkit._status import model_status

        return model_status(self)

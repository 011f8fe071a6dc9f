"""The adapter layer contract: a base layer, its view, and any number of named adapters.

A method subclasses :class:`AdapterLayer` and implements:

* ``create_adapter(name, config)``: make the adapter's tensors, stored in ``nn.ModuleDict`` /
  ``nn.ParameterDict`` attributes whose names start with the method's prefix and are keyed
  by adapter name (``self.lora_A[name]``). That naming is what the core saves, freezes,
  counts and deletes by.
* the forward, on one side or both: ``adapter_input(x, name)`` transforms what the base layer
  sees (IA3 on feed-forward layers scales its input), ``adapter_forward(x, result, name)``
  combines the adapter with the base output (LoRA adds ``B(A(x))``). A layer class must override
  at least one of them.
* merging, either additive (``delta_weight(name)``, optionally ``delta_bias(name)``) or, for
  methods that are a function of the base weight, ``merged_weight(W, name)`` together with its
  exact inverse ``unmerged_weight(W, name)`` (and ``merged_bias`` / ``unmerged_bias`` if the bias
  changes too).

Everything else (activation, disabling, per-sample routing, safe merging, dtype handling,
deletion) lives here. :func:`check_layer_class` checks a class against this contract when the
method is first used.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from typing import Any, Generic, Protocol, TypeVar

import torch
from torch import nn

from peftkit import _per_sample
from peftkit._config import PeftConfig
from peftkit.errors import LayerContractError, UnsafeMergeError
from peftkit.views import BaseLayerView, MergeNotSupportedError

#: The config class a layer's adapters are made from (``LoraLayer(AdapterLayer[LoraConfig])``).
ConfigT = TypeVar("ConfigT", bound=PeftConfig)


class AdapterLayer(nn.Module, Generic[ConfigT]):
    """A base layer plus named adapters of one method. See the module docstring for the contract.

    Naming rule: a method's layer must not redefine a ``torch.nn.Module`` method or property other
    than ``forward`` and ``extra_repr`` (``_apply``, ``to``, ``train``, ``state_dict``... are what
    every ``.to()``, ``.half()`` and save goes through). One that means to lists the names in
    ``overrides_module_methods``; :func:`check_layer_class` refuses the rest when the method is used.
    """

    #: Attributes keyed by adapter name that are not modules (scalings, per-adapter settings): on
    #: delete the core calls ``getattr(self, attr).pop(name, None)`` on each, so each is a dict or
    #: has a dict-like ``pop``.
    adapter_dicts: tuple[str, ...] = ()
    #: ``torch.nn.Module`` methods this layer class overrides on purpose (beyond forward and extra_repr).
    overrides_module_methods: tuple[str, ...] = ()

    #: The wrapped layer, unchanged; its parameters stay frozen.
    base_layer: nn.Module
    #: How to read, run and write the base layer whatever its storage (dense, quantized...).
    view: BaseLayerView
    #: The layer's dotted name in the model (``"model.layers.0.self_attn.q_proj"``), set by the core
    #: before ``before_inject``; "" for a layer built by hand. Use it in messages.
    path: str = ""
    #: Adapter name -> the config it was created with, in creation order.
    adapter_configs: dict[str, ConfigT]
    #: The adapters forward runs, in order (set by the model; read-only for methods).
    active_adapters: list[str]
    #: The adapters whose update is inside the base weight now, in merge order (read-only for methods).
    merged_adapters: list[str]
    #: True inside ``disable_adapter()``: forward is the base layer's alone.
    disable_adapters: bool

    def __init__(self, base_layer: nn.Module, view: BaseLayerView) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.view = view
        view.adapter_layer = self  # so a view that replaces its module (replace_module) updates base_layer
        self.adapter_configs = {}
        self.active_adapters = []
        self.merged_adapters = []
        self.disable_adapters = False

    # --- the method's part -------------------------------------------------------------
    @classmethod
    def before_inject(
        cls, owner: nn.Module, config: ConfigT, name: str, layers: Sequence[AdapterLayer[ConfigT]]
    ) -> None:
        """Called once per new adapter, after every target is found and before any layer creates it.

        ``owner`` holds the model-level tensors (``Method.model_level`` attributes); ``layers`` will
        receive the adapter (each has ``view`` and ``path``). State shared across layers (VeRA's
        projections) is made here; the default does nothing.
        """

    def create_adapter(self, name: str, config: ConfigT) -> None:
        """Make adapter ``name``'s tensors from ``config`` (see the module docstring for where they go)."""
        raise NotImplementedError

    def adapter_input(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Input side: what the base layer should see instead of ``x`` for adapter ``name``.

        Override it for methods that transform the layer input; the base layer then runs once, on
        the transformed input. With several active adapters the calls are chained in active order
        (each gets the previous one's output). Under per-sample routing (``adapter_names=``) each
        call gets only the rows routed to ``name``. The default returns ``x``.
        """
        return x

    def adapter_forward(self, x: torch.Tensor, result: torch.Tensor, name: str) -> torch.Tensor:
        """Output side: combine adapter ``name`` with ``result`` and return the new output.

        The core guarantees: ``x`` is the layer's original input (before any ``adapter_input``) and
        ``result`` is the output so far for exactly the rows of ``x``. In a normal call that is the
        base output followed by the adapters before ``name`` in active order (so a method must
        compose with ``result``, never recompute the base output); under per-sample routing ``x``
        and ``result`` are the sub-batch routed to ``name`` and ``result`` is the base output for
        it. The default returns ``result`` (for methods that act only on the input side).
        """
        return result

    def delta_weight(self, name: str) -> torch.Tensor:
        """The additive update in the view's weight layout; non-additive methods override merged_weight."""
        raise NotImplementedError(f"{type(self).__name__} does not define how to merge")

    def delta_bias(self, name: str) -> torch.Tensor | None:
        """An additive bias update of an additive method, or None (the default: the bias is untouched)."""
        return None

    def merged_weight(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        """The base weight (float32, view layout) with adapter ``name`` folded in; non-additive methods override it."""
        return weight + self.delta_weight(name).to(weight.dtype)

    def unmerged_weight(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        """The exact inverse of :meth:`merged_weight`."""
        return weight - self.delta_weight(name).to(weight.dtype)

    def merged_bias(self, bias: torch.Tensor | None, name: str) -> torch.Tensor | None:
        """The base bias with adapter ``name`` folded in, or None to leave it as it is.

        Called after ``merged_weight`` when merging (``bias`` is the current bias, or None when the
        layer has none). The default adds ``delta_bias(name)``. A method whose merge scales the
        output (IA3) overrides this and :meth:`unmerged_bias`; merging never needs to guess the direction.
        """
        delta = self.delta_bias(name)
        if delta is None:
            return None
        if bias is None:
            raise MergeNotSupportedError(f"{self.view.layer_type} has no bias to merge an adapter bias into")
        return bias + delta.to(bias.dtype)

    def unmerged_bias(self, bias: torch.Tensor | None, name: str) -> torch.Tensor | None:
        """The exact inverse of :meth:`merged_bias` (called after ``unmerged_weight``); None leaves the bias."""
        delta = self.delta_bias(name)
        if delta is None:
            return None
        if bias is None:
            raise MergeNotSupportedError(
                f"{self.view.layer_type} has no bias to unmerge an adapter bias from"
            )
        return bias - delta.to(bias.dtype)

    def add_delta_to_weight(self, name: str, alpha: float) -> None:
        """Add ``alpha`` times adapter ``name``'s additive update to the base weight (merge: 1, unmerge: -1).

        Sparse methods override this to touch only their entries instead of building a dense delta.
        """
        delta = self.delta_weight(name)
        self.view.add_to_weight(delta if alpha == 1.0 else alpha * delta)

    @property
    def is_additive(self) -> bool:
        """True when merging adds ``delta_weight`` (merges commute); False when ``merged_weight`` is overridden."""
        return type(self).merged_weight is AdapterLayer.merged_weight

    @property
    def transforms_input(self) -> bool:
        """True when the class overrides :meth:`adapter_input` (the core then transforms before the base forward)."""
        return type(self).adapter_input is not AdapterLayer.adapter_input

    # --- hot-swapping (peftkit.hotswap_adapter) -------------------------------------------
    #: Config fields a hot-swap may change (the layer adapts to them in ``hotswap_config``); any other
    #: field that differs between the loaded adapter and the new one refuses the swap.
    hotswap_settings: tuple[str, ...] = ()

    def prepare_hotswap(self, target_rank: int | None) -> None:
        """Make later swaps of other adapters' weights need no recompilation (LoRA: pad ranks, tensor scalings).

        The default does nothing: methods whose tensor shapes are fixed by the layer swap as they are.
        """

    def check_hotswap(self, name: str, key: str, current: torch.Tensor, new: torch.Tensor) -> str | None:
        """Why ``new`` cannot replace tensor ``key`` (in-memory key) of adapter ``name`` in place, or None."""
        if tuple(current.shape) != tuple(new.shape):
            return f"shape {tuple(new.shape)} does not fit the loaded {tuple(current.shape)}"
        if current.is_floating_point() != new.is_floating_point():
            return f"dtype {new.dtype} does not fit the loaded {current.dtype}"
        return None

    def hotswap_tensor(self, name: str, key: str, current: torch.Tensor, new: torch.Tensor) -> None:
        """Write ``new`` into ``current`` in place (same storage, so a compiled graph keeps reading it)."""
        current.copy_(new)

    def hotswap_config(self, name: str, config: ConfigT) -> None:
        """Adopt the new adapter's ``hotswap_settings`` (LoRA: its scaling) after its tensors were swapped in."""

    # --- bookkeeping ---------------------------------------------------------------------
    def add_adapter(self, name: str, config: ConfigT) -> None:
        """Create adapter ``name``; it starts inactive and untrainable (the model decides both)."""
        self.create_adapter(name, config)
        self.adapter_configs[name] = config

    @property
    def adapter_names(self) -> list[str]:
        return list(self.adapter_configs)

    @property
    def in_features(self) -> int:
        """The base layer's input size (channels for convolutions, vocabulary size for embeddings)."""
        return self.view.in_features

    @property
    def out_features(self) -> int:
        """The base layer's output size (channels for convolutions, dimension for embeddings)."""
        return self.view.out_features

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    def adapter_state(self, name: str, prefix: str = "") -> dict[str, torch.Tensor]:
        """The tensors (parameters and persistent buffers) of adapter ``name``, with in-memory keys."""
        # Never ask the base layer for its state_dict: a quantized one may rewrite itself when asked
        # (bitsandbytes 0.50 unpacks CPU-packed 4-bit weights in place, corrupting their scales).
        state: dict[str, torch.Tensor] = {k: v for k, v in self._parameters.items() if v is not None}
        state.update(
            (k, v)
            for k, v in self._buffers.items()
            if v is not None and k not in self._non_persistent_buffers_set
        )
        for child_name, child in self._modules.items():
            if child_name != "base_layer" and child is not None:
                state.update(child.state_dict(prefix=f"{child_name}.", keep_vars=True))
        return {prefix + key: value for key, value in state.items() if name in key.split(".")}

    def adapter_parameters(self, name: str) -> Iterator[nn.Parameter]:
        """The parameters of adapter ``name`` on this layer (never the base layer's)."""
        # Walks only the adapter containers: the base layer may be large or a quantized wrapper.
        for key, param in self._parameters.items():
            if param is not None and name in key.split("."):
                yield param
        for child_name, child in self._modules.items():
            if child_name == "base_layer" or child is None:
                continue
            for key, param in child.named_parameters(prefix=child_name):
                if name in key.split("."):
                    yield param

    def set_requires_grad(self, names: Sequence[str], requires_grad: bool) -> None:
        for name in names:
            for param in self.adapter_parameters(name):
                if param.is_floating_point() or param.is_complex():
                    param.requires_grad_(requires_grad)

    def set_active(self, names: Sequence[str]) -> None:
        """Make ``names`` (those present here) the adapters used in forward; gradients are untouched."""
        self.active_adapters = [n for n in names if n in self.adapter_configs]

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            self.unmerge(adapter_names=[name])
        for child in list(self._modules.values()):
            if isinstance(child, (nn.ModuleDict, nn.ParameterDict)) and name in child:
                del child[name]
        for attr in self.adapter_dicts:
            getattr(self, attr).pop(name, None)
        self.adapter_configs.pop(name, None)
        self.active_adapters = [n for n in self.active_adapters if n != name]

    # --- forward ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged_adapters:
                self.unmerge()
            return self.view.forward(x, *args, **kwargs)
        per_sample = _per_sample.current()
        if per_sample is not None:
            return self._forward_per_sample(per_sample, x, *args, **kwargs)
        if self.merged_adapters and self.training and torch.is_grad_enabled():
            self._refuse_training_merged()
        pending = [n for n in self.active_adapters if n not in self.merged_adapters]
        base_input = x
        if self.transforms_input:
            for name in pending:
                base_input = self.adapter_input(base_input, name)
        result = self.view.forward(base_input, *args, **kwargs)
        for name in pending:
            result = self.adapter_forward(x, result, name)
        return result

    def _refuse_training_merged(self) -> None:
        """A merged adapter that should train would get no gradient (its update is inside the weight)."""
        training = [
            n for n in self.merged_adapters if any(p.requires_grad for p in self.adapter_parameters(n))
        ]
        if training:
            raise RuntimeError(
                f"adapter {training[0]!r} is merged into the base weights of {self.path or 'a layer'}, "
                "so training cannot reach its parameters; call model.unmerge_adapter() before training "
                "(or model.eval() / torch.no_grad() to run the merged model)"
            )

    def _forward_per_sample(
        self, per_sample: _per_sample.SampleAdapters, x: torch.Tensor, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Each sample through the adapter named for it (``adapter_names=[...]``), grouped by adapter."""
        if self.merged_adapters:
            raise ValueError(
                f"adapter_names cannot be used while adapters {self.merged_adapters} are merged into "
                f"{self.path or 'a layer'}; call unmerge_adapter() first"
            )
        groups = [
            (name, index)
            for name, index in per_sample.groups(x.shape[0], x.device)
            if name in self.adapter_configs  # not "__base__", nor an adapter that does not target this layer
        ]
        base_input = x
        if self.transforms_input:
            for name, index in groups:
                if index is None:
                    base_input = self.adapter_input(x, name)
                else:
                    base_input = base_input.index_copy(0, index, self.adapter_input(x[index], name))
        result = self.view.forward(base_input, *args, **kwargs)
        for name, index in groups:
            if index is None:
                result = self.adapter_forward(x, result, name)
            else:
                result = result.index_copy(0, index, self.adapter_forward(x[index], result[index], name))
        return result

    # --- merging ------------------------------------------------------------------------
    def merge(self, safe_merge: bool = False, adapter_names: Sequence[str] | None = None) -> None:
        """Fold adapters (default: the active ones) into the base weight; merging twice is a no-op."""
        names = self.active_adapters if adapter_names is None else adapter_names
        names = [n for n in names if n in self.adapter_configs and n not in self.merged_adapters]
        if names and not self.view.supports_merge:
            raise MergeNotSupportedError(
                f"{type(self).__name__}: the base layer {self.view.layer_type} cannot be merged into"
            )
        for name in names:
            self._merge_one(name, safe_merge)
            self.merged_adapters.append(name)

    def _merge_one(self, name: str, safe_merge: bool) -> None:
        bias_change = self._bias_change(name, merging=True)
        if self.is_additive and not safe_merge:
            self.add_delta_to_weight(name, 1.0)
        else:
            weight = self.view.read_weight()
            new = self.merged_weight(weight.float(), name)
            bad_bias = bias_change is not None and not torch.isfinite(bias_change).all()
            if safe_merge and (bad_bias or not torch.isfinite(new).all()):
                raise UnsafeMergeError(
                    f"merging adapter {name!r} would put NaN/inf into {self.view.layer_type}; "
                    "the base weight was left unchanged"
                )
            self.view.write_weight(new)
        if bias_change is not None:
            self.view.add_to_bias(bias_change)

    def _bias_change(self, name: str, merging: bool) -> torch.Tensor | None:
        """What merging (or unmerging) adapter ``name`` adds to the base bias, or None for nothing."""
        hook = type(self).merged_bias if merging else type(self).unmerged_bias
        if hook is (AdapterLayer.merged_bias if merging else AdapterLayer.unmerged_bias):
            # The additive default, applied as the delta itself: unmerging then restores the bias exactly.
            delta = self.delta_bias(name)
            if delta is None:
                return None
            return delta if merging else -delta
        bias = self.view.bias
        current = None if bias is None else bias.detach().float()
        new = hook(self, current, name)
        if new is None:
            return None
        if current is None:
            raise MergeNotSupportedError(f"{self.view.layer_type} has no bias to merge an adapter bias into")
        return new.float() - current

    def unmerge(self, adapter_names: Sequence[str] | None = None) -> None:
        """Take merged adapters (default: all) back out of the base weight, last merged first."""
        wanted = [n for n in self.merged_adapters if adapter_names is None or n in adapter_names]
        if not wanted:
            return
        # Non-additive merges (MiSS bat, OFT) do not commute: take out everything merged after the
        # earliest requested adapter, then merge back the ones that were not requested.
        peel = wanted if self.is_additive else self.merged_adapters[self.merged_adapters.index(wanted[0]) :]
        for name in list(reversed(peel)):
            self._unmerge_one(name)
        for name in peel:
            if name not in wanted:
                self._merge_one(name, safe_merge=False)
                self.merged_adapters.append(name)

    def switch_merged(self, names: Sequence[str]) -> None:
        """Make ``names`` (those present here) the merged adapters, unmerging and merging only what changes.

        Additive adapters that stay merged are left in the weight; a non-additive merge order that
        no longer fits ``names`` is redone from the base weight.
        """
        wanted = [n for n in names if n in self.adapter_configs]
        kept = [n for n in self.merged_adapters if n in wanted]
        stale = [n for n in self.merged_adapters if n not in wanted]
        if not self.is_additive and kept != wanted[: len(kept)]:
            stale = list(self.merged_adapters)
        self.unmerge(adapter_names=stale)
        self.merge(adapter_names=wanted)

    def _unmerge_one(self, name: str) -> None:
        if self.is_additive:
            self.add_delta_to_weight(name, -1.0)
        else:
            self.view.write_weight(self.unmerged_weight(self.view.read_weight().float(), name))
        bias_change = self._bias_change(name, merging=False)
        if bias_change is not None:
            self.view.add_to_bias(bias_change)
        self.merged_adapters.remove(name)

    def extra_repr(self) -> str:
        return f"adapters={self.adapter_names}, active={self.active_adapters}, merged={self.merged_adapters}"

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            # Model code reads the wrapped layer's attributes (T5 checks ``self.wo.weight.dtype``).
            base = self.__dict__.get("_modules", {}).get("base_layer")
            if base is None:
                raise
            return getattr(base, name)


# What nn.Module itself defines and a subclass could hide by reusing the name.
_MODULE_API = frozenset(
    name for name, value in vars(nn.Module).items() if callable(value) or isinstance(value, property)
)
_MEANT_TO_OVERRIDE = frozenset({"__init__", "forward", "extra_repr"})


def shadowed_module_methods(cls: type) -> list[str]:
    """The ``torch.nn.Module`` methods that ``cls``, below :class:`AdapterLayer`, redefines undeclared."""
    mro = cls.__mro__
    own = mro[: mro.index(AdapterLayer)] if AdapterLayer in mro else mro
    allowed = _MEANT_TO_OVERRIDE | set(getattr(cls, "overrides_module_methods", ()))
    return sorted(
        {name for klass in own for name in vars(klass) if name in _MODULE_API and name not in allowed}
    )


#: The methods of :class:`AdapterLayer` a method's layer may override; the core calls them with these signatures.
CONTRACT_METHODS = (
    "before_inject",
    "create_adapter",
    "adapter_input",
    "adapter_forward",
    "delta_weight",
    "delta_bias",
    "merged_weight",
    "unmerged_weight",
    "merged_bias",
    "unmerged_bias",
    "add_delta_to_weight",
    "prepare_hotswap",
    "check_hotswap",
    "hotswap_tensor",
    "hotswap_config",
)


def check_layer_class(cls: Any, owner: str) -> type[AdapterLayer[Any]]:
    """``cls`` if it is a valid method layer class; otherwise a :class:`LayerContractError` naming ``owner``.

    ``owner`` says who registered it (``"method 'miss' of peftkit-miss==0.1.0"``). Checked: it subclasses
    :class:`AdapterLayer`, shadows no ``nn.Module`` method, implements a forward side, and every
    contract method it overrides takes the arguments the core passes.
    """
    if not (isinstance(cls, type) and issubclass(cls, AdapterLayer)):
        raise LayerContractError(f"{owner}: its layer {cls!r} is not a subclass of peftkit.AdapterLayer")
    where = f"{owner}: layer class {cls.__module__}.{cls.__qualname__}"
    shadowed = shadowed_module_methods(cls)
    if shadowed:
        raise LayerContractError(
            f"{where} redefines torch.nn.Module's {', '.join(shadowed)}, which .to(), .half(), .train() "
            "and state_dict() go through; rename it, or list it in the class's overrides_module_methods "
            "if the override is meant"
        )
    sides = ("adapter_input", "adapter_forward", "forward")
    if all(getattr(cls, n) is getattr(AdapterLayer, n) for n in sides):
        raise LayerContractError(
            f"{where} implements neither adapter_forward(x, result, name) (output side) nor "
            "adapter_input(x, name) (input side), so its adapters would do nothing; implement one"
        )
    for name in CONTRACT_METHODS:
        _check_override(cls, name, where)
    return cls


def _check_override(cls: type, name: str, where: str) -> None:
    """Refuse an override of contract method ``name`` that cannot take the core's call."""
    ours = inspect.getattr_static(AdapterLayer, name)
    theirs = inspect.getattr_static(cls, name)
    if theirs is ours:
        return
    if isinstance(ours, classmethod) != isinstance(theirs, classmethod):
        kind = "a classmethod" if isinstance(ours, classmethod) else "an instance method"
        raise LayerContractError(f"{where}: {name} must be {kind}, as in peftkit.AdapterLayer")
    expected = inspect.signature(getattr(AdapterLayer, name))
    try:
        actual = inspect.signature(getattr(cls, name))
    except (TypeError, ValueError):
        return
    # The core passes every argument positionally, in the base class's order.
    count = sum(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in expected.parameters.values())
    try:
        actual.bind(*range(count))
    except TypeError as exc:
        raise LayerContractError(
            f"{where}: {name}{actual} cannot be called as the core calls it, {name}{expected} ({exc})"
        ) from None


class ModelLevelStore(Protocol):
    """What the core needs of a ``Method.model_level`` holder: an attribute of ``PeftModel.base_model``
    holding one tensor or module per adapter name, shared by the method's layers (VeRA's projections).

    ``nn.ParameterDict``, ``nn.ModuleDict`` and buffer-holding modules like VeRA's satisfy it. The
    core saves what ``state_dict(keep_vars=True)`` lists (non-persistent buffers are regenerated by
    the method, never saved or expected), deletes an adapter's entry with ``del``, and turns on
    gradients of its float tensors unless the holder has ``trainable = False``.
    """

    def __contains__(self, name: object) -> bool: ...

    def __getitem__(self, name: str) -> Any: ...

    def __delitem__(self, name: str) -> None: ...

    def state_dict(self, *args: Any, keep_vars: bool = False, **kwargs: Any) -> dict[str, Any]: ...


class ModulesToSave(nn.Module):
    """A module trained in full beside the adapters: one copy per adapter, the original kept frozen."""

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        self.original_module = original
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.disable_adapters = False

    def add_adapter(self, name: str) -> None:
        import copy

        clone = copy.deepcopy(self.original_module)
        clone.requires_grad_(False)
        self.modules_to_save[name] = clone

    @property
    def adapter_names(self) -> list[str]:
        return list(self.modules_to_save)

    def set_active(self, names: Sequence[str]) -> None:
        present = [n for n in names if n in self.modules_to_save]
        self.active_adapter = present[0] if present else None

    def set_requires_grad(self, names: Sequence[str], requires_grad: bool) -> None:
        for name in names:
            if name in self.modules_to_save:
                self.modules_to_save[name].requires_grad_(requires_grad)

    def adapter_state(self, name: str, prefix: str = "") -> dict[str, torch.Tensor]:
        if name not in self.modules_to_save:
            return {}
        return {
            f"{prefix}modules_to_save.{name}.{k}": v
            for k, v in self.modules_to_save[name].state_dict(keep_vars=True).items()
        }

    def delete_adapter(self, name: str) -> None:
        if name in self.modules_to_save:
            del self.modules_to_save[name]
        if self.active_adapter == name:
            self.active_adapter = None

    def current(self) -> nn.Module:
        if self.disable_adapters or self.active_adapter is None:
            return self.original_module
        return self.modules_to_save[self.active_adapter]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        per_sample = _per_sample.current()
        if per_sample is None or self.disable_adapters:
            return self.current()(*args, **kwargs)
        return self._forward_per_sample(per_sample, *args, **kwargs)

    def _forward_per_sample(
        self, per_sample: _per_sample.SampleAdapters, x: Any, *args: Any, **kwargs: Any
    ) -> Any:
        """Each sample through the copy of the adapter named for it (the original for others)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"adapter_names needs a batch tensor as first input of {type(self.original_module).__name__}"
            )
        groups = per_sample.groups(x.shape[0], x.device)
        pick = self.modules_to_save
        if len(groups) == 1:
            name = groups[0][0]
            return (pick[name] if name in pick else self.original_module)(x, *args, **kwargs)
        outputs: list[Any] = []
        order: list[torch.Tensor] = []
        for name, index in groups:
            assert index is not None  # only a single group covers the whole batch
            module = pick[name] if name in pick else self.original_module
            outputs.append(module(x[index], *args, **kwargs))
            order.append(index)
        if not all(isinstance(o, torch.Tensor) for o in outputs):
            raise TypeError(f"adapter_names: {type(self.original_module).__name__} does not return a tensor")
        return torch.cat(outputs).index_select(0, torch.argsort(torch.cat(order)))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            # Code that reads attributes of the wrapped head (``weight``, ``out_features``) keeps working.
            return getattr(self._modules["original_module"], name)

"""The method registry: what plugins register, validated and owned by the core. Imports no torch."""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from peftkit.errors import DuplicateMethodError, PluginContractError, PluginImportError, UnknownMethodError
from peftkit.hookspecs import METHOD_HOOK_NAMES, MethodHooks

if TYPE_CHECKING:
    from peftkit._config import PeftConfig
    from peftkit.layer import AdapterLayer

_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
_PEFT_TYPE = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_CONVERTER = re.compile(r"[a-z0-9][a-z0-9_.-]*\Z")


def resolve(target: str | Any) -> Any:
    """Import ``"package.module:attr"`` on first use; any other object is returned as is.

    Plugins name their classes this way so that discovery never imports torch.
    """
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


@dataclass(frozen=True)
class Method:
    """One PEFT method as a plugin registers it.

    ``name`` is lower case (``"lora"``) and ``peft_type`` upper case (``"LORA"``, the value saved in
    ``adapter_config.json``). ``config`` and ``layer`` may be classes or lazy ``"module:attr"`` strings;
    the layer class subclasses :class:`peftkit.AdapterLayer`. ``prefix`` starts the names of the
    method's parameters (``"lora_"``). ``default_targets`` maps a transformers ``model_type`` to
    module names. ``layer_types`` names the base layers the method can adapt (for ``list-methods``).
    ``view_kinds`` names the kinds of base-layer view it adapts (``"linear"``, ``"conv"``,
    ``"embedding"``), which is how methods meet backends (left empty, they are derived from
    ``layer_types``). ``model_level`` names attributes of the model-level holder (``PeftModel.base_model``) that hold
    adapter tensors shared by layers, each a :class:`peftkit.layer.ModelLevelStore` (VeRA's projections).
    ``hooks`` maps the names declared by :class:`peftkit.hookspecs.MethodHooks` (``prepare_config``,
    ``create_adapter``, ``forward``, ``generate``, ``state_slots``, ``convert_for_initial_model``) to
    functions or lazy ``"module:attr"`` strings; anything else is refused. ``model_methods`` maps
    public names to functions called as ``fn(peft_model, *args, **kwargs)`` that become methods of the
    ``PeftModel`` (LoRA's ``add_weighted_adapter``). A method with ``layer=None`` adapts no layers:
    its ``create_adapter`` hook builds model-level modules (prompt learning). ``dist`` and
    ``version`` are filled in by the core.

    Every field is checked when the method is built: a wrong one raises
    :class:`peftkit.PluginContractError`, so the plugin registering it is listed as broken.
    """

    name: str
    peft_type: str
    config: Any
    layer: Any = None
    prefix: str = ""
    default_targets: Mapping[str, Sequence[str]] = field(default_factory=dict)
    layer_types: Sequence[str] = ()
    view_kinds: Sequence[str] = ()
    model_level: Sequence[str] = ()
    model_methods: Mapping[str, Any] = field(default_factory=dict)
    hooks: Mapping[str, Any] = field(default_factory=dict)
    dist: str = "unknown"
    version: str = "0"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(
                f"Method name {self.name!r} must be lower case letters, digits and '_' (like 'lora')"
            )
        if not isinstance(self.peft_type, str) or not _PEFT_TYPE.match(self.peft_type):
            raise ValueError(
                f"Method {self.name!r}: peft_type {self.peft_type!r} must be upper case letters, digits and '_' "
                "(like 'LORA')"
            )
        kinds = view_kinds_of(self.view_kinds, f"method {self.name!r}")
        object.__setattr__(self, "view_kinds", kinds or guess_view_kinds(self.layer_types))
        _check_fields(self)

    def check_contract(self) -> None:
        """Import everything this method names and check it against the plugin contract.

        Raises :class:`peftkit.PluginContractError` or :class:`peftkit.PluginImportError` on the first
        problem (``peftkit list-methods --check`` and the conformance suite call this).
        """
        from peftkit._config import PeftConfig

        config = self.config_class
        if not (isinstance(config, type) and issubclass(config, PeftConfig)):
            raise PluginContractError(
                f"method {self.name!r} of {self.origin}: config {config!r} is not a PeftConfig subclass"
            )
        if config.PEFT_TYPE != self.peft_type:
            raise PluginContractError(
                f"method {self.name!r} of {self.origin}: config {config.__name__}.PEFT_TYPE is "
                f"{config.PEFT_TYPE!r}, but the method registers peft_type {self.peft_type!r}"
            )
        if self.layer is not None:
            self.layer_class  # noqa: B018  (imports and checks it)
        for name in self.hooks:
            self.hook(name)
        for name, target in self.model_methods.items():
            self._import(target, f"model method {name!r}")

    def hook(self, name: str) -> Callable[..., Any] | None:
        """The function of hook ``name`` (one of ``MethodHooks``), imported and checked; None if not provided."""
        target = self.hooks.get(name)
        if target is None:
            return None
        return _checked_hook(self.name, self.origin, name, self._import(target, f"hook {name!r}"))

    @property
    def config_class(self) -> type[PeftConfig]:
        return self._import(self.config, "config class")

    @property
    def layer_class(self) -> type[AdapterLayer[Any]]:
        """The layer class, imported on first use and checked against the adapter-layer contract."""
        from peftkit.layer import check_layer_class

        return check_layer_class(
            self._import(self.layer, "layer class"), f"method {self.name!r} of {self.origin}"
        )

    def _import(self, target: Any, what: str) -> Any:
        try:
            return resolve(target)
        except (ImportError, AttributeError) as exc:
            raise PluginImportError(
                f"method {self.name!r} of {self.origin}: its {what} {target!r} cannot be imported "
                f"({type(exc).__name__}: {exc}); reinstall {self.dist}, or report it to its authors"
            ) from exc

    @property
    def origin(self) -> str:
        return f"{self.dist}=={self.version}"


def _check_fields(method: Method) -> None:
    """Refuse a malformed ``Method`` at registration, with the field, what it holds and what it should."""
    if method.config is None:
        _refuse(method, "config must be the config class or a 'module:attr' string naming it")
    if not isinstance(method.prefix, str):
        _refuse(method, f"prefix must be a string like 'lora_', got {method.prefix!r}")
    for label, names in (("layer_types", method.layer_types), ("model_level", method.model_level)):
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            _refuse(method, f"{label} must be a sequence of strings, got {names!r}")
    if not isinstance(method.default_targets, Mapping) or not all(
        isinstance(k, str) and not isinstance(v, str) and all(isinstance(t, str) for t in v)
        for k, v in method.default_targets.items()
    ):
        _refuse(method, "default_targets must map a model_type string to a list of module names")
    for label, table in (("hooks", method.hooks), ("model_methods", method.model_methods)):
        if not isinstance(table, Mapping):
            _refuse(method, f"{label} must be a mapping of names to functions or 'module:attr' strings")
        for key, target in table.items():
            if not (callable(target) or (isinstance(target, str) and ":" in target)):
                _refuse(
                    method, f"{label}[{key!r}] must be a function or a 'module:attr' string, got {target!r}"
                )
    _check_model_methods(method)
    _check_hooks(method)


def _refuse(method: Method, message: str) -> None:
    raise PluginContractError(f"method {method.name!r}: {message}")


def _check_model_methods(method: Method) -> None:
    for key in method.model_methods:
        if not isinstance(key, str) or not key.isidentifier() or key.startswith("_"):
            hint = ""
            if isinstance(key, str) and key.lstrip("_") in METHOD_HOOK_NAMES:
                hint = f"; model-level hooks moved to Method.hooks: use hooks={{{key.lstrip('_')!r}: ...}}"
            _refuse(method, f"model_methods key {key!r} is not a public method name (no leading '_'){hint}")


def _check_hooks(method: Method) -> None:
    for key, target in method.hooks.items():
        if key not in METHOD_HOOK_NAMES:
            close = difflib.get_close_matches(str(key), METHOD_HOOK_NAMES, n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            _refuse(
                method,
                f"hooks key {key!r} is not a method hook{guess}; the hooks are {', '.join(METHOD_HOOK_NAMES)}",
            )
        if callable(target):
            _checked_hook(method.name, "", key, target)


def _checked_hook(method: str, origin: str, hook: str, fn: Any) -> Callable[..., Any]:
    """``fn`` if the core's call of ``hook`` (see ``MethodHooks``) can bind to its parameters; else PluginContractError."""
    expected = inspect.signature(getattr(MethodHooks, hook))
    if not callable(fn):
        raise PluginContractError(f"method {method!r}{_of(origin)}: hook {hook!r} is {fn!r}, not a function")
    try:
        actual = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or C function: nothing to read, trust it
        return fn
    kinds = {p.kind for p in actual.parameters.values()}
    wanted = [p for p in expected.parameters.values() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    problem = None
    try:
        actual.bind(*wanted)
    except TypeError as exc:
        problem = str(exc)
    for kind, what in (
        (inspect.Parameter.VAR_POSITIONAL, "*args"),
        (inspect.Parameter.VAR_KEYWORD, "**kwargs"),
    ):
        if any(p.kind is kind for p in expected.parameters.values()) and kind not in kinds:
            problem = f"it must accept {what}"
    if problem is not None:
        name = getattr(fn, "__qualname__", repr(fn))
        raise PluginContractError(
            f"method {method!r}{_of(origin)}: hook {hook!r} is {name}{actual}, which the core cannot call "
            f"as expected: {hook}{expected} ({problem})"
        )
    return fn


def _of(origin: str) -> str:
    return f" of {origin}" if origin else ""


@dataclass(frozen=True)
class Backend:
    """A base-layer backend as ``peftkit_describe_backends`` describes it (for ``list-methods``).

    ``kinds`` maps each of its ``layer_types`` to the kind of view it serves that layer as; a
    layer type left out is guessed from its name (:func:`guess_view_kind`), as for backends
    written before kinds were declared.
    """

    name: str
    layer_types: Sequence[str]
    dist: str = "unknown"
    version: str = "0"
    kinds: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        view_kinds_of(list(self.kinds.values()), f"backend {self.name!r}")
        kinds = {t: self.kinds.get(t) or guess_view_kind(t) for t in self.layer_types}
        object.__setattr__(self, "kinds", {t: kind for t, kind in kinds.items() if kind})

    @property
    def view_kinds(self) -> tuple[str, ...]:
        """The view kinds served, each once, in layer-type order."""
        return tuple(dict.fromkeys(self.kinds.values()))

    @property
    def origin(self) -> str:
        return f"{self.dist}=={self.version}"


# How layer type names looked before backends declared kinds: the dense layers' own names, and
# quantized stand-ins named after them (bitsandbytes' ``Linear4bit``). GPT-2's ``Conv1D`` is linear.
_KIND_BY_PREFIX = (("Conv1D", "linear"), ("Linear", "linear"), ("Embedding", "embedding"), ("Conv", "conv"))


def guess_view_kind(layer_type: str) -> str | None:
    """The view kind a layer type name suggests (``"Linear8bitLt"`` -> ``"linear"``), or None."""
    return next((kind for prefix, kind in _KIND_BY_PREFIX if layer_type.startswith(prefix)), None)


def guess_view_kinds(layer_types: Sequence[str]) -> tuple[str, ...]:
    """The view kinds of ``layer_types`` by name, each once, in order."""
    return tuple(dict.fromkeys(k for k in map(guess_view_kind, layer_types) if k))


def view_kinds_of(kinds: Any, owner: str) -> tuple[str, ...]:
    """``kinds`` as a tuple of kind names; a TypeError naming ``owner`` when they are not lower-case names."""
    names = None if isinstance(kinds, str) or not isinstance(kinds, Iterable) else tuple(kinds)
    if names is None or not all(isinstance(k, str) and _NAME.match(k) for k in names):
        raise TypeError(
            f"{owner}: view kinds must be lower-case names such as ('linear', 'conv'), got {kinds!r}"
        )
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class Converter:
    """A checkpoint format converter run by ``peftkit convert NAME IN OUT``.

    ``convert`` is ``convert(in_path, out_path)`` or a lazy ``"module:attr"`` string naming it.
    """

    name: str
    convert: Callable[[str, str], None] | str
    help: str = ""
    dist: str = "unknown"
    version: str = "0"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _CONVERTER.match(self.name):
            raise ValueError(f"converter name {self.name!r} must be lower case, like 'bone-to-miss'")
        if not (callable(self.convert) or isinstance(self.convert, str)):
            raise TypeError(f"converter {self.name!r}: convert must be a callable or a 'module:attr' string")

    @property
    def origin(self) -> str:
        return f"{self.dist}=={self.version}"

    def __call__(self, in_path: str, out_path: str) -> None:
        resolve(self.convert)(in_path, out_path)


def _install_hint(name: str, grammar: re.Pattern[str]) -> str:
    """What to install for an unknown method or type; a name from a file is suggested only if it is a plain name."""
    if not isinstance(name, str) or not grammar.match(name) or len(name) > 64:
        return "the type is unknown to every installed plugin and no distribution name can be derived from it"
    guess = name.lower().replace("_", "-")
    return f"install the distribution that provides it (for example `pip install peftkit-{guess}`)"


def _conflict(what: str, first: Any, second: Any) -> str:
    return f"{what} is registered by both {first.origin} and {second.origin}; uninstall one of them"


@dataclass
class Registry:
    """Methods by name, backends, converters, and the plugins that failed to load.

    A name or PEFT type claimed twice is withdrawn into ``conflicts`` / ``type_conflicts`` rather
    than one claimant silently winning, because both are written into saved adapters; using it
    then raises :class:`DuplicateMethodError` naming both distributions.
    """

    methods: dict[str, Method] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)
    conflicts: dict[str, str] = field(default_factory=dict)
    type_conflicts: dict[str, str] = field(default_factory=dict)
    backends: list[Backend] = field(default_factory=list)
    converters: dict[str, Converter] = field(default_factory=dict)
    converter_conflicts: dict[str, str] = field(default_factory=dict)

    def add(self, method: Method) -> None:
        """Add a method; a second claim on its name or PEFT type makes both unusable (see the class doc)."""
        rivals = [
            m for m in self.methods.values() if method.name == m.name or method.peft_type == m.peft_type
        ]
        if method in rivals:  # the same registration seen twice (one module behind two entry points)
            return
        if method.name in self.conflicts or method.peft_type in self.type_conflicts or rivals:
            self._withdraw(method, rivals)
            return
        self.methods[method.name] = method

    def _withdraw(self, method: Method, rivals: list[Method]) -> None:
        for other in rivals:
            del self.methods[other.name]
            if other.name == method.name:
                what = f"method {method.name!r} (PEFT type {method.peft_type!r})"
            else:
                what = f"PEFT type {method.peft_type!r} (methods {other.name!r} and {method.name!r})"
            message = _conflict(what, other, method)
            self.conflicts.setdefault(other.name, message)
            self.conflicts.setdefault(method.name, message)
            if other.peft_type == method.peft_type:
                self.type_conflicts.setdefault(method.peft_type, message)
        if not rivals:  # a further claimant of an already withdrawn name: add its origin to the message
            for table, key in ((self.conflicts, method.name), (self.type_conflicts, method.peft_type)):
                if key in table and method.origin not in table[key]:
                    table[key] = table[key].replace("; uninstall", f" and {method.origin}; uninstall")

    def add_converter(self, converter: Converter) -> None:
        """Add a converter; two with the same name withdraw each other like methods do."""
        other = self.converters.pop(converter.name, None)
        if other is not None:
            self.converter_conflicts[converter.name] = _conflict(
                f"converter {converter.name!r}", other, converter
            )
        elif converter.name not in self.converter_conflicts:
            self.converters[converter.name] = converter

    def by_name(self, name: str) -> Method:
        """The method called ``name`` (a PEFT type such as ``"LORA"`` is accepted too)."""
        key = name.lower()
        if key in self.conflicts:
            raise DuplicateMethodError(self.conflicts[key])
        if key in self.methods:
            return self.methods[key]
        if name.upper() in self.type_conflicts or any(
            m.peft_type == name.upper() for m in self.methods.values()
        ):
            return self.by_peft_type(name.upper())
        raise UnknownMethodError(
            f"no installed plugin provides the method {name!r}; installed: "
            f"{', '.join(sorted(self.methods)) or 'none'}. {_install_hint(key, _NAME).capitalize()}"
            f"{self._broken_hint()}"
        )

    def config_class_named(self, class_name: str) -> type | None:
        """The config class called ``class_name`` (``"LoraConfig"``) of an installed method, or None."""
        for method in self.methods.values():
            target = method.config
            own_name = (
                target.partition(":")[2] if isinstance(target, str) else getattr(target, "__name__", "")
            )
            if own_name == class_name:
                return method.config_class
        return None

    def by_peft_type(self, peft_type: str) -> Method:
        """The method whose adapters carry ``peft_type`` in their config."""
        if peft_type in self.type_conflicts:
            raise DuplicateMethodError(self.type_conflicts[peft_type])
        for method in self.methods.values():
            if method.peft_type == peft_type:
                return method
        if peft_type.lower() in self.conflicts:
            raise DuplicateMethodError(self.conflicts[peft_type.lower()])
        raise UnknownMethodError(
            f"this adapter has peft_type {peft_type!r}, which no installed plugin serves; "
            f"{_install_hint(peft_type, _PEFT_TYPE)}{self._broken_hint()}"
        )

    def converter(self, name: str) -> Converter:
        """The converter called ``name``; an unknown name lists the available ones."""
        if name in self.converter_conflicts:
            raise DuplicateMethodError(self.converter_conflicts[name])
        if name in self.converters:
            return self.converters[name]
        raise UnknownMethodError(
            f"no installed plugin provides the converter {name!r}; available: "
            f"{', '.join(sorted(self.converters)) or 'none'}{self._broken_hint()}"
        )

    def _broken_hint(self) -> str:
        if not self.broken:
            return ""
        return "; plugins that failed to load: " + ", ".join(f"{k} ({v})" for k, v in self.broken.items())

"""The adapter config base class and its JSON form, as Hugging Face PEFT writes it."""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import os
import re
import types
import typing
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from peftkit.errors import ConfigError

CONFIG_NAME = "adapter_config.json"

if typing.TYPE_CHECKING:
    from typing_extensions import Self


class TaskType(str, enum.Enum):
    """The transformers task a config's ``task_type`` selects a wrapper for; Hugging Face PEFT's names.

    A member is its own string (``TaskType.CAUSAL_LM == "CAUSAL_LM"``); configs store the string.
    """

    SEQ_CLS = "SEQ_CLS"
    SEQ_2_SEQ_LM = "SEQ_2_SEQ_LM"
    CAUSAL_LM = "CAUSAL_LM"
    TOKEN_CLS = "TOKEN_CLS"
    QUESTION_ANS = "QUESTION_ANS"
    FEATURE_EXTRACTION = "FEATURE_EXTRACTION"


TASK_TYPES = tuple(task.value for task in TaskType)


class _PeftTypeNames(type):
    def __getattr__(cls, name: str) -> PeftType:
        if name.isupper():  # PeftType.LORA: plugins define the types, so any upper-case name is one
            return cls(name)
        raise AttributeError(name)


class PeftType(str, metaclass=_PeftTypeNames):
    """A method's PEFT type (``"LORA"``): a plain string that also answers Hugging Face PEFT's enum
    spellings, ``PeftType.LORA`` and ``config.peft_type.value``. Configs hold and save it as the string."""

    __slots__ = ()

    @property
    def value(self) -> str:
        return str.__str__(self)


BIAS_MODES = ("none", "all")
# The PeftConfig fields a method may lack (Hugging Face PEFT's prompt-learning configs have only
# modules_to_save of these, its ShiraConfig has no bias...); a config declares its own in BASE_FIELDS.
OPTIONAL_BASE_FIELDS = (
    "target_modules",
    "exclude_modules",
    "layers_to_transform",
    "layers_pattern",
    "modules_to_save",
    "bias",
)
# Fields that describe an adapter without shaping its tensors, editable by hand in every method's file.
DESCRIPTIVE_FIELDS = ("base_model_name_or_path", "revision", "inference_mode", "peft_version", "auto_mapping")
# Fields a method lacks that select layers: the hint for them is a target_modules regex.
_LAYER_SELECTION = ("exclude_modules", "layers_to_transform", "layers_pattern")


@dataclass
class PeftConfig:
    """Fields every method shares. A method's config subclasses this and sets ``PEFT_TYPE``.

    ``target_modules`` is a list of module names (exact or dotted suffix), a regex matched
    against the whole module path, or ``"all-linear"``. ``modules_to_save`` lists modules that
    are copied and trained in full beside the adapter.

    Two class variables describe the method's fields, so that its ``adapter_config.json`` has the
    keys Hugging Face PEFT writes for it:

    * ``BASE_FIELDS``: which of the optional base fields (``OPTIONAL_BASE_FIELDS``: ``target_modules``,
      ``exclude_modules``, ``layers_to_transform``, ``layers_pattern``, ``modules_to_save``, ``bias``)
      the method has; all of them unless it says otherwise. A field left out is not written, not
      accepted by ``peftkit.config``, and refused with a ``ConfigError`` when set to anything but its
      default: Hugging Face PEFT would drop it and adapt the model differently (every layer, say,
      instead of those in ``layers_to_transform``). A saved file holding it at its default (peftkit
      0.1 wrote every field) still loads.
    * ``NON_SHAPING_FIELDS``: fields that do not shape the saved tensors or what the loaded model
      computes with them (init-only flags, dropout). A saved adapter records its other fields beside
      its weights; editing one of those by hand is refused at load with a message naming it, editing
      a non-shaping field (or a descriptive one such as ``base_model_name_or_path``) is allowed.
    """

    PEFT_TYPE: ClassVar[str] = ""
    # Extra bias modes a method accepts besides "none" and "all" (LoRA adds "lora_only").
    BIAS_EXTRA: ClassVar[tuple[str, ...]] = ()
    BASE_FIELDS: ClassVar[frozenset[str]] = frozenset(OPTIONAL_BASE_FIELDS)
    NON_SHAPING_FIELDS: ClassVar[frozenset[str]] = frozenset()

    peft_type: str | None = None
    task_type: str | None = None
    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    modules_to_save: list[str] | None = None
    bias: str = "none"
    inference_mode: bool = False
    base_model_name_or_path: str | None = None
    revision: str | None = None
    auto_mapping: dict[str, Any] | None = None
    peft_version: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _check_declared(cls, "BASE_FIELDS", OPTIONAL_BASE_FIELDS, "optional base fields")

    def __post_init__(self) -> None:
        _shaping_fields(type(self))  # type: ignore[arg-type]  # classes are hashable; mypy misreads __hash__
        _refuse_lacking(type(self), {name: getattr(self, name) for name in lacking_fields(type(self))})
        if self.PEFT_TYPE:
            if self.peft_type not in (None, self.PEFT_TYPE):
                raise ConfigError(
                    f"{type(self).__name__} has peft_type {self.PEFT_TYPE!r}, got {self.peft_type!r}"
                )
            self.peft_type = PeftType(self.PEFT_TYPE)
        self.task_type = _checked_task_type(self.task_type)
        allowed_bias = BIAS_MODES + self.BIAS_EXTRA
        if self.bias not in allowed_bias:
            raise ConfigError(f"bias={self.bias!r} is not one of {allowed_bias}")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ConfigError("layers_pattern only has an effect together with layers_to_transform; set both")
        if isinstance(self.target_modules, (set, frozenset)):
            self.target_modules = sorted(self.target_modules)
        elif isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        if self.peft_version is None:
            self.peft_version = format_version()
        for name in ("target_modules", "exclude_modules"):
            pattern = getattr(self, name)
            if isinstance(pattern, str) and pattern != "all-linear":
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ConfigError(f"{name}={pattern!r} is not a valid regex: {exc}") from None

    @classmethod
    def field_names(cls) -> list[str]:
        """The fields this method has, as written to ``adapter_config.json`` (base fields it lacks left out)."""
        lacking = lacking_fields(cls)
        return [f.name for f in dataclasses.fields(cls) if f.name not in lacking]

    @classmethod
    def shaping_fields(cls) -> list[str]:
        """The fields a saved adapter's weights depend on: every field but descriptive and ``NON_SHAPING_FIELDS``."""
        return list(_shaping_fields(cls))  # type: ignore[arg-type]  # classes are hashable; mypy misreads __hash__

    def to_dict(self) -> dict[str, Any]:
        """Every field this method has, sets turned into sorted lists."""
        out = {}
        for name in self.field_names():
            value = getattr(self, name)
            if isinstance(value, set):
                value = sorted(value)
            out[name] = value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeftConfig:
        """Build a config from a dict, dropping (with a warning naming them) keys this version does not know.

        A base field the method lacks is accepted at its default (peftkit 0.1 wrote them all) and
        refused with a ``ConfigError`` otherwise.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        _refuse_lacking(cls, {name: data[name] for name in lacking_fields(cls) if name in data}, saved=True)
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(
                f"{cls.__name__}: ignoring unknown keys {unknown} (written by a newer or different version)"
            )
        return build_checked(cls, {k: v for k, v in data.items() if k in known})

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def lacking_fields(cls: type[PeftConfig]) -> tuple[str, ...]:
    """The optional base fields ``cls`` does not have (see ``PeftConfig.BASE_FIELDS``)."""
    return tuple(name for name in OPTIONAL_BASE_FIELDS if name not in cls.BASE_FIELDS)


def _check_declared(cls: type[PeftConfig], attr: str, allowed: Iterable[str], what: str) -> None:
    """Raise TypeError unless ``cls.<attr>`` is a frozenset of names from ``allowed``: a plugin's mistake, named."""
    declared = getattr(cls, attr)
    if not (isinstance(declared, frozenset) and all(isinstance(name, str) for name in declared)):
        raise TypeError(f"{cls.__name__}.{attr} must be a frozenset of field names, got {declared!r}")
    stray = sorted(declared - set(allowed))
    if stray:
        raise TypeError(
            f"{cls.__name__}.{attr} names {stray}, which are not {what}; those are: {', '.join(allowed)}"
        )


@functools.cache
def _shaping_fields(cls: type[PeftConfig]) -> tuple[str, ...]:
    # Checked here, not in __init_subclass__: a subclass's own fields exist only once @dataclass has run.
    fields = cls.field_names()
    _check_declared(cls, "NON_SHAPING_FIELDS", fields, f"fields of {cls.__name__}")
    skipped = cls.NON_SHAPING_FIELDS | set(DESCRIPTIVE_FIELDS)
    return tuple(name for name in fields if name not in skipped)


@functools.cache
def _base_defaults() -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(PeftConfig)}


def _refuse_lacking(cls: type[PeftConfig], values: dict[str, Any], saved: bool = False) -> None:
    """Raise ConfigError naming the base fields ``cls`` lacks that ``values`` sets to anything but the default.

    ``saved``: the values come from a saved adapter (peftkit 0.1 accepted such settings), not from the user.
    """
    defaults = _base_defaults()
    wrong = {name: value for name, value in values.items() if value != defaults[name]}
    if wrong:
        raise ConfigError(lacking_message(cls, wrong, saved))


def lacking_message(cls: type[PeftConfig], wrong: dict[str, Any], saved: bool = False) -> str:
    shown = ", ".join(f"{name}={value!r}" for name, value in wrong.items())
    head = (
        f"{cls.__name__} has no {' or '.join(wrong)} field: Hugging Face PEFT's config for this method has "
        "none either, and would adapt the model differently."
    )
    fix = (
        " (select modules with a regex in target_modules instead)"
        if set(wrong) & set(_LAYER_SELECTION)
        else ""
    )
    if saved:
        return (
            f"{head} This adapter config sets {shown}, which peftkit 0.1 accepted; rebuild the adapter "
            f"without {' and '.join(wrong)}{fix}"
        )
    return f"{head} Remove {shown}{fix}"


def _checked_task_type(task_type: Any) -> str | None:
    """``task_type`` as the plain string configs save (a :class:`TaskType` member is turned into its value)."""
    if isinstance(task_type, TaskType):
        return task_type.value
    if task_type is not None and task_type not in TASK_TYPES:
        raise ConfigError(f"task_type {task_type!r} is not one of {', '.join(TASK_TYPES)}")
    return task_type


def build_checked(cls: type[PeftConfig], values: dict[str, Any]) -> PeftConfig:
    """``cls(**values)``, with every field's type checked (see ``check_field_types``).

    The method's own checks run first, so their messages win; a value of a kind they did not
    expect (a ``TypeError`` inside them) is still reported as a ``ConfigError``.
    """
    try:
        config = cls(**values)
    except (TypeError, AttributeError, OverflowError) as exc:
        check_field_types(cls, values)
        raise ConfigError(f"{cls.__name__}: a field has a value of the wrong kind ({exc})") from None
    check_field_types(cls, {f.name: getattr(config, f.name) for f in dataclasses.fields(config)})
    return config


def check_field_types(cls: type[PeftConfig], values: dict[str, Any]) -> None:
    """Raise ConfigError naming the first field of ``cls`` whose value in ``values`` does not fit its annotation.

    Only the plain JSON shapes are checked (bool, int, float, str, None, ``list[...]``, ``dict[...]``,
    unions); an annotation of any other kind accepts anything. ``int`` and ``float`` fields take
    any number but ``bool`` (the method checks ranges), and ``list`` fields take tuples.
    """
    # A class is hashable; mypy checks its class object against the instances' __hash__ = None (eq dataclass).
    hints = _field_hints(cls)  # type: ignore[arg-type]
    for name, value in values.items():
        hint = hints.get(name)
        if hint is not None and not _fits(value, hint):
            raise ConfigError(
                f"{cls.__name__}: {name}={value!r} is not a valid value; expected {_describe(hint)}"
            )


@functools.cache
def _field_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that cannot be resolved: leave that config unchecked
        return {}


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        # Numbers are not told apart: configs in the wild hold float alphas in int fields.
        return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 2**63
    if hint is str:
        return isinstance(value, str)
    if origin is list or hint is list:
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value if args)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            return False
        return not args or all(_fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items())
    return True  # a type this check does not model (a class, Literal...): the method validates it


def _describe(hint: Any) -> str:
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("NoneType", "None")


# The Hugging Face PEFT release whose on-disk format peftkit writes. Readers compare
# ``peft_version`` against PEFT releases (OFT picks its Neumann convention by it), so the field
# holds that release, with peftkit's own version as a PEP 440 local label.
PEFT_FORMAT_VERSION = "0.21.2"


def format_version() -> str:
    """The ``peft_version`` written into new configs, e.g. ``"0.21.2+peftkit.0.1.0"``."""
    from peftkit._version import __version__

    return f"{PEFT_FORMAT_VERSION}+peftkit.{__version__}"


def read_config_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``adapter_config.json`` from an adapter folder (or the file itself) as a dict."""
    path = os.fspath(path)
    file = path if path.endswith(".json") else os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(file):
        raise ConfigError(
            f"no {CONFIG_NAME} in {path!r}: this is not an adapter folder "
            "(save one with model.save_pretrained(path))"
        )
    with open(file, "rb") as fh:
        return config_dict_from_bytes(fh.read(), file)


def config_dict_from_bytes(raw: bytes, file: str) -> dict[str, Any]:
    """``adapter_config.json``'s content, already read from ``file`` (named in errors), as a dict."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ConfigError(
            f"{file} nests JSON arrays or objects too deeply to be an adapter config; it is damaged or hostile"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file} must hold a JSON object, found {type(data).__name__}")
    if not data.get("peft_type"):
        raise ConfigError(f"{file} has no 'peft_type'; cannot tell which method wrote this adapter")
    return data

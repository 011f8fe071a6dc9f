"""The ``peftkit`` command line: ``list-methods``, ``inspect PATH`` and ``convert NAME IN OUT``.

It imports no torch unless a command needs tensors (only ``inspect`` on a legacy ``.bin``
adapter does): ``inspect`` reads a safetensors file's header, not its data. Errors in the
user's input print one line on stderr and exit with status 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from peftkit._config import CONFIG_NAME, ConfigError, read_config_dict
from peftkit._registry import Backend, DuplicateMethodError, Method, Registry, UnknownMethodError
from peftkit.errors import PeftkitError

# The same names as peftkit._io, which imports torch.
WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"
TENSOR_ROWS = 20  # above this many tensors, ``inspect`` groups them by layer unless --all
EXIT_USER_ERROR = 2

# safetensors dtype code -> (name users know, bytes per element)
_DTYPES = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U64": ("uint64", 8),
    "U32": ("uint32", 4),
    "U16": ("uint16", 2),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}


class CliError(Exception):
    """A problem with what the user asked for; printed as one line, exit status 2."""


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape and dtype of one stored tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count


# --- entry point ---------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None, registry: Registry | None = None) -> int:
    """Run the ``peftkit`` command with ``argv`` (default ``sys.argv[1:]``) and return the exit status.

    ``registry`` defaults to the installed plugins; tests pass one built from fake plugins.
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse has already printed the usage error
        return int(exc.code or 0)
    try:
        return args.run(args, registry)
    except Exception as exc:
        if not _is_user_error(exc):
            raise
        message = " ".join(str(exc).split())
        print(f"peftkit {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR


def _is_user_error(exc: Exception) -> bool:
    """Whether ``exc`` is about the user's input (printed as one line) rather than a bug (a traceback)."""
    return isinstance(exc, (CliError, OSError, PeftkitError))


def _parser() -> argparse.ArgumentParser:
    from peftkit import __version__

    parser = argparse.ArgumentParser(
        prog="peftkit", description="Parameter-efficient fine-tuning: a core plus plugins."
    )
    parser.add_argument("--version", action="version", version=f"peftkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list-methods", help="installed methods, backends, converters and broken plugins")
    p.add_argument("--json", action="store_true", help="print a JSON document instead of tables")
    p.add_argument(
        "--check",
        action="store_true",
        help="also import every method's hooks and classes and check them against the plugin contract "
        "(imports torch); exit status 1 if any plugin is broken",
    )
    p.set_defaults(run=cmd_list_methods)

    p = sub.add_parser("inspect", help="describe a saved adapter folder without loading a model")
    p.add_argument("path", help="folder holding adapter_config.json and adapter_model.safetensors")
    p.add_argument("--json", action="store_true", help="print a JSON document")
    p.add_argument(
        "--all", action="store_true", help=f"list every tensor even when there are more than {TENSOR_ROWS}"
    )
    p.set_defaults(run=cmd_inspect)

    p = sub.add_parser("convert", help="convert a checkpoint with a converter a plugin provides")
    p.add_argument("name", help="converter name (see `peftkit list-methods`)")
    p.add_argument("input", help="the checkpoint to read")
    p.add_argument("output", help="where to write the converted checkpoint")
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser("new-plugin", help="write a ready method plugin package peftkit-NAME to start from")
    p.add_argument("name", help="method name: a lower-case Python identifier, e.g. mymethod")
    p.add_argument("--dir", default=".", help="folder to create peftkit-NAME in (default: here)")
    p.set_defaults(run=cmd_new_plugin)

    from peftkit.finetune.command import add_parser as add_finetune  # its own package; imports no torch

    add_finetune(sub)
    from peftkit.bench_cli import add_parser as add_bench  # runs bench/peftkit_bench.py of a checkout

    add_bench(sub)
    return parser


def _registry(registry: Registry | None) -> Registry:
    if registry is not None:
        return registry
    from peftkit._plugins import registry as installed

    return installed()


# --- list-methods --------------------------------------------------------------------------
def cmd_list_methods(args: argparse.Namespace, registry: Registry | None) -> int:
    """``peftkit list-methods``: print what the installed plugins provide, and what failed to load."""
    doc = describe_plugins(_registry(registry), check=args.check)
    print(json.dumps(doc, indent=2) if args.json else _plugins_text(doc))
    return 1 if args.check and doc["broken"] else 0


def describe_plugins(registry: Registry, check: bool = False) -> dict[str, Any]:
    """The ``list-methods --json`` document: methods, backends, converters, conflicts and broken plugins.

    With ``check``, every method's hooks, layer and config classes are imported and checked against
    the plugin contract (this imports torch); a method that fails is listed as broken instead.
    """
    broken = dict(registry.broken)
    methods = sorted(registry.methods.values(), key=lambda m: m.name)
    if check:
        failing = {m.name: problem for m in methods if (problem := _contract_problem(m)) is not None}
        broken.update({f"{m.dist} (method {m.name})": failing[m.name] for m in methods if m.name in failing})
        methods = [m for m in methods if m.name not in failing]
    return {
        "methods": [
            {
                "method": m.name,
                "peft_type": m.peft_type,
                "distribution": m.dist,
                "version": m.version,
                "layer_types": list(m.layer_types),
                "view_kinds": list(m.view_kinds),
                "backends": method_backends(m, registry.backends),
            }
            for m in methods
        ],
        "backends": [
            {
                "backend": b.name,
                "distribution": b.dist,
                "version": b.version,
                "layer_types": list(b.layer_types),
                "view_kinds": dict(b.kinds),
            }
            for b in registry.backends
        ],
        "converters": [
            {"converter": c.name, "distribution": c.dist, "version": c.version, "help": c.help}
            for c in sorted(registry.converters.values(), key=lambda c: c.name)
        ],
        "conflicts": sorted(
            {
                *registry.conflicts.values(),
                *registry.type_conflicts.values(),
                *registry.converter_conflicts.values(),
            }
        ),
        "broken": dict(sorted(broken.items())),
    }


def _contract_problem(method: Method) -> str | None:
    try:
        method.check_contract()
    except PeftkitError as exc:
        return f"{method.origin}: {type(exc).__name__}: {exc}"
    return None


def method_backends(method: Method, backends: Sequence[Backend]) -> list[str]:
    """The backends that serve a kind of view ``method`` adapts (``"linear"``, ``"conv"``...).

    Both sides declare kinds (a backend per layer type, a method as ``view_kinds``), so a backend's
    own layer names (``HQQLinear``) need not resemble the dense ones. A method that adapts no
    layers (prompt learning changes the inputs) works on every backend.
    """
    if not method.view_kinds:
        return [b.name for b in backends]
    return [b.name for b in backends if set(b.view_kinds) & set(method.view_kinds)]


def _plugins_text(doc: dict[str, Any]) -> str:
    rows: list[tuple[Any, ...]] = [
        (
            m["method"],
            m["peft_type"],
            m["distribution"],
            m["version"],
            ", ".join(m["backends"]) or "-",
            ", ".join(m["layer_types"]),
        )
        for m in doc["methods"]
    ]
    headers = ("method", "PEFT type", "distribution", "version", "backends", "base layers")
    parts = ["Methods", _table(headers, rows)]
    if not rows:
        parts[1] = "  none installed; install a method plugin, for example `pip install peftkit-lora`"
    rows = [
        (b["backend"], b["distribution"], b["version"], _by_kind(b["layer_types"], b["view_kinds"]))
        for b in doc["backends"]
    ]
    parts += ["", "Backends", _table(("backend", "distribution", "version", "view kind: base layers"), rows)]
    if doc["converters"]:
        rows = [(c["converter"], c["distribution"], c["version"], c["help"]) for c in doc["converters"]]
        parts += [
            "",
            "Converters (peftkit convert NAME IN OUT)",
            _table(("name", "distribution", "version", "what"), rows),
        ]
    if doc["conflicts"]:
        parts += ["", "Conflicts (these names cannot be used until one distribution is uninstalled)"]
        parts += [f"  {message}" for message in doc["conflicts"]]
    if doc["broken"]:
        parts += ["", "Broken plugins (skipped)"]
        parts += [f"  {name}: {error}" for name, error in doc["broken"].items()]
    return "\n".join(parts)


def _by_kind(layer_types: Sequence[str], kinds: dict[str, str]) -> str:
    """``"linear: Linear, Conv1D; conv: Conv2d"``: a backend's layer types grouped by the view kind served."""
    groups: dict[str, list[str]] = {}
    for layer_type in layer_types:
        groups.setdefault(kinds.get(layer_type, "unknown kind"), []).append(layer_type)
    return "; ".join(f"{kind}: {', '.join(types)}" for kind, types in groups.items())


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


# --- inspect -------------------------------------------------------------------------------
def cmd_inspect(args: argparse.Namespace, registry: Registry | None) -> int:
    """``peftkit inspect PATH``: method, config, tensors and sizes of a saved adapter."""
    doc = describe_adapter(args.path, _registry(registry))
    print(json.dumps(doc, indent=2) if args.json else _adapter_text(doc, show_all=args.all))
    return 0


def describe_adapter(path: str, registry: Registry) -> dict[str, Any]:
    """What ``inspect`` reports about the adapter folder ``path``; raises ``CliError``/``ConfigError`` on bad input."""
    if not os.path.isdir(path):
        raise CliError(f"{path!r} is not a folder; pass the adapter folder (the one holding {CONFIG_NAME})")
    if not os.path.isfile(os.path.join(path, CONFIG_NAME)):
        raise ConfigError(f"no {CONFIG_NAME} in {path!r}: not an adapter folder{_subfolder_hint(path)}")
    config = read_config_dict(path)
    weights, tensors, metadata = _read_weights(path)
    method: dict[str, Any] = {"method": None, "distribution": None, "version": None, "note": None}
    try:
        found = registry.by_peft_type(str(config["peft_type"]))
        method.update(method=found.name, distribution=found.dist, version=found.version)
    except (UnknownMethodError, DuplicateMethodError) as exc:
        method["note"] = str(exc)
    return {
        "path": os.path.abspath(path),
        "peft_type": config["peft_type"],
        **method,
        "config": config,
        "weights_file": os.path.basename(weights),
        "file_size": os.path.getsize(weights),
        "num_tensors": len(tensors),
        "num_parameters": sum(t.numel for t in tensors),
        "tensors": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in tensors],
        "metadata": metadata,
    }


def _subfolder_hint(path: str) -> str:
    subs = sorted(d for d in os.listdir(path) if os.path.isfile(os.path.join(path, d, CONFIG_NAME)))
    if not subs:
        return " (save one with model.save_pretrained(path))"
    return f"; it holds adapters in sub-folders {subs}: inspect {os.path.join(path, subs[0])!r}"


def _read_weights(folder: str) -> tuple[str, list[TensorInfo], dict[str, str]]:
    file = os.path.join(folder, WEIGHTS_NAME)
    if os.path.isfile(file):
        tensors, metadata = read_safetensors_header(file)
        return file, tensors, metadata
    legacy = os.path.join(folder, LEGACY_WEIGHTS_NAME)
    if os.path.isfile(legacy):
        from peftkit._io import load_tensors  # a pickle needs torch to read; safetensors does not

        loaded, metadata = load_tensors(folder)
        infos = [
            TensorInfo(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in loaded.items()
        ]
        return legacy, infos, metadata
    raise CliError(
        f"no {WEIGHTS_NAME} (or {LEGACY_WEIGHTS_NAME}) in {folder!r}; the adapter's weights are missing"
    )


def read_safetensors_header(file: str) -> tuple[list[TensorInfo], dict[str, str]]:
    """The tensors (name, shape, dtype) and metadata of a safetensors file, read from its header alone.

    The header is checked against the file size, so a truncated or overwritten file is a ``CliError``.
    """
    size = os.path.getsize(file)
    with open(file, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise _corrupt(file, f"it is only {size} bytes long")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8:
            raise _corrupt(file, f"its header claims {header_len} bytes but the file has {size}")
        try:
            header = json.loads(fh.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _corrupt(file, f"its header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _corrupt(file, "its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_size = size - 8 - header_len
    tensors = [_tensor_info(file, name, entry, data_size) for name, entry in sorted(header.items())]
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def _tensor_info(file: str, name: str, entry: Any, data_size: int) -> TensorInfo:
    try:
        dtype, shape, (start, end) = (
            entry["dtype"],
            tuple(int(s) for s in entry["shape"]),
            entry["data_offsets"],
        )
    except (TypeError, KeyError, ValueError) as exc:
        raise _corrupt(file, f"the header entry for {name!r} is malformed ({exc!r})") from None
    info = TensorInfo(name, shape, _DTYPES.get(dtype, (dtype, 0))[0])
    itemsize = _DTYPES.get(dtype, (dtype, 0))[1]
    if not 0 <= start <= end <= data_size:
        raise _corrupt(
            file, f"{name!r} lies at bytes {start}..{end} but the data has {data_size} (truncated?)"
        )
    if itemsize and end - start != info.numel * itemsize:
        raise _corrupt(
            file, f"{name!r} has {end - start} bytes, not the {info.numel * itemsize} its shape needs"
        )
    return info


def _corrupt(file: str, why: str) -> CliError:
    return CliError(f"{file} is not a readable safetensors file: {why}; save the adapter again")


def _adapter_text(doc: dict[str, Any], show_all: bool) -> str:
    if doc["method"]:
        method = (
            f"{doc['method']} (PEFT type {doc['peft_type']}) from {doc['distribution']}=={doc['version']}"
        )
    else:
        method = f"PEFT type {doc['peft_type']}, served by no installed plugin: {doc['note']}"
    dtypes = sorted({t["dtype"] for t in doc["tensors"]})
    lines = [
        f"Adapter     {doc['path']}",
        f"Method      {method}",
        f"Weights     {doc['weights_file']}, {_human_size(doc['file_size'])} ({doc['file_size']:,} bytes)",
        f"Parameters  {doc['num_parameters']:,} in {doc['num_tensors']} tensors ({', '.join(dtypes) or 'none'})",
        "Config",
        *("  " + line for line in json.dumps(doc["config"], indent=2, sort_keys=True).splitlines()),
        "Tensors",
    ]
    tensors = doc["tensors"]
    if show_all or len(tensors) <= TENSOR_ROWS:
        rows = [(t["name"], _shape(t["shape"]), t["dtype"]) for t in tensors]
        lines.append(_table(("name", "shape", "dtype"), rows))
    else:
        lines.append(_table(("name (layer numbers as *)", "count", "shape", "dtype"), _grouped(tensors)))
        lines.append(f"  ({len(tensors)} tensors grouped; --all lists each)")
    return "\n".join(lines)


def _grouped(tensors: list[dict[str, Any]]) -> list[tuple[str, int, str, str]]:
    """Tensors that differ only in layer numbers, as one row each: name pattern, count, shape, dtype."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for t in tensors:
        groups.setdefault(re.sub(r"\.\d+\.", ".*.", t["name"]), []).append(t)
    rows = []
    for pattern, members in groups.items():
        shapes = {_shape(t["shape"]) for t in members}
        dtypes = {t["dtype"] for t in members}
        rows.append(
            (pattern, len(members), shapes.pop() if len(shapes) == 1 else "mixed", ", ".join(sorted(dtypes)))
        )
    return rows


def _shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# --- convert -------------------------------------------------------------------------------
def cmd_convert(args: argparse.Namespace, registry: Registry | None) -> int:
    """``peftkit convert NAME IN OUT``: run a converter registered by a plugin."""
    converter = _registry(registry).converter(args.name)
    if not os.path.exists(args.input):
        raise CliError(f"input {args.input!r} does not exist")
    if os.path.abspath(args.input) == os.path.abspath(args.output):
        raise CliError("input and output are the same path; write the converted checkpoint somewhere new")
    converter(args.input, args.output)
    print(f"converted {args.input} -> {args.output} with {converter.name} ({converter.origin})")
    return 0


# --- new-plugin ----------------------------------------------------------------------------
def cmd_new_plugin(args: argparse.Namespace, registry: Registry | None) -> int:
    """``peftkit new-plugin NAME [--dir D]``: write a plugin package to start a new method from."""
    from peftkit.scaffold import ScaffoldError, new_plugin

    try:
        root = new_plugin(args.name, args.dir)
    except ScaffoldError as exc:
        raise CliError(str(exc)) from None
    print(f"wrote {root}\nnext: pip install -e {root} && peftkit list-methods && pytest {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

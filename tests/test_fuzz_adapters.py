"""Property tests: whatever is in an adapter folder, loading ends in success or a clear peftkit error.

"Clear" is defined precisely as: the exception is an instance of one of peftkit's own error
classes (``CLEAR_ERRORS`` below, each raised by peftkit with a message saying what was wrong),
never a ``TypeError`` / ``RuntimeError`` / ``OverflowError`` from deep inside torch, json or
safetensors. And a failed load leaves the model it was aimed at exactly as it was: same module
types, same parameter objects with the same values and ``requires_grad``, same adapters.

Both entry points are fuzzed: ``PeftModel.from_pretrained`` on a plain model and ``load_adapter``
on a ``PeftModel`` already holding an adapter. Configs are fuzzed with and without peftkit's
config digest in the weights (Hugging Face PEFT saves have none, so the config checks themselves
must hold the line).
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

import peftkit
from peftkit import CheckpointError, ConfigError
from peftkit._injection import UnsupportedLayerError
from peftkit._registry import DuplicateMethodError, UnknownMethodError
from peftkit.testing import make_model

CLEAR_ERRORS = (ConfigError, CheckpointError, UnknownMethodError, DuplicateMethodError, UnsupportedLayerError)
FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


# --- the adapter being corrupted --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A LoRA adapter on the conformance MLP, as the two files' contents (with and without digest)."""
    folder = tmp_path_factory.mktemp("original")
    config = peftkit.config("lora", r=2, target_modules=["lin0", "lin1"], init_lora_weights=False)
    peftkit.get_peft_model(make_model("mlp"), config).save_pretrained(folder)
    tensors = load_file(folder / WEIGHTS)
    plain = tmp_path_factory.mktemp("plain") / WEIGHTS
    save_file(tensors, plain, metadata={"format": "pt"})  # what Hugging Face PEFT writes: no digest
    return {
        "config": json.loads((folder / CONFIG).read_text()),
        "tensors": tensors,
        "weights": (folder / WEIGHTS).read_bytes(),
        "weights_no_digest": plain.read_bytes(),
    }


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """One folder rewritten by every example (hypothesis examples cannot use function-scoped tmp_path)."""
    folder = Path(tempfile.mkdtemp(prefix="peftkit-fuzz-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _write(
    folder: Path, config: Any = None, weights: bytes | None = None, raw_config: bytes | None = None
) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    (folder / CONFIG).write_bytes(raw_config if raw_config is not None else json.dumps(config).encode())
    if weights is not None:
        (folder / WEIGHTS).write_bytes(weights)
    return folder


# --- "never a partly modified model" -----------------------------------------------------------------------
def _snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "modules": [(name, type(m)) for name, m in model.named_modules()],
        "params": [(n, id(p), p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()],
        "training": model.training,
        "adapters": (list(getattr(model, "peft_config", {})), list(getattr(model, "active_adapters", []))),
    }


def _assert_same(model: nn.Module, before: dict[str, Any]) -> None:
    after = _snapshot(model)
    assert after["modules"] == before["modules"], "the module tree changed"
    assert after["training"] == before["training"] and after["adapters"] == before["adapters"]
    assert len(after["params"]) == len(before["params"])
    for (name, ident, value, grad), (name2, ident2, value2, grad2) in zip(
        before["params"], after["params"], strict=True
    ):
        assert (name, ident, grad) == (name2, ident2, grad2), (
            f"{name} was replaced or its requires_grad changed"
        )
        assert torch.equal(value, value2), f"{name} changed"


def _check_load(folder: Path) -> None:
    """Both ways of loading ``folder`` succeed or raise a clear error leaving their model untouched."""
    base = make_model("mlp")
    _attempt(base, lambda: peftkit.PeftModel.from_pretrained(base, folder))
    existing = peftkit.get_peft_model(
        make_model("mlp"),
        peftkit.config("lora", r=2, target_modules=["lin1", "lin2"], init_lora_weights=False),
    )
    _attempt(existing, lambda: existing.load_adapter(folder, adapter_name="other"))


def _attempt(model: nn.Module, load: Callable[[], Any]) -> None:
    before = _snapshot(model)
    try:
        load()
    except CLEAR_ERRORS as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        _assert_same(model, before)
    # Anything else propagates and fails the test with its own traceback: that is the bug to fix.


# --- adapter_config.json -------------------------------------------------------------------------------------
@FUZZ
@given(content=json_values)
def test_config_that_is_any_json_value(content: Any, original: dict[str, Any], scratch: Path) -> None:
    folder = _write(scratch, content, original["weights"])
    base = make_model("mlp")
    before = _snapshot(base)
    with pytest.raises(ConfigError):  # never an object with a peft_type this test could build
        peftkit.PeftModel.from_pretrained(base, folder)
    _assert_same(base, before)


@FUZZ
@given(data=st.binary(max_size=64))
def test_config_file_of_random_bytes(data: bytes, original: dict[str, Any], scratch: Path) -> None:
    _check_load(_write(scratch, raw_config=data, weights=original["weights"]))


FIELDS = ["r", "lora_alpha", "lora_dropout", "target_modules", "exclude_modules", "modules_to_save", "bias",
          "layers_to_transform", "layers_pattern", "peft_type", "task_type", "use_dora", "fan_in_fan_out",
          "init_lora_weights", "rank_pattern", "alpha_pattern", "auto_mapping", "inference_mode", "use_rslora",
          "lora_bias", "base_model_name_or_path", "revision", "peft_version"]  # fmt: skip

# Values of the wrong kind for most fields, and a few right-kind values that are wrong for this model.
field_values = json_values | st.sampled_from(
    [
        0,
        -1,
        3,
        1000,
        2.5,
        "all-linear",
        "lin.*",
        "((",
        ["relu"],
        ["lin2"],
        ["nothere"],
        "LORA",
        "MISS",
        "lora",
        "",
    ]
)


@FUZZ
@given(
    changes=st.dictionaries(st.sampled_from(FIELDS), field_values, min_size=1, max_size=3),
    dropped=st.lists(st.sampled_from(FIELDS), max_size=2),
    digest=st.booleans(),
)
def test_config_fields_of_wrong_type_or_value(
    changes: dict[str, Any], dropped: list[str], digest: bool, original: dict[str, Any], scratch: Path
) -> None:
    config = {**original["config"], **changes}
    for key in dropped:
        config.pop(key, None)
    weights = original["weights"] if digest else original["weights_no_digest"]
    _check_load(_write(scratch, config, weights))


def test_missing_peft_type_and_non_object_are_config_errors(original: dict[str, Any], scratch: Path) -> None:
    """Pinned cases of the properties above, with their messages."""
    config = dict(original["config"])
    del config["peft_type"]
    base = make_model("mlp")
    with pytest.raises(ConfigError, match="no 'peft_type'"):
        peftkit.PeftModel.from_pretrained(base, _write(scratch, config, original["weights"]))
    with pytest.raises(ConfigError, match="must hold a JSON object, found list"):
        peftkit.PeftModel.from_pretrained(base, _write(scratch, [config], original["weights"]))
    with pytest.raises(ConfigError, match=r"r=True is not a valid value; expected int"):
        peftkit.PeftModel.from_pretrained(base, _write(scratch, {**config, "peft_type": "LORA", "r": True},
                                                       original["weights_no_digest"]))  # fmt: skip
    with pytest.raises(ConfigError, match=r"target_modules=\[1, 2\] is not a valid value"):
        peftkit.PeftModel.from_pretrained(
            base,
            _write(
                scratch,
                {**config, "peft_type": "LORA", "target_modules": [1, 2]},
                original["weights_no_digest"],
            ),
        )
    with pytest.raises(ConfigError, match="not a valid regex"):
        peftkit.PeftModel.from_pretrained(
            base,
            _write(
                scratch,
                {**config, "peft_type": "LORA", "target_modules": "(("},
                original["weights_no_digest"],
            ),
        )


# --- adapter_model.safetensors ---------------------------------------------------------------------------
@FUZZ
@given(cut=st.integers(min_value=0), digest=st.booleans())
def test_truncated_weights(cut: int, digest: bool, original: dict[str, Any], scratch: Path) -> None:
    weights = original["weights"] if digest else original["weights_no_digest"]
    folder = _write(scratch, original["config"], weights[: cut % len(weights)])
    base = make_model("mlp")
    before = _snapshot(base)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        peftkit.PeftModel.from_pretrained(base, folder)
    _assert_same(base, before)
    _check_load(folder)


@FUZZ
@given(data=st.binary(max_size=256))
def test_weights_of_random_bytes(data: bytes, original: dict[str, Any], scratch: Path) -> None:
    _check_load(_write(scratch, original["config"], data))


@FUZZ
@given(position=st.integers(min_value=0), byte=st.integers(0, 255))
def test_weights_with_one_byte_changed(
    position: int, byte: int, original: dict[str, Any], scratch: Path
) -> None:
    weights = bytearray(original["weights_no_digest"])
    weights[position % len(weights)] = byte  # in the header: corrupt JSON; in the data: other numbers
    _check_load(_write(scratch, original["config"], bytes(weights)))


def _header(weights: bytes) -> tuple[dict[str, Any], bytes]:
    (size,) = struct.unpack("<Q", weights[:8])
    return json.loads(weights[8 : 8 + size]), weights[8 + size :]


def _with_header(header: dict[str, Any], data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@FUZZ
@given(
    shape=st.lists(st.integers(0, 2**62), min_size=1, max_size=3),
    offsets=st.tuples(st.integers(0, 2**62), st.integers(0, 2**62)) | st.none(),
    dtype=st.sampled_from(["F32", "F16", "I64", "BOOL", "U8", "XX", 5]),
    which=st.integers(min_value=0),
)
def test_header_declaring_huge_shapes_or_offsets(
    shape: list[int], offsets: Any, dtype: Any, which: int, original: dict[str, Any], scratch: Path
) -> None:
    """A well-formed header whose entries lie: huge shapes, offsets beyond the file, unknown dtypes."""
    header, data = _header(original["weights"])
    key = sorted(k for k in header if k != "__metadata__")[which % (len(header) - 1)]
    entry = header[key]
    entry["shape"], entry["dtype"] = shape, dtype
    if offsets is not None:
        entry["data_offsets"] = sorted(offsets)
    _check_load(_write(scratch, original["config"], _with_header(header, data)))


tensor_edits = st.sampled_from(
    ["keep", "drop", "int32", "int64", "bool", "float16", "float64", "reshape", "empty"]
)


@FUZZ
@given(
    edits=st.lists(tensor_edits, min_size=4, max_size=4),
    extra=st.dictionaries(st.text(min_size=1, max_size=20), st.integers(0, 3), max_size=2),
    digest=st.booleans(),
)
def test_tensors_with_wrong_dtypes_shapes_and_keys(
    edits: list[str], extra: dict[str, int], digest: bool, original: dict[str, Any], scratch: Path
) -> None:
    """Valid files whose tensors are not what the adapter needs: int where float belongs, missing, extra."""
    tensors: dict[str, torch.Tensor] = {}
    for (key, value), edit in zip(sorted(original["tensors"].items()), edits, strict=True):
        if edit == "keep":
            tensors[key] = value
        elif edit == "reshape":
            tensors[key] = value.reshape(-1)
        elif edit == "empty":
            tensors[key] = value[:0]
        elif edit != "drop":
            tensors[key] = value.to(getattr(torch, edit))
    for key, size in extra.items():
        tensors[f"base_model.model.{key}"] = torch.ones(size)
    metadata = {"format": "pt"}
    if digest:
        metadata.update(_header(original["weights"])[0]["__metadata__"])
    save_file(tensors, scratch.parent / "fuzz-weights.safetensors", metadata=metadata)
    weights = (scratch.parent / "fuzz-weights.safetensors").read_bytes()
    _check_load(_write(scratch, original["config"], weights))


def test_int_tensor_where_float_belongs_names_the_key(original: dict[str, Any], scratch: Path) -> None:
    tensors = {k: (v.to(torch.int64) if "lin0.lora_A" in k else v) for k, v in original["tensors"].items()}
    save_file(tensors, scratch.parent / "int.safetensors")
    folder = _write(scratch, original["config"], (scratch.parent / "int.safetensors").read_bytes())
    base = make_model("mlp")
    with pytest.raises(CheckpointError, match=r"lin0\.lora_A\.weight: the model expects dtype torch.float32"):
        peftkit.PeftModel.from_pretrained(base, folder)


def test_fuzz_helpers_detect_a_partial_change() -> None:
    """The snapshot comparison really catches a swapped module, a changed value and a requires_grad flip."""
    for change in (
        lambda m: setattr(m, "lin0", nn.Linear(16, 32)),
        lambda m: m.lin1.weight.data.add_(1.0),
        lambda m: m.lin2.bias.requires_grad_(False),
    ):
        model = make_model("mlp")
        before = _snapshot(model)
        change(model)
        with pytest.raises(AssertionError):
            _assert_same(model, before)

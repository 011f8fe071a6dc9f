"""The promises peftkit keeps against hostile files, faults and misuse (docs/guarantees.md).

Each test is one promise: nothing the user had is lost, a failed call leaves the model exactly as
it was (module tree, every tensor, adapters, active adapter, trainable flags), a failing plugin
cannot take the others down, and bad input gets an error that names what was wrong.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _models import text_inputs, tiny_llama
from safetensors.torch import load_file, save_file
from torch import nn

import peftkit
from peftkit import _io, _plugins, _saving, _targeting
from peftkit._config import ConfigError

TARGETS = ["q_proj", "v_proj"]


def lora(**kwargs: Any) -> Any:
    return peftkit.config("lora", **{"r": 4, "target_modules": TARGETS, "init_lora_weights": False, **kwargs})


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything a failed call must leave as it was."""
    return {
        "tree": [(name, type(module).__name__) for name, module in model.named_modules()],
        "tensors": {key: value.detach().clone() for key, value in model.state_dict().items()},
        "flags": {name: param.requires_grad for name, param in model.named_parameters()},
        "adapters": dict(model.peft_config) if isinstance(model, peftkit.PeftModel) else {},
        "active": list(model.active_adapters) if isinstance(model, peftkit.PeftModel) else [],
    }


def assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    assert after["tree"] == before["tree"], "the module tree changed"
    assert after["tensors"].keys() == before["tensors"].keys()
    changed = [k for k, v in after["tensors"].items() if not torch.equal(v, before["tensors"][k])]
    assert not changed, f"tensors changed: {changed[:3]}"
    assert after["flags"] == before["flags"], "requires_grad flags changed"
    assert after["adapters"].keys() == before["adapters"].keys() and after["active"] == before["active"]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    model = peftkit.get_peft_model(tiny_llama(), lora())
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


# --- data lost or the model changed ----------------------------------------------------------


@pytest.mark.parametrize("how", ["merge_and_unload", "unload"])
def test_saving_a_wrapper_that_gave_its_adapters_back_refuses_and_keeps_the_folder(
    saved: Path, how: str
) -> None:
    model = peftkit.PeftModel.from_pretrained(tiny_llama(), saved)
    before = folder_bytes(saved)
    getattr(model, how)()
    with pytest.raises(ValueError, match="no longer in this model"):
        model.save_pretrained(saved)
    assert folder_bytes(saved) == before


def test_a_failed_load_leaves_a_model_with_adapters_exactly_as_it_was(saved: Path, tmp_path: Path) -> None:
    base = tiny_llama()
    first = peftkit.get_peft_model(base, lora(), adapter_name="mine")
    first.set_requires_grad("mine", False)
    other = tmp_path / "other"
    peftkit.get_peft_model(tiny_llama(), lora(target_modules=["k_proj"])).save_pretrained(other)
    tensors = load_file(other / "adapter_model.safetensors")
    save_file(
        {k.replace("k_proj", "q_proj"): v for k, v in tensors.items()}, other / "adapter_model.safetensors"
    )
    before = snapshot(base)
    with pytest.raises(peftkit.CheckpointError):  # config targets k_proj, the file holds q_proj tensors
        peftkit.PeftModel.from_pretrained(base, other)
    assert_unchanged(base, before)
    wrapped = snapshot(first)
    with pytest.raises(peftkit.CheckpointError):
        first.load_adapter(other, adapter_name="second")
    assert_unchanged(first, wrapped)
    with pytest.raises(ConfigError):
        first.add_adapter("third", lora(target_modules=["no_such_module"]))
    assert_unchanged(first, wrapped)


def test_a_second_wrapper_cannot_reuse_a_name_the_model_already_holds(saved: Path) -> None:
    base = tiny_llama()
    first = peftkit.get_peft_model(base, lora())
    before = snapshot(first)
    with pytest.raises(ValueError, match="already holds an adapter named 'default'"):
        peftkit.get_peft_model(base, lora())
    with pytest.raises(ValueError, match="already holds an adapter named 'default'"):
        peftkit.PeftModel.from_pretrained(base, saved)
    assert_unchanged(first, before)
    second = peftkit.get_peft_model(base, lora(), adapter_name="other")  # another name is fine
    assert "other" in second.peft_config


def test_a_load_racing_a_save_gives_one_adapter_never_a_mix(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save of another rank lands while the weights are being read: the load gets one consistent pair."""
    newer = peftkit.get_peft_model(tiny_llama(), lora(r=8))
    read = _io.load_tensors
    calls: list[int] = []

    def read_while_saving(folder: str) -> Any:
        if not calls:
            calls.append(1)
            newer.save_pretrained(saved)  # lands between the first read of the config and the weights
        return read(folder)

    monkeypatch.setattr(_io, "load_tensors", read_while_saving)
    config, tensors = _saving.read_adapter(saved)
    rank = {v.shape[0] for k, v in tensors.items() if "lora_A" in k}
    assert rank == {config.r} == {8}


def _save_many(folder: str, rank: int, count: int) -> None:
    model = peftkit.get_peft_model(tiny_llama(), lora(r=rank))
    for _ in range(count):
        model.save_pretrained(folder)


@pytest.mark.slow
def test_two_processes_saving_into_one_folder_both_succeed_and_it_always_loads(tmp_path: Path) -> None:
    folder = str(tmp_path / "shared")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_save_many, args=(folder, rank, 15)) for rank in (2, 4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=240)
    assert [worker.exitcode for worker in workers] == [0, 0]
    config, tensors = _saving.read_adapter(folder)
    assert {v.shape[0] for k, v in tensors.items() if "lora_A" in k} == {config.r}
    assert not [p for p in os.listdir(folder) if p.startswith(".peftkit-")], "leftover files"


def test_an_adapter_file_naming_a_base_weight_is_refused(saved: Path) -> None:
    file = saved / "adapter_model.safetensors"
    tensors = load_file(file)
    tensors["base_model.model.model.layers.0.self_attn.o_proj.weight"] = torch.zeros(32, 32)
    save_file(tensors, file)
    base = tiny_llama()
    before = snapshot(base)
    with pytest.raises(peftkit.CheckpointError, match=r"not adapter tensors.*o_proj\.weight"):
        peftkit.PeftModel.from_pretrained(base, saved)
    assert_unchanged(base, before)


BAD_NAMES = ["", "a.b", "/x/y", "..", "x/../y", "back\\slash", " padded", "weight", "lora_A", "__base__"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_adapter_names_are_checked_where_they_enter(name: str, saved: Path, tmp_path: Path) -> None:
    base = tiny_llama()
    before = snapshot(base)
    with pytest.raises(ValueError, match=r"adapter name|reserved"):
        peftkit.get_peft_model(base, lora(), adapter_name=name)
    with pytest.raises(ValueError, match=r"adapter name|reserved"):
        peftkit.PeftModel.from_pretrained(base, saved, adapter_name=name)
    with pytest.raises(ValueError, match=r"adapter name|reserved"):
        peftkit.inject_adapter_in_model(lora(), base, adapter_name=name)
    assert_unchanged(base, before)
    model = peftkit.get_peft_model(base, lora())
    for call in (
        lambda: model.add_adapter(name, lora()),
        lambda: model.load_adapter(saved, adapter_name=name),
    ):
        with pytest.raises(ValueError, match=r"adapter name|reserved"):
            call()
    assert list(model.peft_config) == ["default"]


# --- plugins must not take the others down ------------------------------------------------------


class _Raising:
    @peftkit.hookimpl(tryfirst=True)
    def peftkit_base_layer_view(self, module: Any) -> Any:
        raise RuntimeError("view bug")

    @peftkit.hookimpl(tryfirst=True)
    def peftkit_translate_checkpoint(self, config: Any, tensors: Any) -> Any:
        raise RuntimeError("translate bug")


class _WrongAnswers:
    @peftkit.hookimpl(tryfirst=True)
    def peftkit_base_layer_view(self, module: Any) -> Any:
        return "not a view"

    @peftkit.hookimpl(tryfirst=True)
    def peftkit_translate_checkpoint(self, config: Any, tensors: Any) -> Any:
        return 42


@pytest.fixture
def fresh_plugins() -> Any:
    _plugins.reset()
    yield _plugins
    _plugins.reset()


@pytest.mark.parametrize("plugin", [_Raising, _WrongAnswers])
def test_a_failing_backend_or_translator_is_disabled_and_named_and_the_others_answer(
    fresh_plugins: Any, plugin: type, saved: Path
) -> None:
    pm = fresh_plugins.plugin_manager()
    pm.register(plugin(), name="peftkit_bad")
    pm.peftkit_dists["peftkit_bad"] = ("peftkit-bad", "9.9")
    with pytest.warns(UserWarning, match=r"'peftkit_bad'.*peftkit-bad==9\.9.*peftkit_base_layer_view"):
        model = peftkit.get_peft_model(tiny_llama(), lora())
    assert "peftkit_bad" in fresh_plugins.registry().broken
    assert model(**text_inputs()).logits.isfinite().all()
    pm.register(plugin(), name="peftkit_bad2")
    with pytest.warns(UserWarning, match="peftkit_translate_checkpoint"):
        peftkit.PeftModel.from_pretrained(tiny_llama(), saved)


def test_a_plugin_raising_system_exit_at_import_is_listed_broken() -> None:
    class Exiting:
        name, value, dist = "exits", "peftkit_exits", None

        def load(self) -> Any:
            raise SystemExit(3)

    pm = _plugins.make_plugin_manager([Exiting()])  # returns: discovery went on past the exit
    assert "SystemExit" in _plugins.build_registry(pm).broken["exits"]


# --- bad input: clear errors, bounded cost ------------------------------------------------------


def _edit_config(folder: Path, **changes: Any) -> None:
    file = folder / "adapter_config.json"
    data = json.loads(file.read_text())
    data.update(changes)
    file.write_text(json.dumps(data))
    tensors = load_file(folder / "adapter_model.safetensors")  # no digest: as a stranger's file would be
    save_file(tensors, folder / "adapter_model.safetensors")


@pytest.mark.parametrize("rank", [2**20, 2**40])
def test_an_absurd_size_in_the_config_is_refused_before_allocating(saved: Path, rank: int) -> None:
    _edit_config(saved, r=rank)
    base = tiny_llama()
    before = snapshot(base)
    with pytest.raises(peftkit.CheckpointError, match=rf"check r={rank}"):
        peftkit.PeftModel.from_pretrained(base, saved)
    assert_unchanged(base, before)


def test_a_backtracking_regex_is_stopped_with_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_targeting, "REGEX_BUDGET_S", 0.2)
    model = nn.Sequential()
    model.add_module("a" * 40, nn.Linear(4, 4))
    with pytest.raises(ConfigError, match=r"took over 0\.2 s"):
        peftkit.get_peft_model(model, peftkit.config("lora", r=2, target_modules="(a|aa)+b"))
    assert isinstance(model.get_submodule("a" * 40), nn.Linear)


def test_deeply_nested_json_is_a_clear_error_in_load_and_inspect(saved: Path) -> None:
    (saved / "adapter_config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="nests JSON"):
        peftkit.PeftModel.from_pretrained(tiny_llama(), saved)
    result = subprocess.run(
        [sys.executable, "-m", "peftkit", "inspect", str(saved)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0 and "nests JSON" in result.stderr and "Traceback" not in result.stderr


def test_nan_weights_are_refused_naming_the_tensor_unless_allowed(saved: Path) -> None:
    file = saved / "adapter_model.safetensors"
    tensors = load_file(file)
    key = sorted(tensors)[0]
    tensors[key][0, 0] = float("nan")
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(peftkit.CheckpointError, match=r"NaN or inf.*" + key.replace(".", r"\.")):
        peftkit.PeftModel.from_pretrained(tiny_llama(), saved)
    loaded = peftkit.PeftModel.from_pretrained(tiny_llama(), saved, allow_nonfinite=True)
    assert torch.isnan(dict(loaded.named_parameters())[key.replace(".weight", ".default.weight")]).any()


def test_a_strangers_peft_type_never_ends_up_in_an_install_command(saved: Path) -> None:
    _edit_config(saved, peft_type="LORA; rm -rf ~")
    with pytest.raises(KeyError) as caught:
        peftkit.PeftModel.from_pretrained(tiny_llama(), saved)
    assert "pip install" not in str(caught.value) and "unknown" in str(caught.value)


def test_training_a_merged_adapter_says_so() -> None:
    model = peftkit.get_peft_model(tiny_llama(), lora())
    model.merge_adapter()
    model.train()
    with pytest.raises(RuntimeError, match=r"merged into the base weights.*unmerge_adapter"):
        model(**text_inputs(), labels=text_inputs()["input_ids"])
    with torch.no_grad():
        model(**text_inputs())  # running the merged model is fine


def test_the_next_save_removes_what_killed_saves_left(saved: Path) -> None:
    (saved / ".peftkit-abc123.tmp").write_bytes(b"half a file")
    (saved / ".peftkit-pending-0123456789abcdef.json").write_text("{}")
    peftkit.PeftModel.from_pretrained(tiny_llama(), saved)  # still loads
    peftkit.get_peft_model(tiny_llama(), lora()).save_pretrained(saved)
    assert sorted(os.listdir(saved)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]

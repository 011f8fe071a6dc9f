"""Bad input gets one clear error, and the model it was aimed at is left exactly as it was."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from _models import text_inputs, tiny_llama, tiny_opt
from torch import nn

import peftkit
from peftkit import CheckpointError, ConfigError


def _snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything a failed call must not change: module tree, tensors (values and identity), requires_grad."""
    return {
        "modules": [(name, type(module)) for name, module in model.named_modules()],
        "params": {
            name: (id(p), p.detach().clone(), p.requires_grad) for name, p in model.named_parameters()
        },
        "buffers": {name: b.detach().clone() for name, b in model.named_buffers()},
    }


def _assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    after = _snapshot(model)
    assert after["modules"] == before["modules"]
    assert after["params"].keys() == before["params"].keys()
    for name, (ident, value, grad) in before["params"].items():
        new_ident, new_value, new_grad = after["params"][name]
        assert new_ident == ident, f"{name} was replaced"
        assert torch.equal(new_value, value), f"{name} changed"
        assert new_grad == grad, f"{name}.requires_grad changed"
    assert after["buffers"].keys() == before["buffers"].keys()
    for name, value in before["buffers"].items():
        assert torch.equal(after["buffers"][name], value), f"buffer {name} changed"


def _expect_failure(
    model: nn.Module, call: Callable[[], Any], error: type[BaseException], fragment: str
) -> BaseException:
    before = _snapshot(model)
    with pytest.raises(error, match=fragment) as info:
        call()
    _assert_unchanged(model, before)
    return info.value


def _lora(**kwargs: Any) -> Any:
    return peftkit.config("lora", **{"r": 4, "target_modules": ["q_proj", "v_proj"], **kwargs})


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A LoRA adapter (r=4) saved by peftkit from a tiny Llama."""
    folder = tmp_path / "adapter"
    peftkit.get_peft_model(tiny_llama(), _lora(init_lora_weights=False)).save_pretrained(folder)
    return folder


def _load(folder: Path, model: nn.Module | None = None) -> Callable[[], Any]:
    return lambda: peftkit.PeftModel.from_pretrained(model, folder)


def test_unknown_method_name() -> None:
    model = tiny_llama()

    def call() -> Any:
        return peftkit.get_peft_model(model, peftkit.config("lorax", r=4))

    error = _expect_failure(model, call, KeyError, "no installed plugin provides the method 'lorax'")
    assert "pip install peftkit-lorax" in str(error)
    assert "lora" in str(error)  # lists what is installed


def test_misspelled_config_field() -> None:
    model = tiny_llama()
    error = _expect_failure(
        model, lambda: _lora(lora_aplha=16), ConfigError, r"no field\(s\) \['lora_aplha'\]"
    )
    assert "lora_alpha" in str(error)  # the valid fields are listed


def test_target_that_matches_nothing() -> None:
    model = tiny_llama()
    _expect_failure(
        model,
        lambda: peftkit.get_peft_model(model, _lora(target_modules=["q_prj"])),
        ConfigError,
        "matched no module",
    )


def _wide_llama() -> nn.Module:
    """Like ``tiny_llama`` but with hidden size 64: its adapters do not fit the tiny one."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config).eval()


def _wide_opt() -> nn.Module:
    """Like ``tiny_opt`` (whose layers have biases) but with hidden size 64."""
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    config = OPTConfig(
        vocab_size=96,
        hidden_size=64,
        word_embed_proj_dim=64,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    return OPTForCausalLM(config).eval()


def test_checkpoint_for_a_different_width(saved: Path) -> None:
    wider = _wide_llama()
    error = _expect_failure(wider, _load(saved, wider), CheckpointError, "expects shape")
    assert "(4, 64)" in str(error) and "(4, 32)" in str(error)


def _edit_config(folder: Path, **changes: Any) -> None:
    file = folder / "adapter_config.json"
    data = json.loads(file.read_text())
    data.update(changes)
    file.write_text(json.dumps(data))


def test_config_edited_to_another_rank(saved: Path) -> None:
    """A peftkit save records which config its weights belong to; a hand-edited r is caught before loading."""
    _edit_config(saved, r=8)
    model = tiny_llama()
    _expect_failure(model, _load(saved, model), CheckpointError, "does not match adapter_model.safetensors")


def test_descriptive_fields_may_be_edited_by_hand(saved: Path) -> None:
    """Fields that do not shape the weights (base model path, revision) can be edited without breaking loading."""
    _edit_config(saved, base_model_name_or_path="somewhere/else", revision="v2")
    model = peftkit.PeftModel.from_pretrained(tiny_llama(), saved)
    assert model.peft_config["default"].base_model_name_or_path == "somewhere/else"


def test_peft_checkpoint_with_edited_rank(tmp_path: Path) -> None:
    """Without peftkit's config digest (an adapter saved by Hugging Face peft), the shape check catches it."""
    import peft

    peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(
        tmp_path
    )
    _edit_config(tmp_path, r=8)
    model = tiny_llama()
    error = _expect_failure(model, _load(tmp_path, model), CheckpointError, "expects shape")
    assert "(8, 32)" in str(error) and "(4, 32)" in str(error)


@pytest.mark.parametrize("bias", ["none", "all"])
def test_wrong_shape_into_existing_model_leaves_it_unchanged(bias: str, tmp_path: Path) -> None:
    """load_adapter that fails removes every trace of the new adapter from a PeftModel already in use."""
    peftkit.get_peft_model(_wide_opt(), _lora(bias=bias)).save_pretrained(tmp_path)
    model = peftkit.get_peft_model(tiny_opt(), _lora(target_modules=["k_proj"], init_lora_weights=False))
    inputs = text_inputs()
    with torch.no_grad():
        expected = model(**inputs).logits
    before = (dict(model.peft_config), list(model.active_adapters))
    load = lambda: model.load_adapter(tmp_path, adapter_name="b", is_trainable=True)  # noqa: E731
    if bias == "all":  # refused before the shapes are read: a second adapter may not train the shared biases
        _expect_failure(model, load, ConfigError, "only a model's first adapter may train them")
    else:
        _expect_failure(model, load, CheckpointError, "expects shape")
    assert (dict(model.peft_config), list(model.active_adapters)) == before
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, expected, atol=0, rtol=0)


def test_truncated_safetensors(saved: Path) -> None:
    weights = saved / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    model = tiny_llama()
    _expect_failure(model, _load(saved, model), CheckpointError, "truncated or corrupt")


def test_folder_without_config(saved: Path) -> None:
    (saved / "adapter_config.json").unlink()
    model = tiny_llama()
    _expect_failure(model, _load(saved, model), ConfigError, "no adapter_config.json")


def test_config_without_peft_type(saved: Path) -> None:
    file = saved / "adapter_config.json"
    data = json.loads(file.read_text())
    del data["peft_type"]
    file.write_text(json.dumps(data))
    model = tiny_llama()
    _expect_failure(model, _load(saved, model), ConfigError, "no 'peft_type'")


def test_peft_type_no_plugin_serves(saved: Path) -> None:
    _edit_config(saved, peft_type="HYPOTHETICAL_METHOD")
    model = tiny_llama()
    error = _expect_failure(model, _load(saved, model), KeyError, "'HYPOTHETICAL_METHOD'")
    assert "pip install peftkit-hypothetical-method" in str(error)

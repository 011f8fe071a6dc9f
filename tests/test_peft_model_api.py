"""PeftModel keywords and results Hugging Face PEFT users rely on: load results, dtype, biases, embeddings."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import peftkit
from peftkit_lora import LoraConfig


class MLP(nn.Module):
    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin0 = nn.Linear(10, 20, bias=bias)
        self.lin1 = nn.Linear(20, 2, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin1(torch.relu(self.lin0(x)))


class EmbModel(nn.Module):
    """Embeddings under the transformers names, found through get_input_embeddings as in transformers."""

    def __init__(self, vocab: int = 30) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed_tokens = nn.Embedding(vocab, 8)
        self.lin0 = nn.Linear(8, 8)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def get_output_embeddings(self) -> None:
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin0(self.embed_tokens(x))


def test_load_adapter_returns_missing_and_unexpected_keys(tmp_path: Path) -> None:
    model = peftkit.get_peft_model(MLP(), LoraConfig(target_modules=["lin0"]))
    model.save_pretrained(tmp_path)
    result = model.load_adapter(tmp_path, adapter_name="other")
    assert result.missing_keys == [] and result.unexpected_keys == []


def test_load_adapter_keeps_bf16_adapters_when_autocast_adapter_dtype_is_false(tmp_path: Path) -> None:
    model = peftkit.get_peft_model(MLP().to(torch.bfloat16), LoraConfig(target_modules=["lin0"]))
    assert model.base_model.model.lin0.lora_A["default"].weight.dtype == torch.float32
    model.save_pretrained(tmp_path)
    model.load_adapter(tmp_path, adapter_name="kept", autocast_adapter_dtype=False)
    model.add_adapter("added", LoraConfig(target_modules=["lin0"]), autocast_adapter_dtype=False)
    lin0 = model.base_model.model.lin0
    assert lin0.lora_A["kept"].weight.dtype == torch.bfloat16
    assert lin0.lora_A["added"].weight.dtype == torch.bfloat16


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_a_second_adapter_may_not_train_the_shared_base_biases(bias: str) -> None:
    model = peftkit.get_peft_model(MLP(), LoraConfig(target_modules=["lin0"], bias=bias))
    with pytest.raises(peftkit.ConfigError, match="only a model's first adapter may train them"):
        model.add_adapter("other", LoraConfig(target_modules=["lin0"], bias=bias))
    assert list(model.peft_config) == ["default"]
    assert model.base_model.model.lin0.adapter_names == ["default"]
    model.add_adapter("plain", LoraConfig(target_modules=["lin0"]))  # bias="none" shares them freely


def test_lora_bias_on_a_layer_without_bias_warns() -> None:
    with pytest.warns(UserWarning, match="has no bias"):
        peftkit.get_peft_model(MLP(bias=False), LoraConfig(target_modules=["lin0"], lora_bias=True))


def test_conv_adapter_layers_expose_in_and_out_features() -> None:
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.Conv1d(6, 5, 1))
    peft_model = peftkit.get_peft_model(model, LoraConfig(target_modules=["0", "1"]))
    conv2d, conv1d = peft_model.base_model.model[0], peft_model.base_model.model[1]
    assert (conv2d.in_features, conv2d.out_features) == (3, 6)
    assert (conv1d.in_features, conv1d.out_features) == (6, 5)


def test_merging_an_already_merged_adapter_warns_and_changes_nothing() -> None:
    model = peftkit.get_peft_model(MLP(), LoraConfig(target_modules=["lin0"], init_lora_weights=False))
    model.merge_adapter()
    weight = model.base_model.model.lin0.base_layer.weight.clone()
    with pytest.warns(UserWarning, match=r"\['default'\] are already merged"):
        model.merge_adapter()
    assert torch.equal(model.base_model.model.lin0.base_layer.weight, weight)


@pytest.mark.parametrize("mode", ["auto", True, False])
def test_save_embedding_layers_saves_an_adapted_embedding_in_full(tmp_path: Path, mode: bool | str) -> None:
    model = peftkit.get_peft_model(EmbModel(), LoraConfig(target_modules=["embed_tokens", "lin0"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.save_pretrained(tmp_path, save_embedding_layers=mode)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    key = "base_model.model.embed_tokens.base_layer.weight"
    assert (key in saved) is (mode in ("auto", True))
    if mode in ("auto", True):
        assert torch.equal(saved[key], model.base_model.model.embed_tokens.base_layer.weight)
    assert any("save_embedding_layers='auto'" in str(w.message) for w in caught) is (mode == "auto")


def test_save_embedding_layers_true_on_a_model_without_embedding_accessors_warns(tmp_path: Path) -> None:
    model = peftkit.get_peft_model(MLP(), LoraConfig(target_modules=["lin0"]))
    with pytest.warns(UserWarning, match="no get_input_embeddings"):
        model.save_pretrained(tmp_path, save_embedding_layers=True)
    assert all(".lora_" in k for k in load_file(tmp_path / "adapter_model.safetensors"))


def test_a_resized_embedding_loads_with_ignore_mismatched_sizes(tmp_path: Path) -> None:
    config = LoraConfig(target_modules=["embed_tokens", "lin0"], init_lora_weights=False)
    peftkit.get_peft_model(EmbModel(vocab=30), config).save_pretrained(tmp_path, save_embedding_layers=False)
    with pytest.raises(peftkit.CheckpointError, match=r"expects shape \(8, 35\)"):
        peftkit.PeftModel.from_pretrained(EmbModel(vocab=35), tmp_path)
    with pytest.warns(UserWarning, match="lora_embedding_A"):
        loaded = peftkit.PeftModel.from_pretrained(EmbModel(vocab=35), tmp_path, ignore_mismatched_sizes=True)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    lin0 = loaded.base_model.model.lin0
    assert torch.equal(lin0.lora_A["default"].weight, saved["base_model.model.lin0.lora_A.weight"])


def _two_adapters() -> peftkit.PeftModel:
    model = peftkit.get_peft_model(MLP(), LoraConfig(target_modules=["lin0"], init_lora_weights=False))
    model.add_adapter("other", LoraConfig(target_modules=["lin0"], init_lora_weights=False))
    return model


def test_model_prefix_names_the_adapter_parameters_as_in_peft() -> None:
    model = _two_adapters()
    assert model.prefix == model.base_model.prefix == "lora_"
    adapter = [n for n, _ in model.named_parameters() if model.prefix in n]
    assert adapter and all("lora_" in n for n in adapter)


def test_base_model_answers_the_tuner_calls_peft_code_makes() -> None:
    model = _two_adapters()
    x = torch.randn(3, 10)
    assert model.base_model.peft_config is model.peft_config
    model.base_model.set_adapter(["default", "other"])  # several active adapters, as on PEFT's tuner
    assert model.active_adapters == model.base_model.active_adapters == ["default", "other"]
    assert model.base_model.model is model.get_base_model()
    assert model.base_model.lin0 is model.get_base_model().lin0  # other names reach the wrapped model
    with torch.no_grad():
        both = model(x)
        model.set_adapter("default")
        assert not torch.allclose(model(x), both)


def test_disable_adapter_layers_lasts_until_enabled_and_the_context_restores_it() -> None:
    model = _two_adapters()
    x = torch.randn(3, 10)
    with torch.no_grad():
        adapted, base = (
            model(x),
            model.get_base_model().lin1(torch.relu(model.get_base_model().lin0.base_layer(x))),
        )
        model.disable_adapter_layers()
        assert torch.allclose(model(x), base)
        with model.disable_adapter():
            assert torch.allclose(model(x), base)
        assert torch.allclose(model(x), base), "leaving the block must not enable what was disabled before it"
        model.base_model.enable_adapter_layers()
        assert torch.allclose(model(x), adapted)


def test_peft_type_answers_peft_enum_spellings_and_saves_as_a_string(tmp_path: Path) -> None:
    config = LoraConfig(target_modules=["lin0"])
    assert config.peft_type == "LORA" == peftkit.PeftType.LORA
    assert config.peft_type.value == "LORA"
    peftkit.get_peft_model(MLP(), config).save_pretrained(tmp_path)
    assert '"peft_type": "LORA"' in (tmp_path / "adapter_config.json").read_text()


def test_from_pretrained_accepts_a_device_map_naming_one_device(tmp_path: Path) -> None:
    _two_adapters().save_pretrained(tmp_path)
    for device_map in ("cpu", {"": "cpu"}):
        loaded = peftkit.PeftModel.from_pretrained(MLP(), tmp_path, device_map=device_map)
        assert loaded.get_base_model().lin0.lora_A["default"].weight.device.type == "cpu"
    with pytest.raises(TypeError, match=r"device_map=\{'lin0': 'cpu', 'lin1': 'disk'\}"):
        peftkit.PeftModel.from_pretrained(MLP(), tmp_path, device_map={"lin0": "cpu", "lin1": "disk"})


def test_state_dict_functions_see_through_parallel_wrappers() -> None:
    model = peftkit.get_peft_model(MLP(), LoraConfig(target_modules=["lin0"], init_lora_weights=False))
    wrapped = nn.DataParallel(model)  # its keys carry "module.", which no saved adapter has
    state = peftkit.get_peft_model_state_dict(wrapped)
    assert set(state) == {"base_model.model.lin0.lora_A.weight", "base_model.model.lin0.lora_B.weight"}
    fresh = peftkit.get_peft_model(MLP(), LoraConfig(target_modules=["lin0"]))
    assert peftkit.set_peft_model_state_dict(nn.DataParallel(fresh), state) == ([], [])
    x = torch.randn(3, 10)
    with torch.no_grad():
        assert torch.allclose(fresh(x), model(x))


def test_several_active_adapters_may_not_each_hold_a_copy_of_one_module() -> None:
    model = peftkit.get_peft_model(MLP(), LoraConfig(target_modules=["lin0"], modules_to_save=["lin1"]))
    model.add_adapter("other", LoraConfig(target_modules=["lin0"], modules_to_save=["lin1"]))
    with pytest.raises(
        ValueError, match=r"adapters \['default', 'other'\] each train their own copy of lin1"
    ):
        model.base_model.set_adapter(["default", "other"])
    assert model.active_adapters == ["default"]
    model.set_adapter("other")  # one at a time is fine


def test_base_model_active_adapter_is_a_list_while_several_are_active() -> None:
    model = _two_adapters()
    assert model.base_model.active_adapter == "default"
    model.base_model.set_adapter(["default", "other"])
    assert model.base_model.active_adapter == ["default", "other"]
    assert model.active_adapter == "default"


def test_miss_only_bias_trains_the_biases_of_the_adapted_layers_as_in_peft() -> None:
    model = peftkit.get_peft_model(
        MLP(), peftkit.config("miss", r=2, target_modules=["lin0"], bias="miss_only")
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.endswith("lin0.base_layer.bias") for n in trainable)
    assert not any("lin1" in n for n in trainable)

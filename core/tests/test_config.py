"""Configs: selection by name, JSON in the PEFT format, unknown keys, missing peft_type, declared fields."""

import json
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

import peftkit
from peftkit._api import config_from_dict
from peftkit._config import ConfigError, PeftConfig, read_config_dict


def test_config_by_name_builds_the_plugin_class():
    cfg = peftkit.config("lora", r=4, target_modules=["q_proj"])
    assert type(cfg).__name__ == "LoraConfig"
    assert cfg.peft_type == "LORA" and cfg.r == 4


def test_misspelled_field_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"no field\(s\) \['rank'\].*lora_alpha"):
        peftkit.config("lora", rank=4)


def test_unknown_method_names_a_distribution():
    with pytest.raises(KeyError, match="pip install peftkit-nosuch"):
        peftkit.config("nosuch")


def test_json_has_every_field_sorted():
    text = peftkit.config("lora", r=4, target_modules={"b", "a"}).to_json()
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert data["peft_type"] == "LORA" and data["target_modules"] == ["a", "b"]
    assert "peft_version" in data and "task_type" in data


def test_unknown_keys_are_dropped_with_a_warning_naming_them():
    data = peftkit.config("lora", r=4).to_dict() | {"from_the_future": 1}
    with pytest.warns(UserWarning, match="from_the_future"):
        cfg = config_from_dict(data)
    assert cfg.r == 4


def test_missing_peft_type_is_an_error(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4}))
    with pytest.raises(ConfigError, match="no 'peft_type'"):
        read_config_dict(tmp_path)


def test_uninstalled_method_says_what_to_install():
    with pytest.raises(KeyError, match="pip install peftkit-fancy-method"):
        config_from_dict({"peft_type": "FANCY_METHOD"})


def test_bad_values_are_rejected():
    with pytest.raises(ConfigError, match="task_type"):
        peftkit.config("lora", task_type="CAUSAL")
    with pytest.raises(ConfigError, match="bias"):
        peftkit.config("lora", bias="some")


def test_peft_version_names_the_peft_format_followed():
    from packaging.version import Version

    version = Version(peftkit.config("lora").peft_version)
    assert version.local.startswith("peftkit")
    assert version >= Version("0.18")  # readers compare it with PEFT releases


@dataclass
class ToyConfig(PeftConfig):
    """A method whose Hugging Face PEFT config has target_modules but none of the other optional base fields."""

    PEFT_TYPE: ClassVar[str] = "TOY"
    BASE_FIELDS: ClassVar[frozenset[str]] = frozenset({"target_modules"})
    NON_SHAPING_FIELDS: ClassVar[frozenset[str]] = frozenset({"toy_dropout"})

    r: int = 2
    toy_dropout: float = 0.0


# What every Hugging Face PEFT config writes, whatever the method.
EVERY_CONFIG = {
    *("peft_type", "task_type", "inference_mode", "base_model_name_or_path", "revision", "auto_mapping"),
    "peft_version",
}


def test_a_config_writes_only_the_base_fields_it_declares():
    assert set(ToyConfig().to_dict()) == EVERY_CONFIG | {"target_modules", "r", "toy_dropout"}
    assert set(ToyConfig.field_names()) == set(ToyConfig().to_dict())
    assert {"bias", "layers_to_transform", "modules_to_save"} <= set(peftkit.config("lora").to_dict())


def test_a_base_field_the_method_lacks_is_refused_when_set():
    with pytest.raises(
        ConfigError, match=r"ToyConfig has no layers_to_transform field.*Remove layers_to_transform=\[0\]"
    ):
        ToyConfig(layers_to_transform=[0])
    with pytest.raises(ConfigError, match=r"has no bias field"):
        ToyConfig(bias="all")
    assert ToyConfig(bias="none") == ToyConfig()  # the default value cannot be told from no value


def test_old_files_holding_lacking_fields_at_their_defaults_still_load():
    """peftkit 0.1 wrote every base field; at their defaults they mean nothing and are dropped silently."""
    old = ToyConfig().to_dict() | {"bias": "none", "exclude_modules": None, "layers_to_transform": None}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ToyConfig.from_dict(old) == ToyConfig()
    with pytest.raises(ConfigError, match=r"sets exclude_modules=\['x'\], which peftkit 0.1 accepted.*regex"):
        ToyConfig.from_dict(old | {"exclude_modules": ["x"]})


def test_shaping_fields_leave_out_descriptive_and_declared_ones():
    assert ToyConfig.shaping_fields() == ["peft_type", "task_type", "target_modules", "r"]


def test_a_mistyped_declaration_is_a_type_error_naming_it():
    with pytest.raises(
        TypeError, match=r"BadBase.BASE_FIELDS names \['layer_pattern'\], which are not optional"
    ):

        @dataclass
        class BadBase(PeftConfig):
            BASE_FIELDS: ClassVar[frozenset[str]] = frozenset({"bias", "layer_pattern"})

    with pytest.raises(TypeError, match=r"BASE_FIELDS must be a frozenset"):

        @dataclass
        class NotASet(PeftConfig):
            BASE_FIELDS: ClassVar[frozenset[str]] = ("bias",)  # type: ignore[assignment]

    @dataclass
    class BadShaping(PeftConfig):
        NON_SHAPING_FIELDS: ClassVar[frozenset[str]] = frozenset({"dropuot"})
        dropout: float = 0.0

    with pytest.raises(
        TypeError, match=r"BadShaping.NON_SHAPING_FIELDS names \['dropuot'\], which are not fields"
    ):
        BadShaping()


def test_checkpoint_writer_for_converters_writes_what_load_reads(tmp_path: Any) -> None:
    """``peftkit.checkpoint.write_adapter_folder`` writes a folder ``from_pretrained`` loads, digest included."""
    import torch
    from torch import nn

    import peftkit
    from peftkit.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_tensors, write_adapter_folder

    model = peftkit.get_peft_model(
        nn.Sequential(nn.Linear(4, 4)), peftkit.config("lora", target_modules=["0"], r=2)
    )
    tensors = peftkit.get_peft_model_state_dict(model)
    tensors = {k: torch.randn_like(v) for k, v in tensors.items()}
    write_adapter_folder(str(tmp_path), model.peft_config["default"], tensors)
    assert (tmp_path / CONFIG_NAME).is_file() and (tmp_path / WEIGHTS_NAME).is_file()
    _, metadata = load_tensors(str(tmp_path))
    assert "peftkit_config_digest" in metadata
    loaded = peftkit.PeftModel.from_pretrained(nn.Sequential(nn.Linear(4, 4)), tmp_path)
    assert torch.equal(
        loaded.get_base_model()[0].lora_A["default"].weight, tensors["base_model.model.0.lora_A.weight"]
    )

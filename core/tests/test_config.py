"""Configs: selection by name, JSON in the PEFT format, unknown keys, missing peft_type."""

import json

import pytest

import peftkit
from peftkit._config import ConfigError, config_from_dict, read_config_dict


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

"""The keywords of PEFT's ``from_pretrained`` / ``load_adapter``: taken, or refused by name, never ignored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _models import MLP

import peftkit
from peftkit_lora import LoraConfig

X = torch.randn(3, 10, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, torch.Tensor]:
    """A saved LoRA adapter that changes the output, and that output."""
    torch.manual_seed(2)
    model = peftkit.get_peft_model(
        MLP(), LoraConfig(target_modules=["lin0", "lin1"], init_lora_weights=False)
    )
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        return tmp_path, model(X)


NOT_IMPLEMENTED = [
    ("ephemeral_gpu_offload", True),
    ("key_mapping", {"lin0": "first"}),
    ("device_map", "auto"),
    ("offload_folder", "/tmp/offload"),
    ("use_safetensors", False),
]


@pytest.mark.parametrize(("key", "value"), NOT_IMPLEMENTED)
def test_peft_options_peftkit_lacks_are_refused_by_name(saved: Any, key: str, value: Any) -> None:
    path, _ = saved
    base = MLP()
    with pytest.raises(
        TypeError, match=rf"from_pretrained\({key}=.*Hugging Face PEFT option that peftkit does not"
    ):
        peftkit.PeftModel.from_pretrained(base, path, **{key: value})
    assert not any("lora" in name for name, _ in base.named_modules())
    model = peftkit.PeftModel.from_pretrained(MLP(), path)
    with pytest.raises(TypeError, match=rf"load_adapter\({key}=.*Nothing was loaded"):
        model.load_adapter(path, adapter_name="other", **{key: value})
    assert list(model.peft_config) == ["default"]


def test_peft_options_at_their_defaults_are_accepted(saved: Any) -> None:
    path, expected = saved
    defaults = {
        "ephemeral_gpu_offload": False,
        "key_mapping": None,
        "use_safetensors": True,
        "device_map": None,
    }
    model = peftkit.PeftModel.from_pretrained(MLP(), path, **defaults)
    model.load_adapter(path, adapter_name="other", **defaults)
    model.set_adapter("other")
    with torch.no_grad():
        torch.testing.assert_close(model(X), expected)


def test_an_unknown_keyword_is_an_error_not_ignored(saved: Any) -> None:
    path, _ = saved
    with pytest.raises(
        TypeError, match=r"from_pretrained\(\) got an unexpected keyword argument 'is_trainabel'"
    ):
        peftkit.PeftModel.from_pretrained(MLP(), path, is_trainabel=True)
    model = peftkit.PeftModel.from_pretrained(MLP(), path)
    with pytest.raises(TypeError, match=r"load_adapter\(\) got an unexpected keyword argument 'adapter'"):
        model.load_adapter(path, adapter_name="b", adapter="c")
    assert list(model.peft_config) == ["default"]


def test_torch_device_is_where_the_tensors_are_read(saved: Any) -> None:
    """As in PEFT: copied into adapter weights on the base device, or kept on ``torch_device`` with
    ``low_cpu_mem_usage=True`` (the meta device shows it without a GPU)."""
    path, expected = saved
    model = peftkit.PeftModel.from_pretrained(MLP(), path, torch_device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(model(X), expected)
    model.load_adapter(path, adapter_name="meta", torch_device="meta", low_cpu_mem_usage=True)
    layer = model.get_base_model().lin0
    assert layer.lora_A["meta"].weight.device.type == "meta"
    assert layer.lora_A["default"].weight.device.type == "cpu"


def test_a_bad_torch_device_is_refused_before_anything_changes(saved: Any) -> None:
    path, _ = saved
    base = MLP()
    with pytest.raises(TypeError, match=r"from_pretrained\(torch_device='gpu7'\) is not a torch device"):
        peftkit.PeftModel.from_pretrained(base, path, torch_device="gpu7")
    assert not any("lora" in name for name, _ in base.named_modules())

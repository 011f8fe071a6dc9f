"""``model(x, adapter_names=[...])``: each sample through its own adapter, and the errors around it."""

from __future__ import annotations

import pytest
import torch

import peftkit
from peftkit import _per_sample
from peftkit.testing import make_inputs, make_model


def _two_adapters(
    model_name: str, targets_a: list[str], targets_b: list[str], **extra: object
) -> peftkit.PeftModel:
    torch.manual_seed(0)
    model = peftkit.get_peft_model(
        make_model(model_name),
        peftkit.config("lora", target_modules=targets_a, r=2, init_lora_weights=False, **extra),
        adapter_name="a",
    )
    torch.manual_seed(1)
    model.add_adapter(
        "b", peftkit.config("lora", target_modules=targets_b, r=4, init_lora_weights=False, **extra)
    )
    return model.eval()


def _alone(model: peftkit.PeftModel, x: torch.Tensor) -> dict[str, torch.Tensor]:
    outputs = {}
    with torch.no_grad():
        for name in ("a", "b"):
            model.set_adapter(name)
            outputs[name] = model(x)
        with model.disable_adapter():
            outputs["__base__"] = model(x)
    return outputs


@pytest.mark.parametrize(
    ("model_name", "targets_a", "targets_b", "extra"),
    [
        ("mlp", ["lin0", "lin1"], ["lin1", "lin2"], {}),
        ("emb_conv1d", ["emb", "conv1d"], ["conv1d", "lin"], {}),
        ("conv2d", ["conv"], ["conv", "lin"], {}),
        ("mlp", ["lin0", "lin1"], ["lin1"], {"use_dora": True}),
        ("mlp", ["lin0"], ["lin1"], {"modules_to_save": ["lin2"]}),
    ],
    ids=["mlp", "emb-conv1d", "conv2d", "dora", "modules-to-save"],
)
def test_each_sample_gets_its_adapter(
    model_name: str, targets_a: list[str], targets_b: list[str], extra: dict[str, object]
) -> None:
    model = _two_adapters(model_name, targets_a, targets_b, **extra)
    if extra.get("modules_to_save"):  # make the two module copies differ from the original and each other
        for i, name in enumerate(("a", "b")):
            with torch.no_grad():
                model.get_base_model().lin2.modules_to_save[name].weight.add_(0.5 * (i + 1))
    x = make_inputs(model_name)
    alone = _alone(model, x)
    names = ["a", "b", "__base__", "a"]
    active = list(model.active_adapters)
    with torch.no_grad():
        mixed = model(x, adapter_names=names)
    for i, name in enumerate(names):
        # Sub-batches run matmuls of other shapes: equal up to float32 rounding (default tolerances).
        torch.testing.assert_close(mixed[i], alone[name][i])
    assert not torch.allclose(alone["a"], alone["b"]) and not torch.allclose(alone["a"], alone["__base__"])
    assert model.active_adapters == active
    assert _per_sample.current() is None, "the per-sample context leaked out of the call"


def test_single_name_for_whole_batch_equals_that_adapter() -> None:
    model = _two_adapters("mlp", ["lin0"], ["lin1"])
    x = make_inputs("mlp")
    alone = _alone(model, x)
    model.set_adapter("a")
    with torch.no_grad():
        torch.testing.assert_close(model(x, adapter_names=["b"] * 4), alone["b"], atol=0, rtol=0)


def test_unknown_name_is_an_error() -> None:
    model = _two_adapters("mlp", ["lin0"], ["lin1"])
    with pytest.raises(ValueError, match=r"unknown adapter\(s\) \['c'\]"):
        model(make_inputs("mlp"), adapter_names=["a", "c", "a", "a"])


def test_training_mode_is_an_error() -> None:
    model = _two_adapters("mlp", ["lin0"], ["lin1"]).train()
    with pytest.raises(ValueError, match="training mode"):
        model(make_inputs("mlp"), adapter_names=["a"] * 4)


def test_merged_model_is_an_error() -> None:
    model = _two_adapters("mlp", ["lin0"], ["lin1"])
    model.merge_adapter(["a"])
    with pytest.raises(ValueError, match=r"merged.*unmerge_adapter"):
        model(make_inputs("mlp"), adapter_names=["a", "b", "a", "b"])
    assert _per_sample.current() is None


def test_wrong_number_of_names_is_an_error() -> None:
    model = _two_adapters("mlp", ["lin0"], ["lin1"])
    with pytest.raises(ValueError, match=r"batch of 3.*received a batch of 4"):
        model(make_inputs("mlp"), adapter_names=["a", "b", "a"])


def test_a_string_is_not_a_list_of_names() -> None:
    model = _two_adapters("mlp", ["lin0"], ["lin1"])
    with pytest.raises(TypeError, match="list of adapter names"):
        model(make_inputs("mlp"), adapter_names="a")

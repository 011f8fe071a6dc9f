"""``add_weighted_adapter``: exactness of cat / svd, negative weights, and errors that leave the model as it was."""

from __future__ import annotations

import pytest
import torch

import peftkit
import peftkit_lora
from peftkit.testing import make_inputs, make_model


def _model(
    targets_b: list[str] | str | None = None, r_b: int = 2, model_name: str = "mlp", **extra_b: object
) -> peftkit.PeftModel:
    torch.manual_seed(0)
    targets = {"mlp": ["lin0", "lin1"], "conv2d": ["conv", "lin"], "emb_conv1d": ["emb", "conv1d"]}[
        model_name
    ]
    model = peftkit.get_peft_model(
        make_model(model_name),
        peftkit.config("lora", target_modules=targets, r=2, lora_alpha=3, init_lora_weights=False),
    )
    torch.manual_seed(1)
    cfg = peftkit.config(
        "lora",
        target_modules=targets if targets_b is None else targets_b,
        r=r_b,
        lora_alpha=5,
        init_lora_weights=False,
        **extra_b,
    )
    model.add_adapter("b", cfg)
    return model.eval()


def _delta(model: peftkit.PeftModel, path: str, name: str) -> torch.Tensor:
    layer = model.get_base_model().get_submodule(path)
    return layer.delta_weight(name) if name in layer.adapter_names else torch.zeros(())


@pytest.mark.parametrize("model_name", ["mlp", "conv2d", "emb_conv1d"])
@pytest.mark.parametrize("combination", ["cat", "svd"])
def test_exact_combinations_give_the_weighted_sum_of_updates(model_name: str, combination: str) -> None:
    """cat always, and svd at full rank, reproduce w_a delta_a + w_b delta_b in every layer."""
    model = _model(model_name=model_name)
    model.add_weighted_adapter(["default", "b"], [0.6, -1.5], "mix", combination_type=combination, svd_rank=4)
    for path, layer in model.get_base_model().named_modules():
        if hasattr(layer, "lora_dropout") and "mix" in layer.adapter_names:
            expected = 0.6 * _delta(model, path, "default") - 1.5 * _delta(model, path, "b")
            torch.testing.assert_close(layer.delta_weight("mix"), expected, atol=1e-5, rtol=1e-5)
            assert layer.scaling["mix"] == 1.0
    assert model.peft_config["mix"].r == 4 and model.peft_config["mix"].lora_alpha == 4
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".mix." in n)
    assert "mix" not in model.active_adapters


def test_linear_splits_the_weight_over_a_and_b() -> None:
    model = _model(r_b=2)
    model.add_weighted_adapter(["default", "b"], [2.0, -0.5], "mix", combination_type="linear")
    layer = model.get_base_model().lin0
    wa, wb = 2.0 * layer.scaling["default"], -0.5 * layer.scaling["b"]
    A = wa**0.5 * layer.lora_A["default"].weight - abs(wb) ** 0.5 * layer.lora_A["b"].weight
    B = wa**0.5 * layer.lora_B["default"].weight + abs(wb) ** 0.5 * layer.lora_B["b"].weight
    torch.testing.assert_close(layer.lora_A["mix"].weight, A)
    torch.testing.assert_close(layer.lora_B["mix"].weight, B)


def test_svd_truncates_to_the_requested_rank() -> None:
    model = _model()
    model.add_weighted_adapter(["default", "b"], [1.0, 1.0], "mix", svd_rank=1)
    delta = model.get_base_model().lin1.delta_weight("mix")
    assert torch.linalg.matrix_rank(delta) == 1
    model.set_adapter("mix")
    with torch.no_grad():
        assert torch.isfinite(model(make_inputs("mlp"))).all()


def test_union_of_targets_and_module_function() -> None:
    """Adapters on different layers combine into one adapter on all of them; the plain function works too."""
    model = _model(targets_b=["lin2"])
    peftkit_lora.add_weighted_adapter(model, ["default", "b"], [1.0, 1.0], "mix", combination_type="cat")
    assert model.peft_config["mix"].target_modules == ["lin0", "lin1", "lin2"]
    torch.testing.assert_close(
        model.get_base_model().lin2.delta_weight("mix"), model.get_base_model().lin2.delta_weight("b")[:, :]
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"adapter_name": "b"}, ValueError, "already exists"),
        (
            {"adapters": ["default", "nope"], "weights": [1, 1]},
            ValueError,
            r"unknown adapter\(s\) \['nope'\]",
        ),
        ({"weights": [1.0]}, ValueError, "one weight per adapter"),
        ({"combination_type": "ties"}, ValueError, "not supported by peftkit-lora"),
        ({"combination_type": "linear"}, ValueError, "one rank"),
        ({"density": 0.5}, ValueError, "density"),
    ],
)
def test_bad_calls_are_errors(kwargs: dict, error: type, match: str) -> None:
    model = _model(r_b=4)
    call = {"adapters": ["default", "b"], "weights": [1.0, 1.0], "adapter_name": "mix", **kwargs}
    with pytest.raises(error, match=match):
        model.add_weighted_adapter(**call)
    assert list(model.peft_config) == ["default", "b"]


def test_mismatched_targets_are_errors_and_leave_the_model_unchanged() -> None:
    model = _model(targets_b="lin2")  # a regex string beside a list
    with pytest.raises(peftkit.ConfigError, match="mix lists and regex strings"):
        model.add_weighted_adapter(["default", "b"], [1.0, 1.0], "mix")
    model = _model(targets_b=["lin0", "lin2"], exclude_modules=["lin1"])
    model.peft_config["default"] = model.peft_config["default"].replace(exclude_modules=["lin2"])
    names = {n for n, _ in model.named_parameters()}
    with pytest.raises(peftkit.ConfigError, match="cannot reproduce"):
        model.add_weighted_adapter(["default", "b"], [1.0, 1.0], "mix", combination_type="cat")
    assert {n for n, _ in model.named_parameters()} == names and "mix" not in model.peft_config


def test_dora_adapters_are_refused() -> None:
    model = _model(use_dora=True)
    with pytest.raises(ValueError, match="uses DoRA"):
        model.add_weighted_adapter(["default", "b"], [1.0, 1.0], "mix")

"""(IA)^3's feed-forward defaults: filled from the model's type, kept within the targets."""

from __future__ import annotations

import pytest

import peftkit
from peftkit.testing import make_model


@pytest.mark.parametrize(
    ("targets", "feedforward"),
    [
        (None, ["down_proj"]),  # Llama's default targets, with down_proj scaled on its input
        (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
        (["k_proj", "mlp.down_proj"], ["mlp.down_proj"]),  # the target's own spelling, so it stays a subset
        (["o_proj"], []),  # no feed-forward module among the targets: nothing to scale on the input
    ],
)
def test_feedforward_defaults_are_the_targets_that_name_a_feedforward_module(
    targets: list[str] | None, feedforward: list[str]
) -> None:
    model = peftkit.get_peft_model(make_model("llama_like"), peftkit.config("ia3", target_modules=targets))
    assert model.peft_config["default"].feedforward_modules == feedforward
    layers = {
        path.rsplit(".", 1)[-1]: m for path, m in model.named_modules() if isinstance(m, peftkit.AdapterLayer)
    }
    assert {name for name, layer in layers.items() if layer.is_feedforward["default"]} == {
        f.rsplit(".", 1)[-1] for f in feedforward
    }


def test_a_regex_target_keeps_the_whole_feedforward_default() -> None:
    model = peftkit.get_peft_model(make_model("llama_like"), peftkit.config("ia3", target_modules=r".*_proj"))
    assert model.peft_config["default"].feedforward_modules == ["down_proj"]

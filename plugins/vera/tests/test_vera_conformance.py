"""VeRA through peftkit's conformance suite, on nn.Linear and GPT-2 Conv1D."""

from __future__ import annotations

from peftkit.testing import Case, ConformanceSuite


class TestVeraConformance(ConformanceSuite):
    method = "vera"
    identity_init = {"init_weights": True}
    random_init = {"init_weights": False}
    cases = [
        Case("mlp", {"target_modules": ["lin0", "lin1"], "r": 4}, id="linear"),
        Case(
            "mlp",
            {
                "target_modules": ["lin0", "lin1", "lin2"],
                "r": 2,
                "save_projection": False,
                "bias": "vera_only",
            },
            id="linear-no-projection-vera-only-bias",
        ),
        Case(
            "mlp",
            {"target_modules": ["lin1"], "r": 8, "modules_to_save": ["lin2"]},
            id="linear-modules-to-save",
        ),
        Case("emb_conv1d", {"target_modules": ["conv1d"], "r": 4}, id="gpt2-conv1d"),
        Case(
            "emb_conv1d",
            {"target_modules": ["conv1d", "lin"], "r": 4, "bias": "all"},
            id="conv1d-linear-bias-all",
        ),
    ]

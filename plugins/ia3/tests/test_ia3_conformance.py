"""(IA)^3 through peftkit's conformance suite: output-side layers, input-side (feed-forward) layers, both."""

from __future__ import annotations

from peftkit.testing import Case, ConformanceSuite


class TestIA3Conformance(ConformanceSuite):
    method = "ia3"
    identity_init = {"init_ia3_weights": True}
    random_init = {"init_ia3_weights": False}
    cases = [
        Case("mlp", {"target_modules": ["lin0", "lin1"], "feedforward_modules": []}, id="output-side"),
        Case(
            "mlp",
            {"target_modules": ["lin0", "lin1"], "feedforward_modules": ["lin1"]},
            id="input-and-output",
        ),
        Case("mlp", {"target_modules": ["lin1"], "feedforward_modules": ["lin1"]}, id="input-side"),
        Case(
            "emb_conv1d",
            {"target_modules": ["conv1d", "lin"], "feedforward_modules": ["conv1d"]},
            id="gpt2-conv1d-input-side",
        ),
        Case(
            "mlp",
            {
                "target_modules": ["lin0", "lin1"],
                "feedforward_modules": ["lin0"],
                "modules_to_save": ["lin2"],
            },
            id="modules-to-save",
        ),
    ]

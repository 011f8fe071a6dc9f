"""(IA)^3 through peftkit's conformance suite: output-side layers, input-side (feed-forward) layers, both.

Each case declares its ``input_side`` (the feed-forward modules), so the suite checks that exactly
those base layers see a scaled input.
"""

from __future__ import annotations

from peftkit.testing import Case, ConformanceSuite


class TestIA3Conformance(ConformanceSuite):
    method = "ia3"
    identity_init = {"init_ia3_weights": True}
    random_init = {"init_ia3_weights": False}
    cases = [
        Case(
            "mlp",
            {"target_modules": ["lin0", "lin1"], "feedforward_modules": []},
            id="output-side",
            input_side=[],
        ),
        Case(
            "mlp",
            {"target_modules": ["lin0", "lin1"], "feedforward_modules": ["lin1"]},
            id="input-and-output",
            input_side=["lin1"],
        ),
        Case(
            "mlp",
            {"target_modules": ["lin1"], "feedforward_modules": ["lin1"]},
            id="input-side",
            input_side=["lin1"],
        ),
        Case(
            "emb_conv1d",
            {"target_modules": ["conv1d", "lin"], "feedforward_modules": ["conv1d"]},
            id="gpt2-conv1d-input-side",
            input_side=["conv1d"],
        ),
        Case(
            "mlp",
            {
                "target_modules": ["lin0", "lin1"],
                "feedforward_modules": ["lin0"],
                "modules_to_save": ["lin2"],
            },
            id="modules-to-save",
            input_side=["lin0"],
        ),
        Case(
            "llama_like",
            {"target_modules": ["k_proj", "v_proj", "down_proj"]},
            id="llama-defaults-feedforward",
            input_side=["down_proj"],
        ),
    ]

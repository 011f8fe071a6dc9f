"""SHiRA through peftkit's conformance suite, on nn.Linear and GPT-2 Conv1D."""

from __future__ import annotations

from peftkit.testing import Case, ConformanceSuite


class TestShiraConformance(ConformanceSuite):
    method = "shira"
    identity_init = {"init_weights": True}
    random_init = {"init_weights": False}
    cases = [
        Case("mlp", {"target_modules": ["lin0", "lin1"], "r": 2}, id="linear"),
        Case(
            "mlp", {"target_modules": ["lin0", "lin1", "lin2"], "r": 1, "random_seed": 3}, id="linear-seeded"
        ),
        Case(
            "mlp",
            {"target_modules": ["lin1"], "r": 4, "modules_to_save": ["lin2"]},
            id="linear-modules-to-save",
        ),
        Case("emb_conv1d", {"target_modules": ["conv1d"], "r": 4}, id="gpt2-conv1d"),
        Case(
            "emb_conv1d", {"target_modules": ["conv1d", "lin"], "r": 2, "random_seed": 0}, id="conv1d-linear"
        ),
    ]

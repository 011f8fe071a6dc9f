"""LoRA through peftkit's conformance suite, on every layer kind it adapts."""

from __future__ import annotations

from peftkit.testing import Case, ConformanceSuite


class TestLoraConformance(ConformanceSuite):
    method = "lora"
    identity_init = {"init_lora_weights": True}
    random_init = {"init_lora_weights": False}
    cases = [
        Case("mlp", {"target_modules": ["lin0", "lin1"], "r": 4, "lora_alpha": 8}, id="linear"),
        Case(
            "mlp",
            {"target_modules": ["lin0", "lin1"], "r": 4, "lora_alpha": 8, "use_rslora": True},
            id="linear-rslora",
        ),
        Case("mlp", {"target_modules": ["lin0", "lin1"], "r": 4, "lora_bias": True}, id="linear-lora-bias"),
        Case(
            "mlp",
            {
                "target_modules": ["lin0", "lin1"],
                "r": 4,
                "rank_pattern": {"lin1": 2},
                "alpha_pattern": {"lin0": 16},
            },
            id="linear-rank-alpha-pattern",
        ),
        Case(
            "mlp", {"target_modules": ["lin0", "lin1", "lin2"], "r": 2, "bias": "all"}, id="linear-bias-all"
        ),
        Case(
            "mlp",
            {"target_modules": ["lin0"], "r": 2, "modules_to_save": ["lin1"]},
            id="linear-modules-to-save",
        ),
        Case("mlp", {"target_modules": ".*lin[01]", "r": 2}, id="linear-regex"),
        Case("emb_conv1d", {"target_modules": ["conv1d"], "r": 4}, id="gpt2-conv1d"),
        Case("emb_conv1d", {"target_modules": ["emb"], "r": 4}, id="embedding"),
        Case(
            "emb_conv1d", {"target_modules": ["emb", "conv1d", "lin"], "r": 4}, id="embedding-conv1d-linear"
        ),
        Case("conv1d", {"target_modules": ["conv"], "r": 4}, id="conv1d"),
        Case("conv2d", {"target_modules": ["conv"], "r": 4, "lora_alpha": 4}, id="conv2d"),
        Case(
            "conv2d",
            {"target_modules": ["conv", "lin"], "r": 2, "lora_bias": True},
            id="conv2d-linear-lora-bias",
        ),
        Case("conv3d", {"target_modules": ["conv"], "r": 2}, id="conv3d"),
        Case("mlp", {"target_modules": ["lin0", "lin1"], "r": 4, "use_dora": True}, id="linear-dora"),
        Case("emb_conv1d", {"target_modules": ["conv1d"], "r": 4, "use_dora": True}, id="gpt2-conv1d-dora"),
        Case("conv1d", {"target_modules": ["conv"], "r": 2, "use_dora": True}, id="conv1d-dora"),
        Case(
            "conv2d",
            {"target_modules": ["conv", "lin"], "r": 2, "use_dora": True},
            id="conv2d-linear-dora",
        ),
        Case(
            "conv3d",
            {"target_modules": ["conv"], "r": 2, "use_dora": True, "use_rslora": True},
            id="conv3d-dora",
        ),
    ]


class TestLoraGaussianConformance(ConformanceSuite):
    """``init_lora_weights="gaussian"`` must be a no-op at init just like the default."""

    method = "lora"
    identity_init = {"init_lora_weights": "gaussian"}
    random_init = {"init_lora_weights": False}
    cases = [
        Case("mlp", {"target_modules": ["lin0", "lin1"], "r": 4}, id="linear-gaussian"),
        Case("conv2d", {"target_modules": ["conv"], "r": 2}, id="conv2d-gaussian"),
    ]

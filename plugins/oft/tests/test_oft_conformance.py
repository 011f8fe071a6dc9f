"""OFT through peftkit's conformance suite, on every layer kind it adapts.

On linear layers and GPT-2 Conv1D the rotation acts on the layer's input (``input_side``), on
embeddings on the looked-up vectors; convolutions rotate their kernel and run it themselves.
"""

from __future__ import annotations

from peftkit.testing import Case, ConformanceSuite


class TestOftConformance(ConformanceSuite):
    method = "oft"
    identity_init = {"init_weights": True}
    random_init = {"init_weights": False}
    cases = [
        Case(
            "mlp",
            {"target_modules": ["lin0", "lin1"], "r": 0, "oft_block_size": 4},
            id="linear-neumann",
            input_side=["lin0", "lin1"],
        ),
        Case(
            "mlp",
            {"target_modules": ["lin0", "lin1"], "r": 4, "oft_block_size": 0, "use_cayley_neumann": False},
            id="linear-cayley-by-r",
            input_side=["lin0", "lin1"],
        ),
        Case(
            "mlp",
            {"target_modules": ["lin0", "lin1"], "oft_block_size": 8, "coft": True, "eps": 0.05},
            id="linear-coft",
            input_side=["lin0", "lin1"],
        ),
        Case(
            "mlp",
            {"target_modules": ["lin1"], "oft_block_size": 4, "block_share": True},
            id="linear-block-share",
            input_side=["lin1"],
        ),
        Case(
            "emb_conv1d",
            {"target_modules": ["conv1d"], "oft_block_size": 8},
            id="gpt2-conv1d",
            input_side=["conv1d"],
        ),
        Case(
            "emb_conv1d",
            {"target_modules": ["emb"], "oft_block_size": 8, "use_cayley_neumann": False},
            id="embedding",
            input_side=[],
        ),
        Case(
            "emb_conv1d",
            {"target_modules": ["emb", "conv1d", "lin"], "oft_block_size": 4},
            id="emb-conv1d-lin",
            input_side=["conv1d", "lin"],
        ),
        Case("conv2d", {"target_modules": ["conv"], "oft_block_size": 9}, id="conv2d"),
        Case(
            "conv2d",
            {"target_modules": ["conv"], "r": 3, "oft_block_size": 0, "use_cayley_neumann": False},
            id="conv2d-cayley-by-r",
        ),
        Case("conv1d", {"target_modules": ["conv"], "oft_block_size": 6}, id="conv1d"),
        Case("conv3d", {"target_modules": ["conv"], "oft_block_size": 6}, id="conv3d"),
    ]

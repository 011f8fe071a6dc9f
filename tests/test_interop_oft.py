"""OFT checkpoints move between peftkit and Hugging Face ``peft`` (the test-only oracle) unchanged.

Each case builds two identical tiny base models, puts a randomly initialised OFT adapter
(``init_weights=False``, then every trainable tensor perturbed, so the adapter really changes the
output) on one with one library, saves it, loads it onto the other copy with the other library,
and compares logits. Both rotation modes are covered: they follow different orientation
conventions in peft, and a checkpoint must give the same outputs here in the mode it was saved in.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from _interop import (
    assert_adapter_matters,
    assert_same,
    no_peftkit_warnings,
    outputs_per_adapter,
    perturb_trainable,
)
from _models import MODELS, run
from torch import nn

import peftkit

BASE = {"init_weights": False}
NEUMANN = {"use_cayley_neumann": True}
CAYLEY = {"use_cayley_neumann": False}

# id -> (model, OFTConfig keyword arguments shared by both libraries)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-block-neumann": (
        "llama",
        {"target_modules": ["q_proj", "v_proj", "down_proj"], "oft_block_size": 8, **NEUMANN},
    ),
    "llama-block-cayley": (
        "llama",
        {
            "target_modules": ["q_proj", "o_proj", "up_proj"],
            "oft_block_size": 8,
            **CAYLEY,
            "task_type": "CAUSAL_LM",
        },
    ),
    "llama-r-neumann": ("llama", {"target_modules": ["k_proj", "gate_proj"], "r": 4, "oft_block_size": 0}),
    "llama-r-cayley": (
        "llama",
        {"target_modules": ["q_proj", "down_proj"], "r": 2, "oft_block_size": 0, **CAYLEY},
    ),
    "llama-neumann-3-terms": (
        "llama",
        {"target_modules": ["q_proj", "v_proj"], "oft_block_size": 8, "num_cayley_neumann_terms": 3},
    ),
    "llama-coft-cayley": (
        "llama",
        {"target_modules": ["q_proj", "v_proj"], "oft_block_size": 8, "coft": True, "eps": 1.0, **CAYLEY},
    ),
    "opt-coft-neumann": (
        "opt",
        {"target_modules": ["q_proj", "fc1"], "oft_block_size": 8, "coft": True, "eps": 1.0},
    ),
    "llama-block-share": (
        "llama",
        {"target_modules": ["q_proj", "v_proj", "up_proj"], "oft_block_size": 8, "block_share": True},
    ),
    "opt-block-share-cayley": (
        "opt",
        {"target_modules": ["k_proj", "fc2"], "r": 4, "oft_block_size": 0, "block_share": True, **CAYLEY},
    ),
    "opt-block": ("opt", {"target_modules": ["q_proj", "v_proj", "fc1", "fc2"], "oft_block_size": 16}),
    "llama-embedding": ("llama", {"target_modules": ["embed_tokens", "q_proj"], "oft_block_size": 8}),
    "llama-embedding-cayley": (
        "llama",
        {"target_modules": ["embed_tokens"], "oft_block_size": 4, **CAYLEY},
    ),
    "opt-embedding": ("opt", {"target_modules": ["embed_tokens", "embed_positions"], "oft_block_size": 8}),
    "opt-bias-oft-only": (
        "opt",
        {"target_modules": ["q_proj", "fc1"], "oft_block_size": 8, "bias": "oft_only", "module_dropout": 0.1},
    ),
    "llama-modules-to-save": (
        "llama",
        {"target_modules": ["v_proj"], "oft_block_size": 8, "modules_to_save": ["lm_head"]},
    ),
    "opt-layers-exclude": (
        "opt",
        {
            "target_modules": ["v_proj", "k_proj", "fc1", "fc2"],
            "layers_to_transform": [1],
            "layers_pattern": "layers",
            "exclude_modules": ["model.decoder.layers.1.self_attn.k_proj"],
            "oft_block_size": 8,
        },
    ),
}

# Several adapters on one model: different modes, sizes and targets.
SECOND: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "llama": (
        "llama",
        {"target_modules": ["q_proj", "v_proj"], "oft_block_size": 8},
        {"target_modules": ["v_proj", "down_proj"], "r": 4, "oft_block_size": 0, **CAYLEY},
    ),
    "opt": (
        "opt",
        {"target_modules": ["q_proj", "embed_tokens"], "oft_block_size": 8, **CAYLEY},
        {"target_modules": ["q_proj", "fc2"], "oft_block_size": 16, "block_share": True},
    ),
}


def _kwargs(extra: dict[str, Any]) -> dict[str, Any]:
    return {**BASE, **extra}


def _peft_to_peftkit(
    build: Callable[[], nn.Module], inputs: Any, kwargs: dict[str, Any], path: Path, **load_kwargs: Any
) -> None:
    base_out = run(build(), inputs)
    ref = peft.get_peft_model(build(), peft.OFTConfig(**kwargs))
    perturb_trainable(ref)
    ref.save_pretrained(path)
    expected = run(ref, inputs)
    assert_adapter_matters(expected, base_out)
    with no_peftkit_warnings():
        ours = peftkit.PeftModel.from_pretrained(build(), path, **load_kwargs)
    assert_same(run(ours, inputs), expected)
    if kwargs.get("bias", "none") == "none":  # trained base biases stay in place when adapters are off
        with ours.disable_adapter():
            assert_same(run(ours, inputs), base_out)


def _peftkit_to_peft(build: Callable[[], nn.Module], inputs: Any, kwargs: dict[str, Any], path: Path) -> None:
    base_out = run(build(), inputs)
    ours = peftkit.get_peft_model(build(), peftkit.config("oft", **kwargs))
    perturb_trainable(ours)
    ours.save_pretrained(path)
    expected = run(ours, inputs)
    assert_adapter_matters(expected, base_out)
    with warnings.catch_warnings():
        # peftkit writes the PEFT format version it follows, so peft must not take this for a pre-0.18 adapter.
        warnings.filterwarnings("error", message="The cayley-neumann parameterization")
        ref = peft.PeftModel.from_pretrained(build(), path)
    assert_same(run(ref, inputs), expected)


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_adapter_loads_in_peftkit(case: str, tmp_path: Path) -> None:
    model, extra = CASES[case]
    build, make_inputs = MODELS[model]
    _peft_to_peftkit(build, make_inputs(), _kwargs(extra), tmp_path)


@pytest.mark.parametrize("case", ["llama-coft-cayley", "llama-block-share", "opt-embedding"])
def test_peft_adapter_loads_in_peftkit_low_cpu_mem(case: str, tmp_path: Path) -> None:
    """Generators created on the meta device and assigned from the checkpoint give the same outputs."""
    model, extra = CASES[case]
    build, make_inputs = MODELS[model]
    _peft_to_peftkit(build, make_inputs(), _kwargs(extra), tmp_path, low_cpu_mem_usage=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_peftkit_adapter_loads_in_peft(case: str, tmp_path: Path) -> None:
    model, extra = CASES[case]
    build, make_inputs = MODELS[model]
    _peftkit_to_peft(build, make_inputs(), _kwargs(extra), tmp_path)


@pytest.mark.parametrize("case", sorted(SECOND))
def test_two_adapters_from_peft(case: str, tmp_path: Path) -> None:
    model, first, second = SECOND[case]
    build, make_inputs = MODELS[model]
    inputs = make_inputs()
    ref = peft.get_peft_model(build(), peft.OFTConfig(**_kwargs(first)))
    ref.add_adapter("other", peft.OFTConfig(**_kwargs(second)))
    ref.set_requires_grad(["default", "other"], requires_grad=True)
    perturb_trainable(ref)
    ref.save_pretrained(tmp_path)
    expected = outputs_per_adapter(ref, inputs, ["default", "other"])
    assert_adapter_matters(expected["other"], expected["default"])

    with no_peftkit_warnings():
        ours = peftkit.PeftModel.from_pretrained(build(), tmp_path)
        ours.load_adapter(tmp_path / "other", adapter_name="other")
    got = outputs_per_adapter(ours, inputs, ["other", "default"])
    for name in ("default", "other"):
        assert_same(got[name], expected[name])


@pytest.mark.parametrize("case", sorted(SECOND))
def test_two_adapters_from_peftkit(case: str, tmp_path: Path) -> None:
    model, first, second = SECOND[case]
    build, make_inputs = MODELS[model]
    inputs = make_inputs()
    ours = peftkit.get_peft_model(build(), peftkit.config("oft", **_kwargs(first)))
    ours.add_adapter("other", peftkit.config("oft", **_kwargs(second)))
    perturb_trainable(ours)
    ours.save_pretrained(tmp_path)
    expected = outputs_per_adapter(ours, inputs, ["default", "other"])
    assert_adapter_matters(expected["other"], expected["default"])

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="The cayley-neumann parameterization")
        ref = peft.PeftModel.from_pretrained(build(), tmp_path)
        ref.load_adapter(tmp_path / "other", adapter_name="other")
    got = outputs_per_adapter(ref, inputs, ["other", "default"])
    for name in ("default", "other"):
        assert_same(got[name], expected[name])


def _saved(folder: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, Any]]:
    from safetensors.torch import load_file

    shapes = {key: tuple(t.shape) for key, t in load_file(folder / "adapter_model.safetensors").items()}
    return shapes, json.loads((folder / "adapter_config.json").read_text())


CONFIG_FIELDS = (
    "r",
    "oft_block_size",
    "module_dropout",
    "coft",
    "eps",
    "block_share",
    "use_cayley_neumann",
    "num_cayley_neumann_terms",
    "init_weights",
    "bias",
)


@pytest.mark.parametrize(
    "case", ["llama-r-cayley", "llama-block-share", "llama-embedding", "opt-bias-oft-only"]
)
def test_saved_files_match_peft(case: str, tmp_path: Path) -> None:
    """Both libraries train as many parameters and write the same tensor keys and shapes and config fields."""
    model, extra = CASES[case]
    build, _ = MODELS[model]
    kwargs = _kwargs(extra)
    ref = peft.get_peft_model(build(), peft.OFTConfig(**kwargs))
    ours = peftkit.get_peft_model(build(), peftkit.config("oft", **kwargs))
    assert ours.get_nb_trainable_parameters() == ref.get_nb_trainable_parameters()
    ref.save_pretrained(tmp_path / "peft")
    ours.save_pretrained(tmp_path / "ours")
    peft_shapes, peft_config = _saved(tmp_path / "peft")
    our_shapes, our_config = _saved(tmp_path / "ours")
    assert our_shapes == peft_shapes
    assert set(peft_config) <= set(our_config)
    for name in CONFIG_FIELDS:
        assert our_config[name] == peft_config[name], name
    assert sorted(our_config["target_modules"]) == sorted(peft_config["target_modules"])


def test_peft_merged_model_matches_peftkit(tmp_path: Path) -> None:
    """peftkit's merge gives peft's merged weights (``W' = W R^T``) for a Neumann adapter (not exactly orthogonal)."""
    build, make_inputs = MODELS["llama"]
    inputs = make_inputs()
    kwargs = _kwargs({"target_modules": ["q_proj", "up_proj"], "oft_block_size": 8})
    ref = peft.get_peft_model(build(), peft.OFTConfig(**kwargs))
    perturb_trainable(ref)
    ref.save_pretrained(tmp_path)
    ours = peftkit.PeftModel.from_pretrained(build(), tmp_path)
    merged_ref = ref.merge_and_unload()
    merged_ours = ours.merge_and_unload()
    for (name, ref_param), (_, our_param) in zip(
        merged_ref.named_parameters(), merged_ours.named_parameters(), strict=True
    ):
        torch.testing.assert_close(our_param, ref_param, atol=1e-6, rtol=0, msg=name)
    assert_same(run(merged_ours, inputs), run(merged_ref, inputs))


class _ConvNet(nn.Module):
    """A Conv2d over images larger than its kernel, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, kernel_size=3, padding=1)
        self.head = nn.Linear(6 * 7 * 7, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    return _ConvNet().eval()


@pytest.mark.parametrize("mode", [NEUMANN, CAYLEY], ids=["neumann", "cayley"])
def test_peft_conv2d_adapter_matches_peft_merged(mode: dict[str, Any], tmp_path: Path) -> None:
    """peft's unmerged Conv2d forward folds rotated overlapping patches back into the image, which is only right for
    inputs the size of the kernel; its merged layer is right. A peft Conv2d adapter in peftkit gives the merged outputs
    unmerged and merged."""
    inputs = torch.randn(2, 4, 7, 7, generator=torch.Generator().manual_seed(1))
    kwargs = _kwargs({"target_modules": ["conv"], "oft_block_size": 9, **mode})
    ref = peft.get_peft_model(_conv_net(), peft.OFTConfig(**kwargs))
    perturb_trainable(ref)
    ref.save_pretrained(tmp_path)
    peft_unmerged = run(ref, inputs)
    peft_merged = run(ref.merge_and_unload(), inputs)
    assert (peft_unmerged - peft_merged).abs().max() > 1e-3, (
        "peft's Conv2d forward is fixed; update this test"
    )
    assert_adapter_matters(peft_merged, run(_conv_net(), inputs))

    ours = peftkit.PeftModel.from_pretrained(_conv_net(), tmp_path)
    assert_same(run(ours, inputs), peft_merged)
    assert_same(run(ours.merge_and_unload(), inputs), peft_merged)


def test_old_peft_oft_config_is_refused(tmp_path: Path) -> None:
    """A config written before ``oft_block_size`` existed (Hugging Face PEFT <= 0.13) fails with an explanation."""
    build, _ = MODELS["llama"]
    peft.get_peft_model(build(), peft.OFTConfig(target_modules=["q_proj"], oft_block_size=8)).save_pretrained(
        tmp_path
    )
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    del config["oft_block_size"]
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    model = build()
    with pytest.raises(peftkit.ConfigError, match=r"no 'oft_block_size'.*PEFT 0\.13 or older"):
        peftkit.PeftModel.from_pretrained(model, tmp_path)
    assert not any("oft_" in name for name, _ in model.named_parameters())

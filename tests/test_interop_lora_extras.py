"""LoRA features beyond plain adapters, checked against Hugging Face ``peft`` (the test-only oracle).

* DoRA adapters move between the two libraries with the same logits (Linear, Conv2d, GPT-2 Conv1D,
  embeddings, grouped Conv2d); merged weights match too, and grouped convolutions refuse to merge.
* Mixed-adapter batches: ``adapter_names=["a", "b", "__base__", "a"]`` gives each sample the output
  of its adapter alone, in forward and in ``generate`` (greedy and beam search, decoder-only and
  encoder-decoder), and the same as peft's own mixed batches.
* ``add_weighted_adapter`` gives peft's results for ``linear``, ``cat`` and ``svd``.
* A PiSSA / OLoRA adapter converted on save loads in peft on the untouched base model and gives
  the trained model's outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from _models import (
    MODELS,
    conv_inputs,
    grouped_conv_inputs,
    run,
    text_inputs,
    tiny_convnet,
    tiny_grouped_convnet,
    tiny_t5,
)
from torch import nn

import peftkit

ATOL = 1e-5
BUILDERS = {
    **MODELS,
    "conv": (tiny_convnet, conv_inputs),
    "grouped-conv": (tiny_grouped_convnet, grouped_conv_inputs),
}

DORA_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "linear": ("llama", {"target_modules": ["q_proj", "v_proj", "down_proj"]}),
    "gpt2-conv1d": ("gpt2", {"target_modules": ["c_attn", "c_fc"], "fan_in_fan_out": True}),
    "conv2d": ("conv", {"target_modules": ["conv2d", "conv1d", "head"]}),
    "embedding": (
        "llama",
        {"target_modules": ["embed_tokens", "q_proj"], "rank_pattern": {"embed_tokens": 2}},
    ),
    # wpe, not wte: GPT-2 ties wte to its output layer, so merging into wte would change the head too.
    "gpt2-embedding": ("gpt2", {"target_modules": ["wpe", "c_attn"], "fan_in_fan_out": True}),
    "rslora-patterns": (
        "opt",
        {
            "target_modules": ["q_proj", "fc1"],
            "use_rslora": True,
            "rank_pattern": {"fc1": 2},
            "lora_alpha": 16,
        },
    ),
}


def _lora_kwargs(extra: dict[str, Any]) -> dict[str, Any]:
    return {"r": 4, "lora_alpha": 8, "init_lora_weights": False, **extra}


def _perturb(model: nn.Module, seed: int = 7) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters(), key=lambda item: item[0]):
            if param.requires_grad:
                param.add_(0.1 * torch.randn(param.shape, generator=gen))


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


# --- DoRA ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(DORA_CASES))
def test_peft_dora_adapter_loads_in_peftkit(case: str, tmp_path: Path) -> None:
    model, extra = DORA_CASES[case]
    build, make_inputs = BUILDERS[model]
    inputs = make_inputs()
    kwargs = _lora_kwargs({**extra, "use_dora": True})
    ref = peft.get_peft_model(build(), peft.LoraConfig(**kwargs))
    _perturb(ref)
    ref.save_pretrained(tmp_path)
    expected = run(ref, inputs)
    assert (expected - run(build(), inputs)).abs().max() > 1e-3
    ours = peftkit.PeftModel.from_pretrained(build(), tmp_path)
    _close(run(ours, inputs), expected)
    ours.merge_adapter()
    _close(run(ours, inputs), expected)
    ref.merge_adapter()  # both libraries merge to the same weights
    merged_ref = {n: p for n, p in ref.named_parameters() if "base_layer.weight" in n}
    merged_ours = dict(ours.named_parameters())
    for name, weight in merged_ref.items():
        torch.testing.assert_close(merged_ours[name], weight, atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", sorted(DORA_CASES))
def test_peftkit_dora_adapter_loads_in_peft(case: str, tmp_path: Path) -> None:
    model, extra = DORA_CASES[case]
    build, make_inputs = BUILDERS[model]
    inputs = make_inputs()
    kwargs = _lora_kwargs({**extra, "use_dora": True})
    ours = peftkit.get_peft_model(build(), peftkit.config("lora", **kwargs))
    _perturb(ours)
    ours.save_pretrained(tmp_path)
    expected = run(ours, inputs)
    assert (expected - run(build(), inputs)).abs().max() > 1e-3
    from safetensors.torch import load_file

    keys = [k for k in load_file(tmp_path / "adapter_model.safetensors") if "magnitude" in k]
    assert keys and all(k.endswith(".lora_magnitude_vector") for k in keys)
    ref = peft.PeftModel.from_pretrained(build(), tmp_path)
    _close(run(ref, inputs), expected)


# Grouped convolutions: LoRA cannot be merged into them (in peft either), so they are compared unmerged.
GROUPED_DORA = {"target_modules": ["conv_a", "conv_b", "head"], "use_dora": True}


def test_peft_grouped_conv_dora_adapter_loads_in_peftkit(tmp_path: Path) -> None:
    build, make_inputs = BUILDERS["grouped-conv"]
    inputs = make_inputs()
    ref = peft.get_peft_model(build(), peft.LoraConfig(**_lora_kwargs(GROUPED_DORA)))
    _perturb(ref)
    ref.save_pretrained(tmp_path)
    expected = run(ref, inputs)
    assert (expected - run(build(), inputs)).abs().max() > 1e-3
    ours = peftkit.PeftModel.from_pretrained(build(), tmp_path)
    _close(run(ours, inputs), expected)
    conv_b = ours.get_base_model().conv_b
    assert tuple(conv_b.lora_magnitude_vector["default"].shape) == (1, 8, 1, 1)


def test_peftkit_grouped_conv_dora_adapter_loads_in_peft(tmp_path: Path) -> None:
    build, make_inputs = BUILDERS["grouped-conv"]
    inputs = make_inputs()
    ours = peftkit.get_peft_model(build(), peftkit.config("lora", **_lora_kwargs(GROUPED_DORA)))
    _perturb(ours)
    ours.save_pretrained(tmp_path)
    expected = run(ours, inputs)
    assert (expected - run(build(), inputs)).abs().max() > 1e-3
    ref = peft.PeftModel.from_pretrained(build(), tmp_path)
    _close(run(ref, inputs), expected)


def test_grouped_conv_dora_init_matches_peft() -> None:
    """With the default init (B = 0) both libraries start m at the norm of each output's kernel."""
    build, _ = BUILDERS["grouped-conv"]
    kwargs = {"r": 4, "target_modules": ["conv_a", "conv_b"], "use_dora": True}
    ref = peft.get_peft_model(build(), peft.LoraConfig(**kwargs))
    ours = peftkit.get_peft_model(build(), peftkit.config("lora", **kwargs))
    ref_m = {n.removesuffix(".weight"): p for n, p in ref.named_parameters() if "magnitude" in n}
    our_m = {n: p for n, p in ours.named_parameters() if "magnitude" in n}
    assert ref_m.keys() == our_m.keys() and len(our_m) == 2
    for name, value in ref_m.items():
        torch.testing.assert_close(our_m[name], value, atol=1e-6, rtol=0)


def test_merging_grouped_conv_dora_is_refused_and_changes_nothing() -> None:
    build, make_inputs = BUILDERS["grouped-conv"]
    inputs = make_inputs()
    cfg = peftkit.config("lora", **_lora_kwargs({"target_modules": ["conv_b"], "use_dora": True}))
    ours = peftkit.get_peft_model(build(), cfg)
    _perturb(ours)
    before = run(ours, inputs)
    weight = ours.get_base_model().conv_b.base_layer.weight.detach().clone()
    with pytest.raises(NotImplementedError, match=r"groups=4.*use the adapter unmerged"):
        ours.merge_adapter()
    assert ours.get_base_model().conv_b.merged_adapters == []
    torch.testing.assert_close(ours.get_base_model().conv_b.base_layer.weight, weight, atol=0, rtol=0)
    _close(run(ours, inputs), before)


@pytest.mark.parametrize(
    ("model", "kwargs"),
    [
        ("gpt2", {"target_modules": ["c_attn"], "fan_in_fan_out": True}),
        ("llama", {"target_modules": ["embed_tokens"]}),
    ],
    ids=["gpt2-conv1d", "embedding"],
)
def test_dora_init_matches_peft(model: str, kwargs: dict[str, Any]) -> None:
    """With the default init the magnitude both libraries compute is the same tensor, key for key."""
    build, _ = MODELS[model]
    kwargs = {"r": 4, "use_dora": True, **kwargs}
    ref = peft.get_peft_model(build(), peft.LoraConfig(**kwargs))
    ours = peftkit.get_peft_model(build(), peftkit.config("lora", **kwargs))
    ref_m = {n.removesuffix(".weight"): p for n, p in ref.named_parameters() if "magnitude" in n}
    our_m = {n: p for n, p in ours.named_parameters() if "magnitude" in n}
    assert ref_m.keys() == our_m.keys() and our_m
    for name, value in ref_m.items():
        torch.testing.assert_close(our_m[name], value, atol=1e-6, rtol=0)


# --- mixed-adapter batches -------------------------------------------------------------------

NAMES = ["a", "b", "__base__", "a"]


def _two_adapter_models(
    build: Any, first: dict[str, Any], second: dict[str, Any], tmp_path: Path
) -> tuple[Any, Any]:
    """The same two adapters ``a`` and ``b`` in peftkit and in peft, from one set of saved files."""
    ours = peftkit.get_peft_model(build(), peftkit.config("lora", **_lora_kwargs(first)), adapter_name="a")
    ours.add_adapter("b", peftkit.config("lora", **_lora_kwargs(second)))
    _perturb(ours)
    ours.save_pretrained(tmp_path)
    ref = peft.PeftModel.from_pretrained(build(), tmp_path / "a", adapter_name="a")
    ref.load_adapter(tmp_path / "b", adapter_name="b")
    return ours.eval(), ref.eval()


def _alone(model: Any, call: Any) -> dict[str, torch.Tensor]:
    outputs = {}
    for name in ("a", "b"):
        model.set_adapter(name)
        outputs[name] = call(model)
    with model.disable_adapter():
        outputs["__base__"] = call(model)
    return outputs


@pytest.mark.parametrize(
    ("model", "first", "second"),
    [
        ("llama", {"target_modules": ["q_proj", "v_proj"]}, {"target_modules": ["k_proj", "v_proj"], "r": 2}),
        ("gpt2", {"target_modules": ["c_attn"]}, {"target_modules": ["c_attn", "c_proj"], "use_dora": True}),
        ("bert", {"task_type": "SEQ_CLS"}, {"task_type": "SEQ_CLS", "target_modules": ["key"], "r": 6}),
    ],
    ids=["llama", "gpt2-dora", "bert-seq-cls-heads"],
)
def test_mixed_batch_forward(
    model: str, first: dict[str, Any], second: dict[str, Any], tmp_path: Path
) -> None:
    """Each sample gets its adapter's output alone, and the same as peft's mixed batch."""
    build, _ = MODELS[model]
    inputs = text_inputs(batch=4)
    ours, ref = _two_adapter_models(build, first, second, tmp_path)
    alone = _alone(ours, lambda m: run(m, inputs))
    with torch.no_grad():
        mixed = ours(**inputs, adapter_names=NAMES).logits
    for i, name in enumerate(NAMES):
        _close(mixed[i], alone[name][i])
    assert not torch.allclose(alone["a"], alone["b"], atol=1e-3)
    if not second.get("use_dora"):  # peft refuses adapter_names with DoRA adapters
        with torch.no_grad():
            _close(mixed, ref(**inputs, adapter_names=NAMES).logits)


def _greedy(model: Any, inputs: dict[str, torch.Tensor], **kwargs: Any) -> torch.Tensor:
    return model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=0, **kwargs)


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("model", ["llama", "t5"])
def test_mixed_batch_generate(model: str, num_beams: int, tmp_path: Path) -> None:
    """generate with adapter_names gives, per sample, what that adapter generates alone (beams repeat names)."""
    build = MODELS[model][0] if model == "llama" else tiny_t5
    targets = ["q_proj", "v_proj"] if model == "llama" else ["q", "v", "wo"]
    ours, ref = _two_adapter_models(
        build, {"target_modules": targets}, {"target_modules": targets, "r": 2}, tmp_path
    )
    inputs = text_inputs(batch=4)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    alone = _alone(ours, lambda m: _greedy(m, inputs, num_beams=num_beams))
    assert not torch.equal(alone["a"], alone["b"])
    mixed = _greedy(ours, inputs, num_beams=num_beams, adapter_names=NAMES)
    for i, name in enumerate(NAMES):
        assert torch.equal(mixed[i], alone[name][i]), (i, name)
    assert torch.equal(mixed, _greedy(ref, inputs, num_beams=num_beams, adapter_names=NAMES))


# --- add_weighted_adapter --------------------------------------------------------------------

WEIGHTED_CASES = {
    "llama": (
        "llama",
        {"target_modules": ["q_proj", "v_proj"]},
        {"target_modules": ["v_proj", "k_proj", "embed_tokens"], "lora_alpha": 6},
    ),
    "gpt2": (
        "gpt2",
        {"target_modules": ["c_attn"]},
        {"target_modules": ["c_attn", "c_proj"], "lora_alpha": 3},
    ),
    "conv2d": (
        "conv",
        {"target_modules": ["conv2d", "head"]},
        {"target_modules": ["conv2d"], "lora_alpha": 2},
    ),
    "regex": (
        "opt",
        {"target_modules": r".*\.q_proj"},
        {"target_modules": r".*\.(q|v)_proj", "lora_alpha": 5},
    ),
}


@pytest.mark.parametrize("combination", ["linear", "cat", "svd"])
@pytest.mark.parametrize("case", sorted(WEIGHTED_CASES))
def test_add_weighted_adapter_matches_peft(case: str, combination: str, tmp_path: Path) -> None:
    model, first, second = WEIGHTED_CASES[case]
    build, make_inputs = BUILDERS[model]
    inputs = make_inputs()
    ref = peft.get_peft_model(build(), peft.LoraConfig(**_lora_kwargs(first)))
    ref.add_adapter("other", peft.LoraConfig(**_lora_kwargs(second)))
    ref.set_requires_grad(["default", "other"], requires_grad=True)
    _perturb(ref)
    ref.save_pretrained(tmp_path)
    ours = peftkit.PeftModel.from_pretrained(build(), tmp_path)
    ours.load_adapter(tmp_path / "other", adapter_name="other")

    call = {"combination_type": combination, "svd_rank": 3 if combination == "svd" else None}
    ref.add_weighted_adapter(["default", "other"], [0.7, -1.3], "mix", **call)
    ours.add_weighted_adapter(["default", "other"], [0.7, -1.3], "mix", **call)
    ref.set_adapter("mix")
    ours.set_adapter("mix")
    expected = run(ref, inputs)
    assert (expected - run(build(), inputs)).abs().max() > 1e-3
    _close(run(ours, inputs), expected)
    for field in ("r", "lora_alpha"):
        assert getattr(ours.peft_config["mix"], field) == getattr(ref.peft_config["mix"], field)
    ref_targets = ref.peft_config["mix"].target_modules
    our_targets = ours.peft_config["mix"].target_modules
    assert (
        (sorted(our_targets) == sorted(ref_targets))
        if isinstance(ref_targets, set)
        else our_targets == ref_targets
    )

    ours.save_pretrained(tmp_path / "ours", selected_adapters=["mix"])
    reloaded = peft.PeftModel.from_pretrained(build(), tmp_path / "ours" / "mix")
    _close(run(reloaded, inputs), expected)


# --- PiSSA / OLoRA ---------------------------------------------------------------------------


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora"])
@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_converted_pissa_adapter_loads_in_peft_on_the_original_model(
    model: str, init: str, tmp_path: Path
) -> None:
    build, make_inputs = MODELS[model]
    inputs = make_inputs()
    targets = ["q_proj", "v_proj", "up_proj"] if model == "llama" else ["c_attn", "c_fc"]
    kwargs = {"r": 4, "lora_alpha": 8, "target_modules": targets, "init_lora_weights": init}
    base_out = run(build(), inputs)
    ours = peftkit.get_peft_model(build(), peftkit.config("lora", **kwargs))
    _close(run(ours, inputs), base_out)  # identity at init, with the residual in the base weights
    ours.save_pretrained(tmp_path / "init")
    _perturb(ours)  # stands in for training
    trained = run(ours, inputs)
    assert (trained - base_out).abs().max() > 1e-3
    ours.save_pretrained(tmp_path / "lora", path_initial_model_for_weight_conversion=tmp_path / "init")

    untouched = build()
    ref = peft.PeftModel.from_pretrained(untouched, tmp_path / "lora")
    _close(run(ref, inputs), trained)
    assert ref.peft_config["default"].r == 8
    with ref.disable_adapter():
        _close(run(ref, inputs), base_out)


def test_pissa_init_matches_peft() -> None:
    """The full-SVD PiSSA init gives the same adapter and residual weights in both libraries."""
    build, _ = MODELS["llama"]
    kwargs = {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "down_proj"],
        "init_lora_weights": "pissa",
    }
    ref = dict(peft.get_peft_model(build(), peft.LoraConfig(**kwargs)).named_parameters())
    ours = dict(peftkit.get_peft_model(build(), peftkit.config("lora", **kwargs)).named_parameters())
    assert ref.keys() == ours.keys()
    for name, value in ref.items():
        torch.testing.assert_close(ours[name], value, atol=1e-5, rtol=0, msg=name)

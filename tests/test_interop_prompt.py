"""Prompt-learning checkpoints move between peftkit and Hugging Face ``peft`` (the test-only oracle).

For prompt tuning, prefix tuning (plain and projected) and p-tuning (MLP and LSTM) on a tiny
Llama with grouped-query attention, a tiny T5 and a tiny BERT classifier: an adapter with random
virtual tokens is made by one library, saved, loaded onto an identical base model by the other,
and both give the same logits (atol 1e-5) and, for the generative models, the same greedy
``generate`` output (batched with left padding for Llama), which must also equal greedy decoding
without a key/value cache.

Where peft itself cannot run a case on the installed transformers (prefix tuning and prompt-tuning
``generate`` on 5.24, see ``peft_misses_cache_rename``) the peft side is skipped with the versions,
and ``test_golden_peft.py`` holds peftkit to the outputs peft gave on the stack it supports.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from _interop import greedy_without_cache, peft_misses_cache_rename, skip_where_peft_cannot
from _models import VOCAB, run, seq2seq_inputs, text_inputs, tiny_bert_seq_cls, tiny_llama, tiny_t5
from safetensors.torch import load_file

import peftkit

ATOL = 1e-5
N = 4  # virtual tokens

METHODS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # id -> (peftkit method, peft config class, keyword arguments both accept)
    "prompt": ("prompt_tuning", "PromptTuningConfig", {}),
    "prefix": ("prefix_tuning", "PrefixTuningConfig", {}),
    "prefix-projected": (
        "prefix_tuning",
        "PrefixTuningConfig",
        {"prefix_projection": True, "encoder_hidden_size": 16},
    ),
    "ptuning-mlp": ("p_tuning", "PromptEncoderConfig", {"encoder_hidden_size": 16}),
    "ptuning-lstm": (
        "p_tuning",
        "PromptEncoderConfig",
        {"encoder_reparameterization_type": "LSTM", "encoder_hidden_size": 8},
    ),
}
TASKS = {
    "llama": (tiny_llama, "CAUSAL_LM"),
    "t5": (tiny_t5, "SEQ_2_SEQ_LM"),
    "bert": (tiny_bert_seq_cls, "SEQ_CLS"),
}
CASES = [(model, method) for model in TASKS for method in METHODS]
IDS = [f"{model}-{method}" for model, method in CASES]


def _inputs(model: str) -> dict[str, torch.Tensor]:
    return seq2seq_inputs() if model == "t5" else text_inputs()


def _left_padded() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, VOCAB, (3, 6), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :4] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}


def _prompt(name: str) -> dict[str, torch.Tensor]:
    return (
        _left_padded() if name == "llama" else {k: v for k, v in _inputs(name).items() if "decoder" not in k}
    )


def _generate(model: Any, name: str) -> torch.Tensor:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.generate(**_prompt(name), max_new_tokens=5, do_sample=False, pad_token_id=0)


def _is_prefix(method: str) -> bool:
    return METHODS[method][0] == "prefix_tuning"


def _check_generate(ours: Any, theirs: Any, name: str, method: str) -> None:
    """peftkit's greedy output equals decoding without a cache, and peft's where peft decodes right."""
    generated = _generate(ours, name)
    reference = greedy_without_cache(ours, _prompt(name), 5, positions=_is_prefix(method))
    assert torch.equal(generated, reference)
    peft_generated = _generate(theirs, name)
    if not torch.equal(peft_generated, reference) and peft_misses_cache_rename():
        skip_where_peft_cannot(f"{method} generate (its output differs from cache-free greedy decoding)")
    assert torch.equal(generated, peft_generated)


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Make every trainable tensor (prompt encoders, the classifier head) random and far from its init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen) * 0.3)


def _peft_model(name: str, method: str) -> Any:
    build, task = TASKS[name]
    _, cls, kwargs = METHODS[method]
    torch.manual_seed(11)
    model = peft.get_peft_model(build(), getattr(peft, cls)(task_type=task, num_virtual_tokens=N, **kwargs))
    _perturb(model, 5)
    return model.eval()


def _peftkit_model(name: str, method: str) -> Any:
    build, task = TASKS[name]
    kit_method, _, kwargs = METHODS[method]
    torch.manual_seed(11)
    model = peftkit.get_peft_model(
        build(), peftkit.config(kit_method, task_type=task, num_virtual_tokens=N, **kwargs)
    )
    _perturb(model, 5)
    return model.eval()


@pytest.mark.parametrize(("name", "method"), CASES, ids=IDS)
def test_peft_adapter_loads_in_peftkit(tmp_path: Path, name: str, method: str) -> None:
    if _is_prefix(method) and peft_misses_cache_rename():
        skip_where_peft_cannot("prefix tuning")
    source = _peft_model(name, method)
    source.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(TASKS[name][0](), tmp_path)
    assert type(loaded).__name__ == type(source).__name__
    torch.testing.assert_close(run(loaded, _inputs(name)), run(source, _inputs(name)), atol=ATOL, rtol=0)
    if name != "bert":
        _check_generate(loaded, source, name, method)


@pytest.mark.parametrize(("name", "method"), CASES, ids=IDS)
def test_peftkit_adapter_loads_in_peft(tmp_path: Path, name: str, method: str) -> None:
    if _is_prefix(method) and peft_misses_cache_rename():
        skip_where_peft_cannot("prefix tuning")
    source = _peftkit_model(name, method)
    source.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = peft.PeftModel.from_pretrained(TASKS[name][0](), tmp_path).eval()
    torch.testing.assert_close(run(loaded, _inputs(name)), run(source, _inputs(name)), atol=ATOL, rtol=0)
    if name != "bert":
        _check_generate(source, loaded, name, method)


@pytest.mark.parametrize("method", list(METHODS))
def test_same_files_as_peft(tmp_path: Path, method: str) -> None:
    """Both libraries write the same tensor names and shapes and the same filled-in config values."""
    _peft_model("llama", method).save_pretrained(tmp_path / "peft")
    _peftkit_model("llama", method).save_pretrained(tmp_path / "kit")
    theirs, ours = (
        load_file(tmp_path / "peft" / "adapter_model.safetensors"),
        load_file(tmp_path / "kit" / "adapter_model.safetensors"),
    )
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    peft_config = peft.PeftConfig.from_pretrained(tmp_path / "peft")
    kit_config = peftkit.PeftModel.from_pretrained(tiny_llama(), tmp_path / "kit").peft_config["default"]
    for field in (
        "num_virtual_tokens",
        "token_dim",
        "num_attention_heads",
        "num_layers",
        "num_transformer_submodules",
    ):
        assert getattr(kit_config, field) == getattr(peft_config, field), field

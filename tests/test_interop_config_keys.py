"""A saved ``adapter_config.json`` has exactly the keys Hugging Face ``peft`` (the test-only oracle) writes
for the same method, so each library reads the other's file without a warning.

For every method peftkit implements, both libraries build the same adapter on a tiny Llama and save
it; the key sets must be equal, peft must load peftkit's folder without a warning or a logged
complaint (its "Unexpected keyword arguments ... these are ignored" is how it drops a key), and
peftkit must load peft's folder without a warning of its own.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import peft
import pytest
from _interop import no_peftkit_warnings, peft_misses_cache_rename, skip_where_peft_cannot
from _models import tiny_llama

import peftkit

LAYERS = {"target_modules": ["q_proj", "v_proj"]}
PROMPT = {"num_virtual_tokens": 4, "task_type": "CAUSAL_LM"}
# id -> (peftkit method, peft config class, keyword arguments both accept). Settings away from the
# defaults where a method has them, so a key written only when set would show up too.
CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "lora": (
        "lora",
        "LoraConfig",
        {"r": 4, "layers_to_transform": [0], "layers_pattern": "layers", **LAYERS},
    ),
    "miss": ("miss", "MissConfig", {"r": 4, "exclude_modules": ["lm_head"], **LAYERS}),
    "oft": ("oft", "OFTConfig", {"r": 0, "oft_block_size": 8, "bias": "oft_only", **LAYERS}),
    "shira": ("shira", "ShiraConfig", {"r": 2, "random_seed": 3, "modules_to_save": ["lm_head"], **LAYERS}),
    "vera": (
        "vera",
        "VeraConfig",
        {"r": 8, "layers_to_transform": [1], "layers_pattern": "layers", **LAYERS},
    ),
    "ia3": (
        "ia3",
        "IA3Config",
        {"target_modules": ["q_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
    ),
    "prompt": ("prompt_tuning", "PromptTuningConfig", PROMPT),
    "prefix": ("prefix_tuning", "PrefixTuningConfig", {"prefix_projection": True, **PROMPT}),
    "ptuning": ("p_tuning", "PromptEncoderConfig", {"encoder_hidden_size": 16, **PROMPT}),
}


def _saved_keys(folder: Path) -> set[str]:
    return set(json.loads((folder / "adapter_config.json").read_text()))


def _save_with_peft(case: str, folder: Path) -> None:
    _, peft_class, kwargs = CASES[case]
    if case == "prefix" and peft_misses_cache_rename():
        skip_where_peft_cannot("prefix tuning")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft.get_peft_model(tiny_llama(), getattr(peft, peft_class)(**kwargs)).save_pretrained(folder)


@pytest.mark.parametrize("case", sorted(CASES))
def test_saved_keys_are_peft_keys_and_each_library_reads_the_other_silently(
    case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    method, _, kwargs = CASES[case]
    ours, theirs = tmp_path / "peftkit", tmp_path / "peft"
    peftkit.get_peft_model(tiny_llama(), peftkit.config(method, **kwargs)).save_pretrained(ours)
    _save_with_peft(case, theirs)
    assert _saved_keys(ours) == _saved_keys(theirs)

    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft.PeftModel.from_pretrained(tiny_llama(), ours)
    from_peft = [str(w.message) for w in caught if "/peft/" in w.filename or "keyword" in str(w.message)]
    assert not from_peft, from_peft
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("peft")]

    with no_peftkit_warnings():
        loaded = peftkit.PeftModel.from_pretrained(tiny_llama(), theirs)
    assert set(loaded.peft_config["default"].to_dict()) == _saved_keys(theirs)

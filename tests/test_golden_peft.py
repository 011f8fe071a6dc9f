"""Adapters saved by Hugging Face peft load in peftkit with peft's outputs, on every stack we test.

The golden files (``tests/golden``, written by ``make golden`` with the peft oracle on the newest
stack it supports) hold a tiny base model, peft's adapter, the inputs and peft's logits and greedy
generations. They let the check run where peft itself cannot (prefix tuning on transformers 5.24):
peftkit on the installed stack must give the same logits (1e-5) and the same tokens.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import peftkit

GOLDEN = Path(__file__).parent / "golden"
MANIFEST = json.loads((GOLDEN / "MANIFEST.json").read_text())
AUTO_CLASSES = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
}


def _base(name: str, task: str) -> Any:
    import transformers

    auto = getattr(transformers, AUTO_CLASSES[task])
    return auto.from_pretrained(GOLDEN / "bases" / name).eval()


@pytest.mark.parametrize("case", sorted(MANIFEST["cases"]))
def test_peft_golden_adapter_gives_peft_outputs_in_peftkit(case: str) -> None:
    spec = MANIFEST["cases"][case]
    folder = GOLDEN / "cases" / case
    expected = load_file(folder / "expected.safetensors")
    model = peftkit.PeftModel.from_pretrained(_base(spec["base"], spec["task"]), folder).eval()
    forward = {
        k: v for k, v in expected.items() if k not in ("logits", "generated") and not k.startswith("prompt_")
    }
    with torch.no_grad():
        logits = model(**forward).logits
    torch.testing.assert_close(logits, expected["logits"], atol=1e-5, rtol=0)
    if "generated" in expected:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            generated = model.generate(
                input_ids=expected["prompt_input_ids"],
                attention_mask=expected["prompt_attention_mask"],
                max_new_tokens=MANIFEST["new_tokens"],
                do_sample=False,
                pad_token_id=0,
            )
        assert torch.equal(generated, expected["generated"])


def test_every_method_has_a_golden_case() -> None:
    """One golden case per method peft shares with peftkit, so a method cannot go unchecked on 5.24."""
    configs = {spec["peft_config"] for spec in MANIFEST["cases"].values()}
    assert configs >= {
        "LoraConfig",
        "MissConfig",
        "ShiraConfig",
        "OFTConfig",
        "VeraConfig",
        "PromptTuningConfig",
        "PrefixTuningConfig",
        "PromptEncoderConfig",
    }

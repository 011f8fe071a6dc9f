"""LoRA on bitsandbytes-quantized tiny Llamas, interchanged with Hugging Face ``peft`` (the test oracle).

An adapter trained with ``peft`` on a quantized base loads in peftkit on the same quantized base
with the same logits, and the reverse; an adapter trained on a 4-bit base loads on the
full-precision base in both libraries with the same logits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import peftkit

VOCAB = 96
TARGETS = ["q_proj", "v_proj"]
ATOL = 1e-5  # same base bits, same adapter tensors, same float32 ops: only summation order may differ
# peft (the oracle) still calls transformers' deprecated is_gradient_checkpointing.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


@pytest.fixture(autouse=True)
def _quiet_int8_matmul() -> Iterator[None]:
    """bitsandbytes' 8-bit matmul logs a warning on every call that it casts float32 inputs to float16."""
    bnb_logger = logging.getLogger("bitsandbytes.autograd._functions")
    level = bnb_logger.level
    bnb_logger.setLevel(logging.ERROR)
    yield
    bnb_logger.setLevel(level)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama (hidden 64: bitsandbytes' CPU 4-bit kernel wants out_features % 32 == 0), saved once."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def load(path: Path, quant: str | None) -> nn.Module:
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    if quant is None:
        return LlamaForCausalLM.from_pretrained(path).eval()
    config = (
        BitsAndBytesConfig(load_in_8bit=True)
        if quant == "int8"
        else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
    )
    return LlamaForCausalLM.from_pretrained(path, quantization_config=config, device_map="cpu").eval()


def batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (2, 10), generator=gen)
    return {"input_ids": ids, "labels": ids}


def logits(model: nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch()["input_ids"]).logits


def train(model: nn.Module, steps: int = 4) -> None:
    """A few real optimizer steps, so B moves away from zero and the adapter matters."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    model.train()
    for _ in range(steps):
        model(**batch()).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def peft_lora(base: nn.Module) -> Any:
    import peft

    return peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))


def peftkit_lora(base: nn.Module) -> Any:
    return peftkit.get_peft_model(base, peftkit.config("lora", r=4, lora_alpha=8, target_modules=TARGETS))


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def effect_of_adapter(model: Any) -> float:
    with model.disable_adapter():
        plain = logits(model)
    return (logits(model) - plain).abs().max().item()


@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_peft_adapter_trained_on_quantized_base_loads_in_peftkit(
    checkpoint: Path, tmp_path: Path, quant: str
) -> None:
    import peft

    theirs = peft_lora(peft.prepare_model_for_kbit_training(load(checkpoint, quant), False))
    train(theirs)
    assert effect_of_adapter(theirs) > 1e-2
    # Before saving: peft's save calls the model's state_dict(), and bitsandbytes 0.50 then unpacks
    # CPU-packed 4-bit weights in place with wrongly ordered scales, changing the model's outputs.
    expected = logits(theirs)
    theirs.save_pretrained(tmp_path)

    ours = peftkit.PeftModel.from_pretrained(load(checkpoint, quant), tmp_path)
    assert type(ours.get_base_model().model.layers[0].self_attn.q_proj.view).__module__ == "peftkit_bnb.views"
    assert_close(logits(ours), expected)


@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_peftkit_adapter_trained_on_quantized_base_loads_in_peft(
    checkpoint: Path, tmp_path: Path, quant: str
) -> None:
    import peft

    ours = peftkit_lora(peftkit.prepare_model_for_kbit_training(load(checkpoint, quant), False))
    train(ours)
    assert effect_of_adapter(ours) > 1e-2
    ours.save_pretrained(tmp_path)

    theirs = peft.PeftModel.from_pretrained(load(checkpoint, quant), tmp_path)
    assert_close(logits(theirs), logits(ours))


def test_adapter_from_4bit_base_loads_on_full_precision_base_in_both_libraries(
    checkpoint: Path, tmp_path: Path
) -> None:
    import peft

    quantized = peftkit_lora(load(checkpoint, "nf4"))
    train(quantized)
    quantized.save_pretrained(tmp_path / "ours")
    theirs_quantized = peft_lora(load(checkpoint, "nf4"))
    train(theirs_quantized)
    theirs_quantized.save_pretrained(tmp_path / "theirs")

    for folder in ("ours", "theirs"):
        ours = peftkit.PeftModel.from_pretrained(load(checkpoint, None), tmp_path / folder)
        theirs = peft.PeftModel.from_pretrained(load(checkpoint, None), tmp_path / folder)
        assert effect_of_adapter(ours) > 1e-2
        assert_close(logits(ours), logits(theirs))

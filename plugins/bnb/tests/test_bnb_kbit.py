"""peftkit.prepare_model_for_kbit_training on tiny 4-bit and 8-bit Llamas loaded in bfloat16."""

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

    kwargs: dict[str, Any] = {"dtype": torch.bfloat16}
    if quant is not None:
        kwargs["device_map"] = "cpu"
        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True)
            if quant == "int8"
            else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)
        )
    return LlamaForCausalLM.from_pretrained(path, **kwargs)


def storage(model: nn.Module) -> dict[str, tuple[torch.dtype, type]]:
    return {n: (p.dtype, type(p)) for n, p in model.named_parameters()}


@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_prepares_a_quantized_model_and_training_flows_through_checkpointing(
    checkpoint: Path, quant: str
) -> None:
    model = load(checkpoint, quant)
    before = storage(model)
    assert model.model.norm.weight.dtype == torch.bfloat16  # something to upcast

    prepared = peftkit.prepare_model_for_kbit_training(model)
    assert prepared is model
    after = storage(model)
    for name, (dtype, cls) in before.items():
        if cls.__name__ in ("Params4bit", "Int8Params"):
            assert after[name] == (dtype, cls), name  # quantized storage is never touched
        elif dtype in (torch.float16, torch.bfloat16):
            assert after[name][0] == torch.float32, name  # norms, embeddings, head
    assert not any(p.requires_grad for p in model.parameters())
    assert model.model.gradient_checkpointing
    # The frozen embeddings' output carries grad, so checkpointed blocks pass gradients back.
    ids = torch.randint(1, VOCAB, (2, 8), generator=torch.Generator().manual_seed(1))
    assert model.get_input_embeddings()(ids).requires_grad

    peft_model = peftkit.get_peft_model(
        model, peftkit.config("lora", r=4, target_modules=["q_proj", "v_proj"])
    )
    peft_model.train()
    peft_model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert len(grads) == 4 and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_full_precision_model_is_frozen_and_upcast_without_checkpointing(checkpoint: Path) -> None:
    model = load(checkpoint, None)
    peftkit.prepare_model_for_kbit_training(model)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.model.gradient_checkpointing  # as Hugging Face PEFT: only quantized models


def test_model_without_checkpointing_is_refused_and_left_unchanged() -> None:
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(64, 32)
    layer.load_state_dict(nn.Linear(64, 32).state_dict())
    model = nn.Sequential(layer.to("cpu"), nn.LayerNorm(32).to(torch.bfloat16))
    with pytest.raises(ValueError, match="use_gradient_checkpointing=False"):
        peftkit.prepare_model_for_kbit_training(model)
    assert model[1].weight.dtype == torch.bfloat16 and model[1].weight.requires_grad

    peftkit.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    assert model[1].weight.dtype == torch.float32 and not model[1].weight.requires_grad
    assert model[0].weight.dtype == torch.uint8

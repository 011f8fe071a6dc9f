"""Tiny, randomly initialised transformers models and inputs for cross-package tests.

Every builder seeds torch itself, so calling it twice gives two identical, independent copies
(one for peftkit, one for the Hugging Face ``peft`` oracle). Models are in eval mode so dropout
never makes two forwards differ. Nothing is downloaded: each model is built from a config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

VOCAB = 96
HIDDEN = 32
SEED = 0


def _seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build().eval()


def tiny_llama(seed: int = SEED) -> nn.Module:
    """A 2-layer ``LlamaForCausalLM`` with hidden size 32 and grouped-query attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return _seeded(lambda: LlamaForCausalLM(config), seed)


def tiny_gpt2(seed: int = SEED) -> nn.Module:
    """A 2-layer ``GPT2LMHeadModel``: its attention and MLP are transformers ``Conv1D`` layers."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2
    )
    return _seeded(lambda: GPT2LMHeadModel(config), seed)


def tiny_opt(seed: int = SEED) -> nn.Module:
    """A 2-layer ``OPTForCausalLM`` with hidden size 32."""
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        word_embed_proj_dim=HIDDEN,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
    )
    return _seeded(lambda: OPTForCausalLM(config), seed)


def tiny_bert_seq_cls(seed: int = SEED, num_labels: int = 3) -> nn.Module:
    """A 2-layer ``BertForSequenceClassification`` whose head is called ``classifier``."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    return _seeded(lambda: BertForSequenceClassification(config), seed)


def tiny_t5(seed: int = SEED) -> nn.Module:
    """A 2+2-layer ``T5ForConditionalGeneration`` with d_model 32 (attention layers ``q``/``k``/``v``/``o``)."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=VOCAB,
        d_model=HIDDEN,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
    )
    return _seeded(lambda: T5ForConditionalGeneration(config), seed)


class MLP(nn.Module):
    """``Linear(10, 20) -> relu -> Linear(20, 2)`` with weights seeded on construction (input ``(batch, 10)``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin0 = nn.Linear(10, 20)
        self.lin1 = nn.Linear(20, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin1(torch.relu(self.lin0(x)))


class TinyConvNet(nn.Module):
    """A plain PyTorch model with a ``Conv2d`` (image path) and a ``Conv1d`` (sequence path).

    Input: a dict-free tensor of shape ``(batch, 3, 8, 8)``; the 1-d path reads its rows.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv2d = nn.Conv2d(3, 8, kernel_size=3, padding=1)
        self.conv1d = nn.Conv1d(8, 6, kernel_size=3, padding=1, stride=2)
        self.head = nn.Linear(6 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2d(x))  # (b, 8, 8, 8)
        h = h.mean(dim=2)  # (b, 8, 8): channels x length for the 1-d conv
        h = torch.relu(self.conv1d(h))  # (b, 6, 4)
        return self.head(h.flatten(1))


def tiny_convnet(seed: int = SEED) -> nn.Module:
    """A :class:`TinyConvNet` with seeded random weights."""
    return _seeded(TinyConvNet, seed)


class TinyGroupedConvNet(nn.Module):
    """Two grouped ``Conv2d`` layers (``groups=2`` and ``groups=4``) and a linear head.

    Input: images of shape ``(batch, 4, 6, 6)``, from :func:`grouped_conv_inputs`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(4, 8, kernel_size=3, padding=1, groups=2)
        self.conv_b = nn.Conv2d(8, 8, kernel_size=3, padding=1, groups=4)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv_b(torch.relu(self.conv_a(x))))
        return self.head(h.mean(dim=(2, 3)))


def tiny_grouped_convnet(seed: int = SEED) -> nn.Module:
    """A :class:`TinyGroupedConvNet` with seeded random weights."""
    return _seeded(TinyGroupedConvNet, seed)


def grouped_conv_inputs(batch: int = 2, seed: int = 1) -> torch.Tensor:
    """Images for :class:`TinyGroupedConvNet`."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 6, 6, generator=gen)


def text_inputs(batch: int = 2, length: int = 7, seed: int = 1) -> dict[str, torch.Tensor]:
    """Token ids and a padding mask (last position of the second row masked) for a text model."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, length), generator=gen)
    mask = torch.ones_like(ids)
    if batch > 1:
        mask[1, -1] = 0
    return {"input_ids": ids, "attention_mask": mask}


def seq2seq_inputs(batch: int = 2, length: int = 7, seed: int = 1) -> dict[str, torch.Tensor]:
    """Encoder inputs plus decoder input ids for an encoder-decoder model."""
    inputs = text_inputs(batch, length, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    inputs["decoder_input_ids"] = torch.randint(1, VOCAB, (batch, 5), generator=gen)
    return inputs


def conv_inputs(batch: int = 2, seed: int = 1) -> torch.Tensor:
    """Images for :class:`TinyConvNet`."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 8, 8, generator=gen)


def run(model: nn.Module, inputs: Any) -> torch.Tensor:
    """The logits (or plain output) of ``model`` on ``inputs``, without gradients."""
    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return out.logits if hasattr(out, "logits") else out


MODELS: dict[str, tuple[Callable[..., nn.Module], Callable[..., Any]]] = {
    "llama": (tiny_llama, text_inputs),
    "gpt2": (tiny_gpt2, text_inputs),
    "opt": (tiny_opt, text_inputs),
    "bert": (tiny_bert_seq_cls, text_inputs),
    "t5": (tiny_t5, seq2seq_inputs),
}

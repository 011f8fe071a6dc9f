"""The conformance suite's tiny models and their inputs; module names are part of the suite's contract.

* ``"mlp"``: ``lin0`` Linear(16, 32), ``relu``, ``lin1`` Linear(32, 32), ``lin2`` Linear(32, 8);
  input float ``(4, 16)``.
* ``"emb_conv1d"``: ``emb`` Embedding(64, 32), ``conv1d`` transformers ``Conv1D(nf=48, nx=32)``
  (32 in, 48 out: non-square, so a method that mixes up GPT-2's transposed layout fails), ``lin``
  Linear(48, 8); input token ids ``(4, 6)``.
* ``"conv1d"`` / ``"conv2d"`` / ``"conv3d"``: ``conv`` Conv1d(4, 8, 3) / Conv2d(3, 8, 3) /
  Conv3d(2, 4, 3), then ``lin`` Linear(flattened, 8); inputs ``(4, 4, 12)``, ``(4, 3, 10, 10)``,
  ``(4, 2, 6, 6, 6)``.
* ``"llama_like"``: Llama's module names and layout in miniature, with ``config.model_type == "llama"``
  so that methods' default targets fill in: ``model.embed_tokens`` Embedding(32, 128), one block
  ``model.layers.0`` with ``self_attn.{q,k,v,o}_proj`` (128->128, 128->64, 128->64, 128->128: 4
  query heads, 2 key/value heads of 32) and ``mlp.{gate,up,down}_proj`` (128->256, 128->256,
  256->128), every projection with a bias (Llama's ``attention_bias`` / ``mlp_bias``), ``model.norm``,
  ``lm_head`` Linear(128, 32) without bias; input token ids ``(4, 6)``, output logits.
  Big enough for the methods' default settings (SHiRA's r=32, MiSS's r=64, OFT's 32-wide blocks).

Every bias is drawn at random when the model is built (transformers' ``Conv1D`` starts its bias
at zero, which would hide a method that merges biases wrongly).
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import torch
from torch import nn

_LLAMA_VOCAB = 32

__all__ = ["MODEL_NAMES", "make_inputs", "make_model"]


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(16, 32)
        self.relu = nn.ReLU()
        self.lin1 = nn.Linear(32, 32)
        self.lin2 = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.relu(self.lin1(self.relu(self.lin0(x)))))


class EmbConv1D(nn.Module):
    """An embedding followed by GPT-2's transposed-weight ``Conv1D``: the layer kinds of a GPT-2 block."""

    def __init__(self) -> None:
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.emb = nn.Embedding(64, 32)
        self.conv1d = Conv1D(nf=48, nx=32)
        self.relu = nn.ReLU()
        self.lin = nn.Linear(48, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.relu(self.conv1d(self.emb(x))))


class ConvNet(nn.Module):
    """One convolution (``conv``) then a linear head (``lin``) over the flattened feature map."""

    def __init__(self, conv: nn.Module, flat_features: int) -> None:
        super().__init__()
        self.conv = conv
        self.relu = nn.ReLU()
        self.lin = nn.Linear(flat_features, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.relu(self.conv(x)).flatten(1))


class _Attention(nn.Module):
    """Causal self-attention with grouped key/value heads, named like Llama's ``self_attn``."""

    def __init__(self, hidden: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, hidden // heads
        self.q_proj = nn.Linear(hidden, heads * self.head_dim)
        self.k_proj = nn.Linear(hidden, kv_heads * self.head_dim)
        self.v_proj = nn.Linear(hidden, kv_heads * self.head_dim)
        self.o_proj = nn.Linear(heads * self.head_dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape

        def split(t: torch.Tensor, heads: int) -> torch.Tensor:
            return t.view(batch, length, heads, self.head_dim).transpose(1, 2)

        repeat = self.heads // self.kv_heads
        q = split(self.q_proj(x), self.heads)
        k = split(self.k_proj(x), self.kv_heads).repeat_interleave(repeat, dim=1)
        v = split(self.v_proj(x), self.kv_heads).repeat_interleave(repeat, dim=1)
        out = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class _MLP(nn.Module):
    """Llama's gated feed-forward: ``down_proj(silu(gate_proj(x)) * up_proj(x))``."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate)
        self.up_proj = nn.Linear(hidden, intermediate)
        self.down_proj = nn.Linear(intermediate, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class _Block(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.input_layernorm = nn.RMSNorm(hidden)
        self.self_attn = _Attention(hidden, heads=4, kv_heads=2)
        self.post_attention_layernorm = nn.RMSNorm(hidden)
        self.mlp = _MLP(hidden, intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaLike(nn.Module):
    """A one-block decoder with Llama's module paths and a transformers-like ``config.model_type``.

    Not transformers' ``LlamaForCausalLM`` (no cache, no rotary embedding, logits as a plain tensor),
    but the same names in the same places, which is all a method's default targets look at.
    """

    def __init__(self, hidden: int = 128, intermediate: int = 256, vocab: int = _LLAMA_VOCAB) -> None:
        super().__init__()
        self.config = SimpleNamespace(
            model_type="llama",
            hidden_size=hidden,
            intermediate_size=intermediate,
            vocab_size=vocab,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(vocab, hidden)
        self.model.layers = nn.ModuleList([_Block(hidden, intermediate)])
        self.model.norm = nn.RMSNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        inner = cast(Any, self.model)  # a plain nn.Module holding the Llama-named children
        h = inner.embed_tokens(input_ids)
        for layer in inner.layers:
            h = layer(h)
        return cast(torch.Tensor, self.lm_head(inner.norm(h)))


def _random_biases(model: nn.Module) -> nn.Module:
    """Draw every bias at random, so that a bias a method merges wrongly changes the outputs."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.rsplit(".", 1)[-1] == "bias":
                param.uniform_(-0.5, 0.5)
    return model


# name -> (model factory, input shape or None for token ids)
_MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...] | None]] = {
    "mlp": (MLP, (4, 16)),
    "emb_conv1d": (EmbConv1D, None),
    "conv1d": (lambda: ConvNet(nn.Conv1d(4, 8, 3), 8 * 10), (4, 4, 12)),
    "conv2d": (lambda: ConvNet(nn.Conv2d(3, 8, 3), 8 * 8 * 8), (4, 3, 10, 10)),
    "conv3d": (lambda: ConvNet(nn.Conv3d(2, 4, 3), 4 * 4 * 4 * 4), (4, 2, 6, 6, 6)),
    "llama_like": (LlamaLike, None),
}
MODEL_NAMES = tuple(_MODELS)
_VOCABS = {"emb_conv1d": 64, "llama_like": _LLAMA_VOCAB}
_TOKENS_SHAPE = (4, 6)


def _lookup(name: str) -> tuple[Callable[[], nn.Module], tuple[int, ...] | None]:
    if name not in _MODELS:
        raise ValueError(f"unknown conformance model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return _MODELS[name]


def make_model(name: str, seed: int = 0) -> nn.Module:
    """A fresh tiny model ``name`` in eval mode; the same ``seed`` always gives the same weights."""
    factory, _ = _lookup(name)
    # fork_rng keeps the caller's global RNG stream untouched by model construction.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _random_biases(factory())
    return model.eval()


def make_inputs(name: str, seed: int = 0) -> torch.Tensor:
    """The input batch for model ``name``: float features, or token ids for ``"emb_conv1d"`` and ``"llama_like"``."""
    _, shape = _lookup(name)
    generator = torch.Generator().manual_seed(seed)
    if shape is None:
        return torch.randint(0, _VOCABS[name], _TOKENS_SHAPE, generator=generator)
    return torch.randn(shape, generator=generator)

"""The prompt encoders: small modules whose ``table()`` is the virtual-token table the model consumes.

Each encoder keeps its learned rows in ``embedding`` (an ``nn.Embedding``). When the saved table is
the encoder's *output* (p-tuning, projected prefix tuning), a loaded adapter holds only that table
in ``embedding`` and ``frozen`` is set: it can be used, not trained further.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class PromptEncoderBase(nn.Module):
    """``embedding`` rows, optionally passed through ``head``; ``table()`` is the result."""

    def __init__(self, rows: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(rows, dim)
        self.frozen = False

    @property
    def saves_own_weight(self) -> bool:
        """True when the on-disk table is ``embedding.weight`` itself (so it can be loaded and trained on)."""
        return self.frozen or not self.has_head

    @property
    def has_head(self) -> bool:
        return False

    def table(self) -> torch.Tensor:
        """The virtual-token table: ``(rows, dim)``."""
        return self.embedding.weight


class PromptEmbedding(PromptEncoderBase):
    """Prompt tuning: the table is ``embedding.weight``, ``(num_virtual_tokens * submodules, token_dim)``."""

    def __init__(self, config: Any, word_embeddings: nn.Embedding, tokenizer: Any = None) -> None:
        rows = config.num_virtual_tokens * config.num_transformer_submodules
        super().__init__(rows, config.token_dim)
        if config.inference_mode or config.prompt_tuning_init == "RANDOM":
            return  # a loaded adapter overwrites the table anyway
        if config.prompt_tuning_init == "SAMPLE_VOCAB":
            ids = torch.randint(0, word_embeddings.num_embeddings, (rows,))
        else:
            ids = torch.tensor(_text_token_ids(config, rows, tokenizer))
        with torch.no_grad():
            init = word_embeddings(ids.to(word_embeddings.weight.device)).detach().float().clone()
        self.embedding.weight = nn.Parameter(init)


def _text_token_ids(config: Any, rows: int, tokenizer: Any) -> list[int]:
    """The init text's token ids, repeated or cut to exactly ``rows``."""
    if tokenizer is None:
        from transformers import AutoTokenizer

        kwargs = dict(config.tokenizer_kwargs or {})
        kwargs.pop("trust_remote_code", None)  # never run code from a tokenizer repo to initialise a prompt
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_name_or_path, **kwargs)
    ids = list(tokenizer(config.prompt_tuning_init_text)["input_ids"])
    if not ids:
        raise ValueError("prompt_tuning_init_text tokenizes to no tokens; give a non-empty text")
    return (ids * math.ceil(rows / len(ids)))[:rows]


class PrefixEncoder(PromptEncoderBase):
    """Prefix tuning: a ``(num_virtual_tokens, num_layers * 2 * token_dim)`` table of keys and values.

    With ``prefix_projection`` the table is ``transform(embedding.weight)``; ``transform`` is
    ``Linear(token_dim, encoder_hidden_size) -> Tanh -> Linear(encoder_hidden_size, num_layers * 2 * token_dim)``.
    """

    def __init__(self, config: Any) -> None:
        out = config.num_layers * 2 * config.token_dim
        project = config.prefix_projection and not config.inference_mode
        super().__init__(config.num_virtual_tokens, config.token_dim if project else out)
        self.frozen = config.prefix_projection and config.inference_mode
        self.transform = None
        if project:
            self.transform = nn.Sequential(
                nn.Linear(config.token_dim, config.encoder_hidden_size),
                nn.Tanh(),
                nn.Linear(config.encoder_hidden_size, out),
            )
        if config.init_weights == "zero":
            last = self.transform[-1] if self.transform is not None else self.embedding
            for param in last.parameters():
                nn.init.zeros_(param)

    @property
    def has_head(self) -> bool:
        return self.transform is not None

    def table(self) -> torch.Tensor:
        return self.embedding.weight if self.transform is None else self.transform(self.embedding.weight)


class PTuningEncoder(PromptEncoderBase):
    """P-tuning: ``embedding.weight`` reparameterized by an MLP or a bidirectional LSTM plus MLP (see the config)."""

    def __init__(self, config: Any) -> None:
        rows = config.num_virtual_tokens * config.num_transformer_submodules
        super().__init__(rows, config.token_dim)
        self.kind = config.encoder_reparameterization_type
        self.frozen = bool(config.inference_mode)
        self.lstm_head = None
        self.mlp_head = None
        if self.frozen:
            return
        dim, hidden = config.token_dim, config.encoder_hidden_size
        if self.kind == "LSTM":
            self.lstm_head = nn.LSTM(
                input_size=dim,
                hidden_size=hidden,
                num_layers=config.encoder_num_layers,
                dropout=config.encoder_dropout,
                bidirectional=True,
                batch_first=True,
            )
            self.mlp_head = nn.Sequential(
                nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, dim)
            )
        else:
            self.mlp_head = nn.Sequential(
                nn.Linear(dim, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Linear(hidden, dim),
            )

    @property
    def has_head(self) -> bool:
        return self.mlp_head is not None

    def table(self) -> torch.Tensor:
        if self.mlp_head is None:
            return self.embedding.weight
        rows = self.embedding.weight
        if self.lstm_head is not None:
            rows = self.lstm_head(rows.unsqueeze(0))[0][0]
        return self.mlp_head(rows)

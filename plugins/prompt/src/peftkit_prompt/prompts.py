"""What the virtual tokens become at forward time: input embeddings, or a key/value cache of prefixes."""

from __future__ import annotations

from typing import Any

import torch

from peftkit_prompt.config import PrefixTuningConfig, PromptLearningConfig
from peftkit_prompt.setup import encoder_for


def active(peft_model: Any) -> tuple[str, PromptLearningConfig]:
    """The one active adapter and its config (prompt adapters cannot be stacked)."""
    if len(peft_model.active_adapters) != 1:
        raise ValueError(
            f"prompt learning runs one adapter at a time; active: {peft_model.active_adapters}. "
            "Call model.set_adapter(name) with a single name"
        )
    name = peft_model.active_adapter
    return name, peft_model.peft_config[name]


def is_prefix(config: PromptLearningConfig) -> bool:
    return isinstance(config, PrefixTuningConfig)


def prompt_embeddings(peft_model: Any, batch_size: int, dtype: torch.dtype) -> torch.Tensor:
    """The virtual-token embeddings, ``(batch, rows, token_dim)``; rows cover every transformer submodule."""
    name, _ = active(peft_model)
    table = encoder_for(peft_model, name).table()
    return table.unsqueeze(0).expand(batch_size, -1, -1).to(dtype)


def prefix_cache(peft_model: Any, batch_size: int) -> Any:
    """A transformers cache already holding every layer's key/value prefix.

    The table ``(num_virtual_tokens, num_layers * 2 * token_dim)`` is viewed as
    ``(layers, 2, kv_heads, tokens, head_dim)``; an encoder-decoder model gets the prefixes in its
    decoder self-attention cache and an empty cross-attention cache (the encoder gets none).
    """
    from transformers import DynamicCache, EncoderDecoderCache

    name, config = active(peft_model)
    table = encoder_for(peft_model, name).table()
    dtype = _model_dtype(peft_model.get_base_model())
    if dtype is not None:
        table = table.to(dtype)
    tokens, num_layers, heads, dim = (
        config.num_virtual_tokens,
        config.num_layers,
        config.num_attention_heads,
        config.token_dim,
    )
    # prepare_config fills these from the model's config before an adapter is built.
    assert tokens is not None and num_layers is not None and heads is not None and dim is not None
    kv = table.view(tokens, num_layers, 2, heads, dim // heads)
    kv = kv.permute(1, 2, 3, 0, 4)  # (layers, key/value, heads, tokens, head_dim)
    slots = list(range(num_layers))
    if config.num_transformer_submodules == 2:
        # Hugging Face PEFT lays the table out as (self, cross) pairs over a doubled layer list and then
        # drops the cross part, so decoder layer i reads slot 2i mod num_layers; its adapters rely on that.
        slots = [(2 * i) % num_layers for i in slots]
    layers = [tuple(kv[s, j].unsqueeze(0).repeat(batch_size, 1, 1, 1) for j in range(2)) for s in slots]
    if config.num_transformer_submodules == 2:
        return EncoderDecoderCache(DynamicCache(layers), DynamicCache())
    return DynamicCache(layers)


def _model_dtype(model: Any) -> torch.dtype | None:
    dtype = getattr(model, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else None


def ones_before(mask: torch.Tensor, count: int, value: int = 1) -> torch.Tensor:
    """``mask`` with ``count`` entries of ``value`` (default 1: virtual tokens are always attended to) in front."""
    pad = torch.full((*mask.shape[:-1], count), value, dtype=mask.dtype, device=mask.device)
    return torch.cat((pad, mask), dim=-1)

"""``PeftModel.forward`` for prompt learning, per task: virtual tokens in front of the inputs or in the KV cache."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from peftkit_prompt.cache_names import cache_keyword
from peftkit_prompt.prompts import active, is_prefix, ones_before, prefix_cache, prompt_embeddings
from peftkit_prompt.setup import check_no_gradient_checkpointing, word_embeddings


def forward(peft_model: Any, input_ids: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> Any:
    """Run the wrapped model with adapter's virtual tokens added, by ``task_type``."""
    if args:
        raise TypeError(
            "prompt-learning models take only input_ids positionally; pass the other inputs by name"
        )
    if kwargs.pop("adapter_names", None) is not None:
        raise ValueError("adapter_names (per-sample adapters) is not supported by prompt learning")
    _, config = active(peft_model)
    if (input_ids is None) == (kwargs.get("inputs_embeds") is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    kwargs.pop("task_ids", None)  # multitask prompt tuning's argument; single-task here
    if config.task_type == "SEQ_2_SEQ_LM":
        return _seq2seq(peft_model, config, input_ids, kwargs)
    return _decoder_or_encoder(peft_model, config, input_ids, kwargs)


def batch_size(input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> int:
    given = input_ids if input_ids is not None else inputs_embeds
    if given is None:
        raise ValueError("pass input_ids or inputs_embeds")
    return int(given.shape[0])


def _decoder_or_encoder(peft_model: Any, config: Any, input_ids: Any, kwargs: dict[str, Any]) -> Any:
    """Causal LM, sequence and token classification: one stack sees the virtual tokens first."""
    base = peft_model.get_base_model()
    n = config.num_virtual_tokens
    batch = batch_size(input_ids, kwargs.get("inputs_embeds"))
    if kwargs.get("attention_mask") is not None:
        kwargs["attention_mask"] = ones_before(kwargs["attention_mask"], n)
    if is_prefix(config):
        check_no_gradient_checkpointing(base)
        if kwargs.get("position_ids") is not None:  # the prefixes take positions 0..n-1
            kwargs["position_ids"] = kwargs["position_ids"] + n
        if config.task_type == "CAUSAL_LM":
            _drop(kwargs, "token_type_ids")
        cache = prefix_cache(peft_model, batch)
        with _cache_into(base, cache, kwargs):
            return base(input_ids=input_ids, **kwargs)
    _drop(kwargs, "position_ids")
    if config.task_type == "CAUSAL_LM":
        _drop(kwargs, "token_type_ids")
    elif kwargs.get("token_type_ids") is not None:
        kwargs["token_type_ids"] = ones_before(kwargs["token_type_ids"], n, value=0)
    if kwargs.get("labels") is not None and config.task_type in ("CAUSAL_LM", "TOKEN_CLS"):
        kwargs["labels"] = _ignored_before(kwargs["labels"], n)
    embeds = kwargs.pop("inputs_embeds", None)
    if embeds is None:
        embeds = word_embeddings(base)(input_ids)
    prompts = prompt_embeddings(peft_model, batch, embeds.dtype)
    return base(inputs_embeds=torch.cat((prompts, embeds), dim=1), **kwargs)


def _seq2seq(peft_model: Any, config: Any, input_ids: Any, kwargs: dict[str, Any]) -> Any:
    """Encoder-decoder: prompt tuning / p-tuning prefix the encoder input; prefix tuning the decoder's self-attention."""
    base = peft_model.get_base_model()
    n = config.num_virtual_tokens
    batch = batch_size(input_ids, kwargs.get("inputs_embeds"))
    _drop(kwargs, "position_ids")
    if is_prefix(config):
        check_no_gradient_checkpointing(base)
        if kwargs.get("decoder_attention_mask") is not None:
            kwargs["decoder_attention_mask"] = ones_before(kwargs["decoder_attention_mask"], n)
        kwargs[_cache_keyword_of(base, base)] = prefix_cache(peft_model, batch)
        return base(input_ids=input_ids, **kwargs)
    if kwargs.get("attention_mask") is not None:
        kwargs["attention_mask"] = ones_before(kwargs["attention_mask"], n)
    embeds = kwargs.pop("inputs_embeds", None)
    if embeds is None:
        embeds = word_embeddings(base)(input_ids)
    prompts = prompt_embeddings(peft_model, batch, embeds.dtype)[:, :n]
    return base(inputs_embeds=torch.cat((prompts, embeds), dim=1), **kwargs)


def _ignored_before(labels: torch.Tensor, count: int) -> torch.Tensor:
    """Labels with ``count`` positions of -100 (no loss on virtual tokens) in front."""
    return ones_before(labels, count, value=-100)


def _drop(kwargs: dict[str, Any], key: str) -> None:
    if kwargs.get(key) is not None:
        warnings.warn(f"{key} is not supported with prompt learning here and is ignored", stacklevel=4)
    kwargs.pop(key, None)


def _cache_keyword_of(model: nn.Module | None, named: nn.Module) -> str:
    """``model``'s cache keyword; the error names ``named``, the model the user passed."""
    keyword = cache_keyword(model.forward) if model is not None else None
    if keyword is None:
        raise ValueError(
            f"{type(named).__name__} takes no key/value cache (past_key_values / cache), which prefix "
            "tuning needs; use prompt tuning or p-tuning"
        )
    return keyword


@contextlib.contextmanager
def _cache_into(model: nn.Module, cache: Any, kwargs: dict[str, Any]) -> Iterator[None]:
    """Give ``cache`` to ``model``: by its cache keyword when its forward takes one, else to its backbone.

    Classification heads (``BertForSequenceClassification``) take no cache; their backbone does, so
    it is handed over by a forward pre-hook and the head, dropout and loss stay the model's own.
    """
    keyword = cache_keyword(model.forward)
    if keyword is not None:
        kwargs[keyword] = cache
        yield
        return
    backbone = getattr(model, "base_model", None)
    if not isinstance(backbone, nn.Module) or backbone is model:
        backbone = None
    inner_keyword = _cache_keyword_of(backbone, model)

    def give_cache(_module: nn.Module, args: Any, inner: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        inner[inner_keyword] = cache
        return args, inner

    assert backbone is not None  # _cache_keyword_of refused a model without one
    handle = backbone.register_forward_pre_hook(give_cache, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()

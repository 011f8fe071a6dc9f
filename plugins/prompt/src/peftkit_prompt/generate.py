"""``PeftModel.generate`` for prompt learning: the virtual tokens are added at the first decoding step only.

Later steps reuse the key/value cache, which already holds them. ``prepare_inputs_for_generation``
of the wrapped model is replaced for the duration of the call (and restored after it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from peftkit_prompt.cache_names import cache_keyword, find_cache
from peftkit_prompt.prompts import active, is_prefix, ones_before, prefix_cache, prompt_embeddings
from peftkit_prompt.setup import check_no_gradient_checkpointing, word_embeddings


def generate(peft_model: Any, *args: Any, **kwargs: Any) -> Any:
    """The wrapped model's ``generate`` with the active adapter's virtual tokens."""
    if kwargs.pop("adapter_names", None) is not None:
        raise ValueError("adapter_names (per-sample adapters) is not supported by prompt learning")
    _, config = active(peft_model)
    base = peft_model.get_base_model()
    if config.task_type not in ("CAUSAL_LM", "SEQ_2_SEQ_LM"):
        raise ValueError(
            f"generate needs a CAUSAL_LM or SEQ_2_SEQ_LM adapter, this one is {config.task_type}"
        )
    if args:
        if "input_ids" in kwargs or len(args) > 1:
            raise TypeError("pass input_ids once, positionally or by name, and the rest by name")
        kwargs["input_ids"] = args[0]
    kwargs.pop("task_ids", None)
    if is_prefix(config):
        check_no_gradient_checkpointing(base)
    if config.task_type == "SEQ_2_SEQ_LM" and not is_prefix(config):
        return _seq2seq_prompted(peft_model, config, base, kwargs)
    step = _causal_step if config.task_type == "CAUSAL_LM" else _seq2seq_prefix_step
    with _patched_prepare(base, lambda original: step(peft_model, config, original)):
        return base.generate(**kwargs)


def _seq2seq_prompted(peft_model: Any, config: Any, base: Any, kwargs: dict[str, Any]) -> Any:
    """Prompt tuning / p-tuning on an encoder-decoder: the encoder input is prefixed once, before generating."""
    input_ids = kwargs.pop("input_ids", None)
    if input_ids is None:
        raise ValueError("generate with prompt learning needs input_ids")
    kwargs.pop("encoder_outputs", None)  # the encoder must see the virtual tokens: it is run again
    embeds = word_embeddings(base)(input_ids)
    prompts = prompt_embeddings(peft_model, embeds.shape[0], embeds.dtype)[:, : config.num_virtual_tokens]
    kwargs["inputs_embeds"] = torch.cat((prompts, embeds), dim=1)
    if kwargs.get("attention_mask") is not None:
        kwargs["attention_mask"] = ones_before(kwargs["attention_mask"], config.num_virtual_tokens)
    return base.generate(**kwargs)


@contextlib.contextmanager
def _patched_prepare(base: Any, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Iterator[None]:
    had_own = "prepare_inputs_for_generation" in base.__dict__
    original = base.prepare_inputs_for_generation
    base.prepare_inputs_for_generation = make(original)
    try:
        yield
    finally:
        if had_own:
            base.prepare_inputs_for_generation = original
        else:
            del base.prepare_inputs_for_generation


def _empty(cache: Any) -> bool:
    return cache is None or (hasattr(cache, "get_seq_length") and cache.get_seq_length() == 0)


def _cache_slot(base: Any, inputs: dict[str, Any]) -> tuple[str, Any]:
    """Where this step's inputs hold the cache: the name the model uses, and the cache (None if absent)."""
    name, cache = find_cache(inputs)
    return name or cache_keyword(base.forward) or "past_key_values", cache


def _causal_step(peft_model: Any, config: Any, original: Callable[..., Any]) -> Callable[..., Any]:
    n = config.num_virtual_tokens
    base = peft_model.get_base_model()

    def prepare(*args: Any, **kwargs: Any) -> dict[str, Any]:
        inputs = original(*args, **kwargs)
        mask = inputs.get("attention_mask")
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
                raise ValueError(
                    "prompt learning generates with a 2D attention mask and a dynamic cache only"
                )
            inputs["attention_mask"] = ones_before(mask, n)
        inputs.pop("token_type_ids", None)
        slot, cache = _cache_slot(base, inputs)
        first = _empty(cache)
        if is_prefix(config):
            if inputs.get("position_ids") is not None:
                inputs["position_ids"] = inputs["position_ids"] + n
            if first:
                batch = (
                    inputs.get("input_ids")
                    if inputs.get("input_ids") is not None
                    else inputs["inputs_embeds"]
                ).shape[0]
                inputs[slot] = prefix_cache(peft_model, batch)
            return inputs
        # The model numbers positions itself, counting the virtual tokens (as in training).
        inputs.pop("position_ids", None)
        if first:
            embeds = inputs.pop("inputs_embeds", None)
            if embeds is None:
                embeds = word_embeddings(base)(inputs["input_ids"])
            prompts = prompt_embeddings(peft_model, embeds.shape[0], embeds.dtype)
            inputs["inputs_embeds"] = torch.cat((prompts, embeds), dim=1)
            inputs["input_ids"] = None
        return inputs

    return prepare


def _seq2seq_prefix_step(peft_model: Any, config: Any, original: Callable[..., Any]) -> Callable[..., Any]:
    base = peft_model.get_base_model()

    def prepare(*args: Any, **kwargs: Any) -> dict[str, Any]:
        inputs = original(*args, **kwargs)
        slot, cache = _cache_slot(base, inputs)
        if kwargs.get("is_first_iteration") or _empty(cache):
            inputs[slot] = prefix_cache(peft_model, inputs["decoder_input_ids"].shape[0])
        return inputs

    return prepare

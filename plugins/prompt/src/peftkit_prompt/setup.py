"""The hooks the core calls when adding, saving and loading a prompt-learning adapter."""

from __future__ import annotations

from typing import Any

from torch import nn

from peftkit import ConfigError
from peftkit_prompt.config import (
    SUPPORTED_TASKS,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptLearningConfig,
)
from peftkit_prompt.encoders import PrefixEncoder, PromptEmbedding, PromptEncoderBase, PTuningEncoder

HOLDER = "prompt_encoder"
DISK_KEY = "prompt_embeddings"
_MODEL_PREFIX, _PROMPT_PREFIX = "base_model.model.", "base_model."


def _model_config(peft_model: Any) -> Any:
    config = getattr(peft_model.get_base_model(), "config", None)
    if config is None:
        raise ConfigError(
            "prompt learning reads sizes from a transformers model's config; this model has none: set token_dim, "
            "num_layers and num_attention_heads in the adapter config"
        )
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _first(config: Any, names: tuple[str, ...], field: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise ConfigError(
        f"cannot read {field} from the model's config ({', '.join(names)}); set {field} in the config"
    )


def prepare_config(peft_model: Any, config: PromptLearningConfig) -> PromptLearningConfig:
    """Fill the sizes left ``None`` from the model's config, as they will be saved."""
    if config.task_type not in SUPPORTED_TASKS:
        raise ConfigError(
            f"prompt learning needs task_type set to one of {', '.join(SUPPORTED_TASKS)} (it decides how virtual "
            f"tokens reach the model); got {config.task_type!r}"
        )
    needs_model = None in (config.num_layers, config.token_dim, config.num_attention_heads)
    model_config = (
        _model_config(peft_model) if needs_model or isinstance(config, PrefixTuningConfig) else None
    )
    changes: dict[str, Any] = {}
    if config.num_layers is None:
        changes["num_layers"] = _first(
            model_config, ("num_hidden_layers", "num_layers", "n_layer"), "num_layers"
        )
    token_dim = config.token_dim
    if token_dim is None:
        token_dim = _first(model_config, ("hidden_size", "n_embd", "d_model"), "token_dim")
    heads = config.num_attention_heads
    if heads is None:
        heads = _first(
            model_config,
            ("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads"),
            "num_attention_heads",
        )
    kv_heads = getattr(model_config, "num_key_value_heads", None) if model_config is not None else None
    if isinstance(config, PrefixTuningConfig) and kv_heads is not None:
        # Grouped-query attention caches fewer key/value heads than it has query heads.
        head_dim = getattr(model_config, "head_dim", None) or token_dim // heads
        token_dim, heads = head_dim * kv_heads, kv_heads
    changes.update(token_dim=token_dim, num_attention_heads=heads)
    if config.num_transformer_submodules is None:
        changes["num_transformer_submodules"] = 2 if config.task_type == "SEQ_2_SEQ_LM" else 1
    if isinstance(config, (PrefixTuningConfig, PromptEncoderConfig)) and config.encoder_hidden_size is None:
        changes["encoder_hidden_size"] = token_dim
    return config.replace(**changes)


def create_adapter(peft_model: Any, name: str, config: PromptLearningConfig) -> None:
    """Build adapter ``name``'s prompt encoder on the model, on the device of the word embeddings."""
    base = peft_model.get_base_model()
    if isinstance(config, PrefixTuningConfig):
        check_no_gradient_checkpointing(base)
        encoder: PromptEncoderBase = PrefixEncoder(config)
    elif isinstance(config, PromptEncoderConfig):
        encoder = PTuningEncoder(config)
    else:
        encoder = PromptEmbedding(config, word_embeddings(base))
    holder = getattr(peft_model.base_model, HOLDER, None)
    if holder is None:
        holder = nn.ModuleDict()
        peft_model.base_model.add_module(HOLDER, holder)
    device = word_embeddings(base).weight.device
    holder[name] = encoder.to(device if device.type != "meta" else "cpu")


def check_no_gradient_checkpointing(model: nn.Module) -> None:
    """Prefix tuning feeds its prefixes through the KV cache, which gradient checkpointing turns off."""
    if any(getattr(m, "gradient_checkpointing", False) for m in model.modules()):
        raise ConfigError(
            "prefix tuning does not work with gradient checkpointing (its prefixes go through the key/value cache, "
            "which checkpointing disables): call model.gradient_checkpointing_disable(), or use prompt tuning"
        )


def word_embeddings(model: nn.Module) -> nn.Embedding:
    """The model's input token embedding layer."""
    getter = getattr(model, "get_input_embeddings", None)
    layer = getter() if getter is not None else None
    if not isinstance(layer, nn.Embedding):
        raise ConfigError(
            f"{type(model).__name__} has no input embedding layer (get_input_embeddings); prompt learning needs a "
            "transformers model that embeds token ids"
        )
    return layer


def encoder_for(peft_model: Any, name: str) -> PromptEncoderBase:
    return getattr(peft_model.base_model, HOLDER)[name]


def state_slots(peft_model: Any, name: str, slots: dict[str, Any], for_load: bool) -> dict[str, Any]:
    """On disk as Hugging Face PEFT: the table as ``prompt_embeddings``, other tensors (a classifier head)
    as ``base_model.<path>`` (its prompt-learning models hold the transformers model directly)."""
    out = {
        (_PROMPT_PREFIX + key[len(_MODEL_PREFIX) :] if key.startswith(_MODEL_PREFIX) else key): slot
        for key, slot in slots.items()
    }
    encoder = encoder_for(peft_model, name)
    if encoder.saves_own_weight:
        out[DISK_KEY] = (encoder, "embedding.weight", encoder.embedding.weight)
    elif for_load:
        method = peft_model.method_for(name).name
        raise ConfigError(
            f"a saved {method} adapter stores its prompt encoder's output table, not the encoder, so it cannot be "
            "trained further: load it with is_trainable=False, or train a new adapter"
        )
    else:
        out[DISK_KEY] = (encoder, DISK_KEY, encoder.table())
    return out

"""Configs of the three prompt-learning methods, with Hugging Face PEFT's field names and defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from peftkit import ConfigError, PeftConfig

SUPPORTED_TASKS = ("CAUSAL_LM", "SEQ_2_SEQ_LM", "SEQ_CLS", "TOKEN_CLS")


@dataclass
class PromptLearningConfig(PeftConfig):
    """Fields shared by prompt tuning, prefix tuning and p-tuning.

    ``num_virtual_tokens`` virtual tokens are learned. ``token_dim`` (hidden size),
    ``num_attention_heads``, ``num_layers`` and ``num_transformer_submodules`` (2 for
    encoder-decoder models, else 1) are read from the model's config when left ``None`` and saved
    filled in. For prefix tuning on grouped-query attention models, ``token_dim`` and
    ``num_attention_heads`` describe the key/value heads (``head_dim * num_key_value_heads``).
    Prompt learning adapts no layers, so of the base fields it has only ``modules_to_save``.
    """

    BASE_FIELDS: ClassVar[frozenset[str]] = frozenset({"modules_to_save"})

    num_virtual_tokens: int | None = None
    token_dim: int | None = None
    num_transformer_submodules: int | None = None
    num_attention_heads: int | None = None
    num_layers: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.num_virtual_tokens, int) or self.num_virtual_tokens < 1:
            raise ConfigError(
                f"{type(self).__name__}: num_virtual_tokens must be a positive int (how many virtual tokens to "
                f"learn), got {self.num_virtual_tokens!r}"
            )
        for name in ("token_dim", "num_transformer_submodules", "num_attention_heads", "num_layers"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(
                    f"{type(self).__name__}: {name} must be a positive int or None, got {value!r}"
                )
        if self.num_transformer_submodules not in (None, 1, 2):
            raise ConfigError(
                "num_transformer_submodules must be 1 (decoder or encoder only) or 2 (encoder-decoder)"
            )


@dataclass
class PromptTuningConfig(PromptLearningConfig):
    """Prompt tuning (Lester et al., 2021): ``num_virtual_tokens`` embeddings prepended to the input.

    ``prompt_tuning_init``: ``"RANDOM"`` (normal init), ``"SAMPLE_VOCAB"`` (embeddings of random
    vocabulary tokens) or ``"TEXT"`` (embeddings of ``prompt_tuning_init_text`` tokenized with
    ``tokenizer_name_or_path``, repeated or cut to length).
    """

    PEFT_TYPE: ClassVar[str] = "PROMPT_TUNING"
    NON_SHAPING_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"prompt_tuning_init", "prompt_tuning_init_text", "tokenizer_name_or_path", "tokenizer_kwargs"}
    )
    INITS: ClassVar[tuple[str, ...]] = ("RANDOM", "SAMPLE_VOCAB", "TEXT")

    prompt_tuning_init: str = "RANDOM"
    prompt_tuning_init_text: str | None = None
    tokenizer_name_or_path: str | None = None
    tokenizer_kwargs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.prompt_tuning_init = str(getattr(self.prompt_tuning_init, "value", self.prompt_tuning_init))
        if self.prompt_tuning_init not in self.INITS:
            raise ConfigError(f"prompt_tuning_init={self.prompt_tuning_init!r} is not one of {self.INITS}")
        if self.prompt_tuning_init == "TEXT" and (
            not self.tokenizer_name_or_path or self.prompt_tuning_init_text is None
        ):
            raise ConfigError(
                "prompt_tuning_init='TEXT' needs prompt_tuning_init_text and tokenizer_name_or_path "
                "(the tokenizer that turns the text into token ids)"
            )
        if self.tokenizer_kwargs and self.prompt_tuning_init != "TEXT":
            raise ConfigError("tokenizer_kwargs is only used with prompt_tuning_init='TEXT'")


@dataclass
class PrefixTuningConfig(PromptLearningConfig):
    """Prefix tuning (Li & Liang, 2021): learned keys and values prepended in every attention layer.

    The table has shape ``(num_virtual_tokens, num_layers * 2 * token_dim)``. With
    ``prefix_projection`` it is produced by ``Linear(token_dim, encoder_hidden_size) -> tanh ->
    Linear(encoder_hidden_size, num_layers * 2 * token_dim)`` from ``num_virtual_tokens`` embeddings.
    ``init_weights="zero"`` starts from all-zero prefixes.
    """

    PEFT_TYPE: ClassVar[str] = "PREFIX_TUNING"
    NON_SHAPING_FIELDS: ClassVar[frozenset[str]] = frozenset({"init_weights"})

    init_weights: str | None = None
    encoder_hidden_size: int | None = None
    prefix_projection: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init_weights not in (None, "zero"):
            raise ConfigError(f"init_weights must be None (random) or 'zero', got {self.init_weights!r}")


@dataclass
class PromptEncoderConfig(PromptLearningConfig):
    """P-tuning (Liu et al., 2021): virtual token embeddings reparameterized by an MLP or a bidirectional LSTM.

    MLP: ``Linear(token_dim, h) -> ReLU -> Linear(h, h) -> ReLU -> Linear(h, token_dim)``; LSTM: a
    ``encoder_num_layers``-layer bidirectional LSTM of hidden size ``h`` followed by
    ``Linear(2h, 2h) -> ReLU -> Linear(2h, token_dim)``, where ``h = encoder_hidden_size``.
    """

    PEFT_TYPE: ClassVar[str] = "P_TUNING"
    NON_SHAPING_FIELDS: ClassVar[frozenset[str]] = frozenset({"encoder_dropout"})
    TYPES: ClassVar[tuple[str, ...]] = ("MLP", "LSTM")

    encoder_reparameterization_type: str = "MLP"
    encoder_hidden_size: int | None = None
    encoder_num_layers: int = 2
    encoder_dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        kind = getattr(self.encoder_reparameterization_type, "value", self.encoder_reparameterization_type)
        self.encoder_reparameterization_type = str(kind)
        if self.encoder_reparameterization_type not in self.TYPES:
            raise ConfigError(
                f"encoder_reparameterization_type={self.encoder_reparameterization_type!r} is not one of {self.TYPES}"
            )

"""The transformers task wrappers, chosen by ``config.task_type``, and ``get_peft_model``."""

from __future__ import annotations

from torch import nn

from peftkit._config import PeftConfig
from peftkit.peft_model import PeftModel


class PeftModelForCausalLM(PeftModel):
    """Causal language models: ``forward`` and ``generate`` pass through."""


class PeftModelForSeq2SeqLM(PeftModel):
    """Encoder-decoder models: ``forward`` and ``generate`` pass through."""


class PeftModelForSequenceClassification(PeftModel):
    """Sequence classification: the ``classifier``/``score`` head is trained and saved with the adapter."""


class PeftModelForTokenClassification(PeftModel):
    """Token classification: ``forward`` passes through."""


class PeftModelForQuestionAnswering(PeftModel):
    """Extractive question answering: ``forward`` passes through."""


class PeftModelForFeatureExtraction(PeftModel):
    """Feature extraction (embeddings): ``forward`` passes through."""


TASK_MODELS: dict[str | None, type[PeftModel]] = {
    None: PeftModel,
    "CAUSAL_LM": PeftModelForCausalLM,
    "SEQ_2_SEQ_LM": PeftModelForSeq2SeqLM,
    "SEQ_CLS": PeftModelForSequenceClassification,
    "TOKEN_CLS": PeftModelForTokenClassification,
    "QUESTION_ANS": PeftModelForQuestionAnswering,
    "FEATURE_EXTRACTION": PeftModelForFeatureExtraction,
}


def model_class_for(config: PeftConfig) -> type[PeftModel]:
    """The wrapper class for the config's ``task_type`` (plain ``PeftModel`` when unset)."""
    return TASK_MODELS[config.task_type]


def get_peft_model(
    model: nn.Module,
    peft_config: PeftConfig,
    adapter_name: str = "default",
    autocast_adapter_dtype: bool = True,
    low_cpu_mem_usage: bool = False,
) -> PeftModel:
    """Wrap ``model`` with a new, trainable adapter described by ``peft_config``."""
    if isinstance(model, PeftModel):
        raise ValueError(
            "this model is already a PeftModel; use model.add_adapter(name, config) to add another adapter"
        )
    return model_class_for(peft_config)(
        model,
        peft_config,
        adapter_name,
        autocast_adapter_dtype=autocast_adapter_dtype,
        low_cpu_mem_usage=low_cpu_mem_usage,
    )

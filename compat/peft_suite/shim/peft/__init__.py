"""``peft`` for PEFT's own test files, answered by peftkit: PEFT's public names mapped onto peftkit's.

Only on ``PYTHONPATH`` while ``compat/peft_suite/run.sh`` runs PEFT's tests; never installed.
Methods peftkit does not implement get placeholder config classes so the test modules import.
"""

from __future__ import annotations

import peftkit
from peft._internal import internal_function, unsupported_method
from peftkit import (
    PeftModel,
    TaskType,
    get_base_model_state_dict,
    get_peft_model,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    prepare_model_for_kbit_training,
    set_base_model_state_dict,
    set_peft_model_state_dict,
)
from peftkit_lora import LoraConfig
from peftkit_miss import MissConfig
from peftkit_oft import OFTConfig
from peftkit_prompt import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig
from peftkit_prompt.config import PromptLearningConfig
from peftkit_shira import ShiraConfig
from peftkit_vera import VeraConfig

PeftWarning = getattr(peftkit, "PeftWarning", UserWarning)
convert_to_lora = internal_function("convert_to_lora")

_NOT_IN_PEFTKIT = (
    "AdaLoraConfig AdamssConfig BOFTConfig BeftConfig C3AConfig CPTConfig DeftConfig DeloraConfig "
    "FourierFTConfig FrodConfig GloraConfig GraloraConfig HRAConfig HiraConfig IA3Config KasaConfig "
    "LNTuningConfig LilyConfig LoHaConfig LoKrConfig MontecloraConfig OSFConfig PeanutConfig "
    "PsoftConfig PveraConfig RandLoraConfig RoadConfig SupertuningConfig TinyLoraConfig "
    "TrainableTokensConfig UniLoraConfig VBLoRAConfig VeloraConfig WaveFTConfig"
).split()
globals().update({name: unsupported_method(name) for name in _NOT_IN_PEFTKIT})

__version__ = "0.21.2"
__all__ = [
    "LoraConfig",
    "MissConfig",
    "OFTConfig",
    "PeftModel",
    "PeftWarning",
    "PrefixTuningConfig",
    "PromptEncoderConfig",
    "PromptLearningConfig",
    "PromptTuningConfig",
    "ShiraConfig",
    "TaskType",
    "VeraConfig",
    "get_base_model_state_dict",
    "get_peft_model",
    "get_peft_model_state_dict",
    "inject_adapter_in_model",
    "prepare_model_for_kbit_training",
    "set_base_model_state_dict",
    "set_peft_model_state_dict",
    *_NOT_IN_PEFTKIT,
]

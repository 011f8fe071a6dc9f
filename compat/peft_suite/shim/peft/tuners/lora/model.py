from peft._internal import internal_mapping

TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING = internal_mapping()

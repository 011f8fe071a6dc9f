"""``peft.tuners.lora``: the LoRA layer class is peftkit_lora's."""

from peftkit_lora.layer import LoraLayer

__all__ = ["LoraLayer"]

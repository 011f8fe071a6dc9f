"""PEFT's adapter-layer base class is peftkit's."""

from peftkit import AdapterLayer as BaseTunerLayer

__all__ = ["BaseTunerLayer"]

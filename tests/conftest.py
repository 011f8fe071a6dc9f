"""Shared setup for the cross-package tests: ``from _models import tiny_llama`` works from any test here."""

from __future__ import annotations

import os
import sys

# The tiny-model builders live in tests/_models.py; make them importable whatever pytest's import mode.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

# Tests never reach the Hugging Face Hub: every model is built from a config.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

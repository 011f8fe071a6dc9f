"""``peft.utils`` names the tests import: the device probe is public, the wrappers are internals."""

from __future__ import annotations

import torch

from peft._internal import internal, internal_function
from peftkit.layer import ModulesToSave

ModulesToSaveWrapper = ModulesToSave
AuxiliaryTrainingWrapper = internal("AuxiliaryTrainingWrapper")
TrainableTokensWrapper = internal("TrainableTokensWrapper")
_get_submodules = internal_function("_get_submodules")


def infer_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"

"""PEFT's optional-dependency probes, answered for this machine."""

from __future__ import annotations

import transformers
from packaging import version


def is_transformers_ge_v5() -> bool:
    return version.parse(transformers.__version__) >= version.parse("5.0.0")


def _absent() -> bool:
    return False


is_aqlm_available = is_eetq_available = is_gptqmodel_available = _absent
is_hqq_available = is_optimum_available = is_torchao_available = _absent

"""``LoraConfig``: the Hugging Face PEFT field names and defaults.

Every field Hugging Face PEFT writes into a LoRA ``adapter_config.json`` exists here, so a saved
peft adapter loads without "unknown key" warnings. Fields for LoRA variants peftkit does not
implement yet are accepted at their default value and refused with a ``ConfigError`` otherwise:
an adapter that needs them would silently compute something else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from peftkit import ConfigError, PeftConfig

# Field -> the feature it switches on, for fields whose non-default value peftkit cannot honour.
UNSUPPORTED_FIELDS = {
    "layer_replication": "layer replication",
    "target_parameters": "LoRA on nn.Parameter targets (target_parameters)",
    "trainable_token_indices": "trainable tokens (trainable_token_indices)",
    "loftq_config": "LoftQ initialisation (loftq_config)",
    "eva_config": "EVA initialisation (eva_config)",
    "corda_config": "CorDA initialisation (corda_config)",
    "lora_ga_config": "LoRA-GA initialisation (lora_ga_config)",
    "use_qalora": "QALoRA (use_qalora=True)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "megatron_config": "Megatron parallel layers (megatron_config)",
    "velora_config": "VeLoRA (velora_config)",
    "monteclora_config": "MonteCLoRA (monteclora_config)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    "arrow_config": "Arrow routing (arrow_config)",
    "kasa_config": "KaSA (kasa_config)",
    "ensure_weight_tying": "tied adapters on tied weights (ensure_weight_tying=True)",
}
INIT_CHOICES = (True, False, "gaussian", "pissa", "pissa_niter_K", "olora")
_PISSA_NITER = re.compile(r"pissa_niter_(\d+)\Z")


@dataclass
class LoraConfig(PeftConfig):
    """LoRA settings.

    ``r`` is the rank and ``lora_alpha / r`` the scaling (``lora_alpha / sqrt(r)`` with
    ``use_rslora``). ``init_lora_weights``: True (A Kaiming-uniform, B zero: identity at start),
    ``"gaussian"`` (A normal with std 1/r, B zero) or False (random, for tests); ``"pissa"``,
    ``"pissa_niter_K"`` (randomised SVD with K subspace iterations) and ``"olora"`` (QR) start the
    adapter from the principal part of the base weight and subtract it from the base weight, so they
    change the base model (see ``save_pretrained(..., path_initial_model_for_weight_conversion=...)``).
    ``use_dora`` turns on DoRA: the update is split into a trained per-output magnitude
    (``lora_magnitude_vector``) and a direction (linear, GPT-2 ``Conv1D`` and convolution layers).
    ``rank_pattern`` / ``alpha_pattern`` map a module-name pattern (regex matched against the
    end of the module path, first match wins) to its own r / alpha. ``lora_bias`` gives
    ``lora_B`` a trainable bias. ``fan_in_fan_out`` is kept for compatibility: the base-layer
    view already knows that GPT-2 ``Conv1D`` stores its weight transposed.
    """

    PEFT_TYPE: ClassVar[str] = "LORA"
    BIAS_EXTRA: ClassVar[tuple[str, ...]] = ("lora_only",)
    # init_lora_weights shapes the loaded model (PiSSA and OLoRA rewrite the base weight), dropout does not.
    NON_SHAPING_FIELDS: ClassVar[frozenset[str]] = frozenset({"lora_dropout"})

    r: int = 8
    lora_alpha: int = 8
    lora_dropout: float = 0.0
    fan_in_fan_out: bool = False
    use_rslora: bool = False
    init_lora_weights: bool | str = True
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, int] = field(default_factory=dict)
    lora_bias: bool = False
    use_dora: bool = False
    # Hugging Face PEFT fields accepted only at these defaults (see UNSUPPORTED_FIELDS).
    layer_replication: list[list[int]] | None = None
    target_parameters: list[str] | None = None
    trainable_token_indices: list[int] | dict[str, list[int]] | None = None
    loftq_config: dict[str, Any] = field(default_factory=dict)
    eva_config: dict[str, Any] | None = None
    corda_config: dict[str, Any] | None = None
    lora_ga_config: dict[str, Any] | None = None
    use_qalora: bool = False
    qalora_group_size: int = 16
    alora_invocation_tokens: list[int] | None = None
    megatron_config: dict[str, Any] | None = None
    megatron_core: str | None = "megatron.core"
    velora_config: dict[str, Any] | None = None
    monteclora_config: dict[str, Any] | None = None
    use_bdlora: dict[str, Any] | None = None
    arrow_config: dict[str, Any] | None = None
    kasa_config: dict[str, Any] | None = None
    ensure_weight_tying: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(f"LoRA r must be a positive integer, got {self.r!r}")
        if not 0.0 <= self.lora_dropout <= 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1], got {self.lora_dropout!r}")
        init = self.init_lora_weights
        named = isinstance(init, str) and (
            init.lower() in ("gaussian", "olora", "pissa") or _PISSA_NITER.match(init)
        )
        if not (init is True or init is False or named):
            raise ConfigError(
                f"init_lora_weights={init!r} is not supported yet in peftkit-lora; use one of "
                f"{', '.join(map(repr, INIT_CHOICES))} (K a whole number of iterations)"
            )
        if self.lora_bias and init not in (True, False):
            raise ConfigError(f"lora_bias=True needs init_lora_weights True or False, got {init!r}")
        if self.lora_bias and self.use_dora:
            raise ConfigError("lora_bias=True cannot be combined with DoRA (use_dora=True); drop one of them")
        for name, feature in UNSUPPORTED_FIELDS.items():
            value = getattr(self, name)
            if not (value is None or value is False or value == {}):
                raise ConfigError(
                    f"{feature} is not supported yet in peftkit-lora; remove {name}={value!r} from the config"
                )
        for pattern_field in ("rank_pattern", "alpha_pattern"):
            for key in getattr(self, pattern_field):
                try:
                    re.compile(key)
                except re.error as exc:
                    raise ConfigError(f"{pattern_field} key {key!r} is not a valid regex: {exc}") from None

    @property
    def changes_base_weights(self) -> bool:
        """Whether this init (PiSSA, OLoRA) moves part of the base weight into the adapter."""
        return isinstance(self.init_lora_weights, str) and self.init_lora_weights.lower() != "gaussian"

    def rank_and_alpha(self, module_path: str) -> tuple[int, float]:
        """The r and alpha for one module, after ``rank_pattern`` / ``alpha_pattern``."""
        return _pick(self.rank_pattern, module_path, self.r), _pick(
            self.alpha_pattern, module_path, self.lora_alpha
        )


def _pick(patterns: dict[str, Any], path: str, default: Any) -> Any:
    """The value of the first pattern (in insertion order) matching the end of ``path`` at a dot boundary."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default

"""The (IA)^3 config, with Hugging Face PEFT's field names, and the hook that fills its defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from peftkit import ConfigError, PeftConfig, name_matcher


@dataclass
class IA3Config(PeftConfig):
    """``feedforward_modules`` (names or a regex, like ``target_modules``) are the adapted modules
    whose input is scaled; every other adapted module has its output scaled. ``init_ia3_weights``
    starts the vectors at one (the adapter changes nothing until trained); False draws them at random.
    """

    PEFT_TYPE: ClassVar[str] = "IA3"
    # Hugging Face PEFT's IA3Config has no layer selection and no bias mode.
    BASE_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"target_modules", "exclude_modules", "modules_to_save"}
    )
    NON_SHAPING_FIELDS: ClassVar[frozenset[str]] = frozenset({"init_ia3_weights"})

    feedforward_modules: list[str] | str | None = None
    fan_in_fan_out: bool = False
    init_ia3_weights: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.feedforward_modules, (set, tuple)):
            self.feedforward_modules = sorted(self.feedforward_modules)
        targets, feedforward = self.target_modules, self.feedforward_modules
        if isinstance(targets, list) and isinstance(feedforward, list):
            outside = sorted(set(feedforward) - set(targets))
            if outside:
                raise ConfigError(
                    f"feedforward_modules {outside} are not in target_modules {targets}: a feed-forward module "
                    "must also be adapted; add it to target_modules or drop it from feedforward_modules"
                )


def prepare_config(model: Any, config: IA3Config) -> IA3Config:
    """The ``prepare_config`` hook: fill ``feedforward_modules`` from PEFT's table for the model's type.

    With a list of ``target_modules``, the feed-forward modules are those of the list that name a
    module of the table (``["o_proj"]`` on Llama: none; ``["mlp.down_proj"]``: that entry), so the
    same layers scale their input as in PEFT and the saved config keeps feed-forward modules within
    the targets, which both libraries require when loading it.
    """
    from peftkit_ia3 import DEFAULT_FEEDFORWARD

    if config.feedforward_modules is not None:
        return config
    base = model.get_base_model()
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    feedforward = list(DEFAULT_FEEDFORWARD.get(model_type, [])) if isinstance(model_type, str) else []
    targets = config.target_modules
    if feedforward and isinstance(targets, list):
        is_feedforward = name_matcher(feedforward)
        paths = [path for path, _ in base.named_modules() if is_feedforward(path)]
        feedforward = [t for t in targets if any(name_matcher([t])(path) for path in paths)]
    return config.replace(feedforward_modules=feedforward)

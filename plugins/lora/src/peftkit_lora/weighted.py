"""``add_weighted_adapter``: a new LoRA adapter that combines existing ones with weights.

Combinations (the same results as Hugging Face PEFT for the same adapters and weights):

* ``"linear"``: ``A = sum(sign_i sqrt|w_i s_i| A_i)``, ``B = sum(sqrt|w_i s_i| B_i)`` (the sign on
  A only, so a negative weight subtracts); all ranks must be equal. Cheap but approximate: the
  cross terms ``A_i B_j`` remain.
* ``"cat"``: ``A = [w_1 s_1 A_1; w_2 s_2 A_2; ...]``, ``B = [B_1, B_2, ...]``; exact, rank = sum of ranks.
* ``"svd"``: the exact weighted sum of the updates ``sum(w_i delta_i)``, truncated to ``svd_rank``
  (default: the largest rank) by an SVD computed in float32.

The new adapter has ``lora_alpha = r`` (scaling 1), targets the union of the sources' targets, and
starts frozen and inactive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch

from peftkit import ConfigError
from peftkit.layer import ModulesToSave

COMBINATIONS = ("svd", "linear", "cat")


def add_weighted_adapter(
    model: Any,
    adapters: Sequence[str],
    weights: Sequence[float],
    adapter_name: str,
    combination_type: str = "svd",
    svd_rank: int | None = None,
    svd_clamp: float | None = None,
    svd_full_matrices: bool = True,
    svd_driver: str | None = None,
    density: float | None = None,
    majority_sign_method: str = "total",
) -> None:
    """Add adapter ``adapter_name`` = the ``weights``-weighted combination of LoRA ``adapters`` (see the module doc).

    On any error the model is left as it was.
    """
    adapters, weights = list(adapters), [float(w) for w in weights]
    combination_type = _check(model, adapters, weights, adapter_name, combination_type, density)
    ranks = [_max_rank(model.peft_config[a]) for a in adapters]
    if combination_type == "linear":
        if len(set(ranks)) != 1:
            raise ValueError(
                f"combination_type='linear' needs adapters of one rank, got ranks {ranks}; use 'cat' or 'svd'"
            )
        new_rank = ranks[0]
    elif combination_type == "cat":
        new_rank = sum(ranks)
    else:
        new_rank = svd_rank or max(ranks)
    first = model.peft_config[adapters[0]]
    config = first.replace(
        r=new_rank,
        lora_alpha=new_rank,
        target_modules=_union_targets(model, adapters),
        rank_pattern={},
        alpha_pattern={},
        init_lora_weights=True,  # never re-run an init that rewrites base weights (PiSSA) for the combination
        use_rslora=False,  # the combined tensors assume a scaling of exactly 1
    )
    sources = {path for path, layer in _layers(model) if set(adapters) & set(layer.adapter_names)}
    model.add_adapter(adapter_name, config)
    try:
        made = {path for path, layer in _layers(model) if adapter_name in layer.adapter_names}
        if made != sources:
            raise ConfigError(
                f"the adapters {adapters} target modules that one config cannot reproduce (differing "
                f"exclude_modules / layers_to_transform?): combined {sorted(made ^ sources)[:3]} differ"
            )
        with torch.no_grad():
            for _, layer in _layers(model):
                if adapter_name in layer.adapter_names:
                    _combine(
                        layer,
                        adapters,
                        weights,
                        adapter_name,
                        combination_type,
                        new_rank,
                        svd_clamp,
                        svd_full_matrices,
                        svd_driver,
                    )
        model.set_requires_grad(adapter_name, False)
    except Exception:
        model.delete_adapter(adapter_name)
        raise


def _check(
    model: Any, adapters: list[str], weights: list[float], adapter_name: str, combination: str, density: Any
) -> str:
    if adapter_name in model.peft_config:
        raise ValueError(
            f"an adapter named {adapter_name!r} already exists; pick another name or delete it first"
        )
    if not adapters or len(adapters) != len(weights):
        raise ValueError(f"give one weight per adapter: {len(adapters)} adapters, {len(weights)} weights")
    unknown = [a for a in adapters if a not in model.peft_config]
    if unknown:
        raise ValueError(f"unknown adapter(s) {unknown}; this model has {list(model.peft_config)}")
    if combination not in COMBINATIONS:
        raise ValueError(
            f"combination_type={combination!r} is not supported by peftkit-lora; use one of {', '.join(COMBINATIONS)}"
        )
    if density is not None:
        raise ValueError("density applies to ties/dare combinations, which peftkit-lora does not provide")
    for name in adapters:
        config = model.peft_config[name]
        if config.use_dora:
            raise ValueError(
                f"adapter {name!r} uses DoRA; add_weighted_adapter combines plain LoRA adapters only"
            )
        if config.lora_bias:
            raise ValueError(
                f"adapter {name!r} has lora_bias=True; add_weighted_adapter cannot combine LoRA biases"
            )
    for module in model.modules():
        if isinstance(module, ModulesToSave) and sum(a in module.modules_to_save for a in adapters) > 1:
            raise ValueError(
                "several of these adapters train their own copy of the same module (modules_to_save); "
                "such copies cannot be combined"
            )
    return "linear" if len(adapters) == 1 else combination


def _max_rank(config: Any) -> int:
    return max(config.r, *config.rank_pattern.values()) if config.rank_pattern else config.r


def _union_targets(model: Any, adapters: list[str]) -> Any:
    targets = [model.peft_config[a].target_modules for a in adapters]
    if all(isinstance(t, str) for t in targets):
        unique = list(dict.fromkeys(targets))
        return unique[0] if len(unique) == 1 else "|".join(f"({t})" for t in unique)
    if all(isinstance(t, (list, tuple, set)) for t in targets):
        return sorted({name for t in targets for name in t})
    raise ConfigError(
        f"the adapters' target_modules mix lists and regex strings ({targets}); "
        "combine adapters whose target_modules are all lists or all strings"
    )


def _layers(model: Any) -> list[tuple[str, Any]]:
    from peftkit_lora.layer import LoraLayer

    return [(p, m) for p, m in model.get_base_model().named_modules() if isinstance(m, LoraLayer)]


def _ab(layer: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if name in layer.lora_A:
        return layer.lora_A[name].weight, layer.lora_B[name].weight
    return layer.lora_embedding_A[name], layer.lora_embedding_B[name]


def _combine(
    layer: Any,
    adapters: list[str],
    weights: list[float],
    new: str,
    combination: str,
    rank: int,
    clamp: float | None,
    full_matrices: bool,
    driver: str | None,
) -> None:
    present = [(a, w) for a, w in zip(adapters, weights, strict=True) if a in layer.adapter_names]
    target_A, target_B = _ab(layer, new)
    if combination == "svd":
        A, B = _svd(layer, present, rank, clamp, full_matrices, driver)
    elif combination == "cat":
        A = torch.cat([_ab(layer, a)[0] * (w * layer.scaling[a]) for a, w in present], dim=0)
        B = torch.cat([_ab(layer, a)[1] for a, _ in present], dim=1)
    else:  # linear: split each weight over A and B, its sign on A only
        # sum() starts from 0, but each layer given the new adapter holds one of the combined ones.
        A = cast(torch.Tensor, sum(_ab(layer, a)[0] * _signed_root(w * layer.scaling[a]) for a, w in present))
        B = cast(torch.Tensor, sum(_ab(layer, a)[1] * abs(w * layer.scaling[a]) ** 0.5 for a, w in present))
    target_A.zero_()
    target_B.zero_()
    target_A[: A.shape[0]] = A.to(target_A)
    target_B[:, : B.shape[1]] = B.to(target_B)


def _signed_root(value: float) -> float:
    return abs(value) ** 0.5 * (1 if value >= 0 else -1)


def _svd(
    layer: Any,
    present: list[tuple[str, float]],
    rank: int,
    clamp: float | None,
    full_matrices: bool,
    driver: str | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A (rank', ...) and B (..., rank') whose product is the best rank-``rank`` fit of the weighted sum of updates."""
    delta = sum(layer.delta_weight(a).float() * w for a, w in present)
    embedding = layer.view.kind == "embedding"
    matrix = delta.T if embedding else delta.flatten(1)  # (out, in): B @ A layout
    U, S, Vh = torch.linalg.svd(matrix, full_matrices=full_matrices, driver=driver)
    keep = min(rank, S.shape[0])
    U, Vh = U[:, :keep] * S[:keep], Vh[:keep]
    if clamp is not None:
        high = torch.quantile(torch.cat([U.flatten(), Vh.flatten()]), clamp)
        U, Vh = U.clamp(-high, high), Vh.clamp(-high, high)
    if embedding:
        return Vh, U
    A_shape = layer.lora_A[present[0][0]].weight.shape[1:]
    B_shape = layer.lora_B[present[0][0]].weight.shape[2:]
    return Vh.reshape(keep, *A_shape), U.reshape(U.shape[0], keep, *B_shape)

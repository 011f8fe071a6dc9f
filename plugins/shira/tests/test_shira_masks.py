"""SHiRA masks: exact budgets, distinct positions, per-layer randomness, reproducible seeds, user mask functions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from collections import OrderedDict
from typing import Any

import pytest
import torch
from torch import nn

import peftkit
from peftkit.testing import make_inputs, make_model
from peftkit_shira import masks
from peftkit_shira.config import ShiraConfig

HIDDEN = 64


def twin_model() -> nn.Module:
    """Two Linear(64, 64) layers of equal shape, ``a`` and ``b``, around a ReLU."""
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(a=nn.Linear(HIDDEN, HIDDEN), act=nn.ReLU(), b=nn.Linear(HIDDEN, HIDDEN)))


def indices_of(model: Any, adapter: str = "default") -> dict[str, torch.Tensor]:
    return {
        path: layer.shira_indices[adapter].clone()
        for path, layer in model.get_base_model().named_modules()
        if hasattr(layer, "shira_indices") and adapter in layer.shira_indices
    }


def _flat(indices: torch.Tensor, in_features: int) -> torch.Tensor:
    return indices[0].long() * in_features + indices[1].long()


# --- the sampler -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("numel", "count"),
    [(1000, 100), (1000, 1000), (1000, 0), (1 << 20, 5000), (1 << 20, 1 << 18), (3 << 20, 1)],
)
def test_random_positions_are_exactly_count_distinct_sorted_in_range(numel: int, count: int) -> None:
    positions = masks.random_positions(numel, count, torch.Generator().manual_seed(0))
    assert positions.shape == (count,)
    assert positions.unique().numel() == count
    assert bool((positions[1:] > positions[:-1]).all())
    assert count == 0 or (int(positions.min()) >= 0 and int(positions.max()) < numel)


def test_random_positions_refuses_more_than_there_are() -> None:
    with pytest.raises(ValueError, match="cannot choose 11 distinct positions out of 10"):
        masks.random_positions(10, 11)


def test_large_layers_are_not_permuted_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """A big layer's mask costs O(K): no permutation of all in * out positions."""
    real = torch.randperm
    count = 32 * (4096 + 4096)

    def small_randperm(n: int, *args: Any, **kwargs: Any) -> torch.Tensor:
        assert n <= 2 * count, f"randperm over {n} positions for a mask of {count}"
        return real(n, *args, **kwargs)

    monkeypatch.setattr(torch, "randperm", small_randperm)
    indices = masks.random_indices(4096, 4096, count, seed=1)
    assert indices.shape == (2, count) and indices.dtype == torch.int32
    assert _flat(indices, 4096).unique().numel() == count


def test_random_positions_are_not_biased_towards_small_positions() -> None:
    """Draws are deduplicated with a sort; the kept subset must still be uniform over the whole range."""
    numel = 1 << 20
    positions = masks.random_positions(numel, 20_000, torch.Generator().manual_seed(3)).double()
    assert abs(positions.mean().item() / numel - 0.5) < 0.01
    counts = torch.histc(positions, bins=8, min=0, max=numel)
    assert counts.min() > 0.9 * 2500 and counts.max() < 1.1 * 2500


def test_layer_seed_is_stable_and_depends_on_both_inputs() -> None:
    seed = masks.layer_seed(7, "model.layers.0.q_proj")
    assert seed == masks.layer_seed(7, "model.layers.0.q_proj")
    assert seed != masks.layer_seed(8, "model.layers.0.q_proj")
    assert seed != masks.layer_seed(7, "model.layers.1.q_proj")
    assert 0 <= seed < 2**63


# --- masks of a model ------------------------------------------------------------------------
@pytest.mark.parametrize("r", [1, 3])
def test_every_layer_gets_exactly_its_budget(r: int) -> None:
    model = peftkit.get_peft_model(
        make_model("mlp"), ShiraConfig(r=r, target_modules=["lin0", "lin1", "lin2"])
    )
    sizes = {"lin0": (16, 32), "lin1": (32, 32), "lin2": (32, 8)}
    for path, indices in indices_of(model).items():
        in_features, out_features = sizes[path]
        count = r * (in_features + out_features)
        assert indices.shape == (2, count) and indices.dtype == torch.int32
        assert _flat(indices, in_features).unique().numel() == count
        assert int(indices[0].max()) < out_features and int(indices[1].max()) < in_features
        assert model.get_base_model().get_submodule(path).shira_weight["default"].shape == (count,)


@pytest.mark.parametrize("seed", [None, 11])
def test_equal_shape_layers_get_different_masks(seed: int | None) -> None:
    model = peftkit.get_peft_model(
        twin_model(), ShiraConfig(r=2, target_modules=["a", "b"], random_seed=seed)
    )
    found = indices_of(model)
    assert not torch.equal(found["a"], found["b"])


def test_unseeded_masks_follow_the_global_rng() -> None:
    """Without random_seed the draw uses torch's global generator, like the weights' own init."""
    found = []
    for global_seed in (5, 5, 6):
        model = twin_model()
        torch.manual_seed(global_seed)
        found.append(indices_of(peftkit.get_peft_model(model, ShiraConfig(r=2, target_modules=["a"])))["a"])
    assert torch.equal(found[0], found[1]) and not torch.equal(found[0], found[2])


def test_seed_ignores_the_global_rng_and_other_seeds_differ() -> None:
    torch.manual_seed(1)
    first = indices_of(
        peftkit.get_peft_model(twin_model(), ShiraConfig(r=2, target_modules=["a", "b"], random_seed=4))
    )
    torch.manual_seed(2)
    again = indices_of(
        peftkit.get_peft_model(twin_model(), ShiraConfig(r=2, target_modules=["a", "b"], random_seed=4))
    )
    other = indices_of(
        peftkit.get_peft_model(twin_model(), ShiraConfig(r=2, target_modules=["a", "b"], random_seed=5))
    )
    assert all(torch.equal(first[k], again[k]) for k in ("a", "b"))
    assert not torch.equal(first["a"], other["a"]) and not torch.equal(first["b"], other["b"])


_CHILD = textwrap.dedent(
    """
    import json, sys, torch
    from torch import nn
    import peftkit
    torch.manual_seed(int(sys.argv[1]))  # the global RNG must not matter for a seeded mask
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    peft_model = peftkit.get_peft_model(model, peftkit.config("shira", r=2, target_modules=["0", "2"], random_seed=123))
    out = {p: m.shira_indices["default"].tolist() for p, m in peft_model.get_base_model().named_modules()
           if hasattr(m, "shira_indices")}
    print(json.dumps(out))
    """
)


def test_same_seed_gives_the_same_masks_in_a_new_process() -> None:
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, "0"], capture_output=True, text=True, check=True, env=env
    )
    there = json.loads(child.stdout)
    torch.manual_seed(99)
    model = nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN))
    here = indices_of(
        peftkit.get_peft_model(model, ShiraConfig(r=2, target_modules=["0", "2"], random_seed=123))
    )
    assert set(there) == {"0", "2"}
    for path in ("0", "2"):
        assert there[path] == here[path].tolist()
    assert there["0"] != there["2"]


# --- user mask functions -----------------------------------------------------------------------
def first_entries(base_layer: nn.Module, r: int) -> torch.Tensor:
    """The first r * (in + out) weights in row-major (out, in) order."""
    out_features, in_features = base_layer.out_features, base_layer.in_features
    mask = torch.zeros(out_features * in_features)
    mask[: r * (in_features + out_features)] = 1.0
    return mask.view(out_features, in_features)


def test_mask_fn_chooses_the_positions() -> None:
    config = ShiraConfig(r=2, target_modules=["lin1"], init_weights=False)
    config.mask_fn = first_entries
    model = peftkit.get_peft_model(make_model("mlp"), config)
    indices = indices_of(model)["lin1"]
    assert torch.equal(_flat(indices, 32), torch.arange(2 * 64))


def test_mask_fn_gets_the_base_layer_and_r_and_uses_out_in_layout_for_conv1d() -> None:
    seen = []

    def mask_fn(base_layer: nn.Module, r: int) -> torch.Tensor:
        seen.append((type(base_layer).__name__, r))
        mask = torch.zeros(48, 32, dtype=torch.bool)  # Conv1D(nf=48, nx=32): 48 outputs, 32 inputs
        mask.view(-1)[: r * (48 + 32) - 1] = True
        mask[47, 0] = True  # output 47, input 0: would not even fit if the layout were (in, out)
        return mask

    config = ShiraConfig(r=1, target_modules=["conv1d"], init_weights=False)
    config.mask_fn = mask_fn
    model = peftkit.get_peft_model(make_model("emb_conv1d"), config)
    assert seen == [("Conv1D", 1)]
    layer = model.get_base_model().conv1d
    assert (47, 0) in {tuple(p) for p in layer.shira_indices["default"].T.tolist()}
    # The delta lands where the mask says, in the (out, in) view of Conv1D's (in, out) weight.
    before = layer.base_layer.weight.detach().clone()
    model.merge_adapter()
    changed = (layer.base_layer.weight != before).T.nonzero().T
    assert torch.equal(changed.int(), layer.shira_indices["default"])


def _bad_mask(kind: str) -> Any:
    def mask_fn(base_layer: nn.Module, r: int) -> Any:
        good = first_entries(base_layer, r)
        if kind == "type":
            return good.tolist()
        if kind == "shape":
            return good.T
        if kind == "dtype":
            return good.to(torch.complex64)
        if kind == "values":
            return good * 2
        short = good.clone()
        short.view(-1)[0] = 0.0
        return short

    return mask_fn


@pytest.mark.parametrize(
    ("kind", "error", "message"),
    [
        ("type", TypeError, r"returned a list for lin2; it must return a torch.Tensor"),
        (
            "shape",
            ValueError,
            r"mask of shape \(32, 8\) for lin2; expected \(out_features, in_features\) = \(8, 32\)",
        ),
        ("dtype", ValueError, r"mask of dtype torch.complex64 for lin2"),
        ("values", ValueError, r"values other than 0 and 1 for lin2 \(e.g. 2.0\)"),
        (
            "count",
            ValueError,
            r"with 79 ones for lin2; r=2 needs exactly r \* \(in \+ out\) = 2 \* \(32 \+ 8\) = 80",
        ),
    ],
)
def test_bad_mask_fn_results_are_refused_and_leave_the_model_unchanged(
    kind: str, error: type[Exception], message: str
) -> None:
    model = make_model("mlp")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = ShiraConfig(r=2, target_modules=["lin0", "lin2"])
    # lin0 (adapted first) gets a good mask, lin2 a bad one: the adapter on lin0 must be rolled back.
    config.mask_fn = lambda layer, r: (
        _bad_mask(kind)(layer, r) if layer.out_features == 8 else first_entries(layer, r)
    )
    with pytest.raises(error, match=message):
        peftkit.get_peft_model(model, config)
    assert not any("shira" in name for name, _ in model.named_modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_mask_fn_is_never_serialised_but_survives_config_copies(tmp_path: Any) -> None:
    config = peftkit.config("shira", r=2, target_modules=["lin1"], init_weights=False)
    config.mask_fn = first_entries
    assert "mask_fn" not in config.to_dict()
    assert config.replace(r=3).mask_fn is first_entries
    assert "mask_fn" not in ShiraConfig.field_names()
    assert ShiraConfig().mask_fn is None
    model = peftkit.get_peft_model(make_model("mlp"), config)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert "mask_fn" not in saved and saved["mask_type"] == "random"
    loaded = peftkit.PeftModel.from_pretrained(make_model("mlp"), tmp_path)
    x = make_inputs("mlp")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


def test_unknown_mask_type_without_mask_fn_warns_but_loads_quietly(tmp_path: Any) -> None:
    config = ShiraConfig(r=2, target_modules=["lin1"], mask_type="magnitude", init_weights=False)
    with pytest.warns(
        UserWarning, match="mask_type='magnitude' is not built in and config.mask_fn is not set"
    ):
        model = peftkit.get_peft_model(make_model("mlp"), config)
    model.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = peftkit.PeftModel.from_pretrained(make_model("mlp"), tmp_path)
    assert torch.equal(indices_of(loaded)["lin1"], indices_of(model)["lin1"])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("r", 0, "positive integer"),
        ("r", 2.5, "positive integer"),
        ("random_seed", -1, "non-negative integer"),
        ("init_weights", "zeros", "True \\(zeros\\) or False"),
    ],
)
def test_bad_config_values_are_refused(field: str, value: Any, message: str) -> None:
    with pytest.raises(peftkit.ConfigError, match=message):
        ShiraConfig(**{field: value})


def test_budget_larger_than_the_layer_is_refused() -> None:
    model = make_model("mlp")
    with pytest.raises(
        ValueError,
        match=r"r=8 asks for r \* \(in \+ out\) = 320 entries of lin2, which has only 32 \* 8 = 256",
    ):
        peftkit.get_peft_model(model, ShiraConfig(r=8, target_modules=["lin1", "lin2"]))
    assert not any("shira" in name for name, _ in model.named_modules())


def test_base_fields_peft_lacks_are_not_written_and_not_accepted() -> None:
    """Hugging Face PEFT's ShiraConfig has no bias, exclude_modules or layer selection: neither has ours."""
    plain = ShiraConfig(target_modules=["q_proj"]).to_dict()
    assert not {"bias", "exclude_modules", "layers_pattern", "layers_to_transform"} & set(plain)
    assert ShiraConfig.from_dict(plain) == ShiraConfig(target_modules=["q_proj"])
    with pytest.raises(peftkit.ConfigError, match=r"no layers_to_transform or layers_pattern field.*regex"):
        ShiraConfig(target_modules=["q_proj"], layers_to_transform=[0], layers_pattern="layers")

"""SHiRA's sparse forward and backward, merging, fast switching of fused adapters, and checkpoint checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import peftkit
from peftkit.testing import make_inputs, make_model
from peftkit_shira import sparse
from peftkit_shira.config import ShiraConfig
from peftkit_shira.layer import ShiraLayer
from peftkit_shira.masks import random_indices
from peftkit_shira.sparse import SparsePattern


def _pattern(out_features: int, in_features: int, count: int, shuffled: bool) -> SparsePattern:
    indices = random_indices(out_features, in_features, count, seed=1)
    if shuffled:  # a checkpoint may list the entries in any order
        indices = indices[:, torch.randperm(count, generator=torch.Generator().manual_seed(2))].contiguous()
    return SparsePattern(indices, out_features, in_features, "test")


@pytest.fixture(params=["kernels", "gather"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on the sparse kernels and on the gather / index_add path other devices use."""
    if request.param == "gather":
        monkeypatch.setattr(sparse, "_KERNEL_DEVICES", ())
    return request.param


@pytest.mark.parametrize("shuffled", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sparse_product_and_gradients_match_the_dense_product(
    path: str, shuffled: bool, dtype: torch.dtype
) -> None:
    pattern = _pattern(24, 40, 200, shuffled)
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(200, generator=gen, dtype=dtype).requires_grad_()
    x = torch.randn(5, 40, generator=gen, dtype=dtype).requires_grad_()
    grad = torch.randn(5, 24, generator=gen, dtype=dtype)
    out = pattern.matmul(x, values)
    out.backward(grad)

    ref_values = values.detach().double().requires_grad_()
    ref_x = x.detach().double().requires_grad_()
    (ref_x @ pattern.dense(ref_values).T).backward(grad.double())
    tol = {"atol": 3e-2, "rtol": 2e-2} if dtype == torch.bfloat16 else {"atol": 1e-5, "rtol": 1e-5}
    assert out.dtype == dtype and x.grad.dtype == dtype and values.grad.dtype == dtype
    torch.testing.assert_close(out.double(), (ref_x @ pattern.dense(ref_values).T).detach(), **tol)
    torch.testing.assert_close(x.grad.double(), ref_x.grad, **tol)
    torch.testing.assert_close(values.grad.double(), ref_values.grad, **tol)


def test_training_never_builds_a_dense_update(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forward and backward of an adapted layer go through the sparse product only."""
    model = peftkit.get_peft_model(
        make_model("mlp"), ShiraConfig(r=2, target_modules=["lin0", "lin1"], init_weights=False)
    )

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a dense update was built")

    monkeypatch.setattr(SparsePattern, "dense", refuse)
    model.train()
    model(make_inputs("mlp")).pow(2).mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if "shira_weight" in n]
    assert len(grads) == 2 and all(g is not None and g.abs().sum() > 0 for g in grads)


def _three_adapters() -> Any:
    """Adapters a (lin0, lin1), b (lin1) and c (lin1, lin2), with random values."""
    model = peftkit.get_peft_model(
        make_model("mlp"),
        ShiraConfig(r=2, target_modules=["lin0", "lin1"], init_weights=False),
        adapter_name="a",
    )
    model.add_adapter("b", ShiraConfig(r=3, target_modules=["lin1"], init_weights=False))
    model.add_adapter("c", ShiraConfig(r=1, target_modules=["lin1", "lin2"], init_weights=False))
    return model


COMBOS = (["a"], ["b"], ["c"], ["a", "b"], ["b", "c"])


def _outputs(model: Any, x: torch.Tensor, combos: Any = COMBOS) -> dict[Any, torch.Tensor]:
    """Unmerged outputs per combination of active adapters."""
    found = {}
    for names in combos:
        model.set_adapter(names)
        with torch.no_grad():
            found[tuple(names)] = model(x)
    return found


def _weights(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}


def test_set_adapter_on_a_merged_model_switches_the_fused_adapters(monkeypatch: pytest.MonkeyPatch) -> None:
    x = make_inputs("mlp")
    model = _three_adapters()
    expected = _outputs(model, x)
    base = _weights(model)

    model.set_adapter("a")
    model.merge_adapter()

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("switching built a dense delta")

    # Switching must only subtract and add the sparse values.
    monkeypatch.setattr(ShiraLayer, "delta_weight", refuse)
    monkeypatch.setattr(peftkit.BaseLayerView, "add_to_weight", refuse)
    monkeypatch.setattr(type(model.get_base_model().lin0.view), "add_to_weight", refuse)
    for names in (["b"], ["c"], ["a", "b"], ["b", "c"], ["a"]):
        model.set_adapter(names)
        layers = {p: m for p, m in model.get_base_model().named_modules() if isinstance(m, ShiraLayer)}
        for path, layer in layers.items():
            assert layer.merged_adapters == [n for n in names if n in layer.adapter_names], (path, names)
        with torch.no_grad():
            torch.testing.assert_close(model(x), expected[tuple(names)], atol=1e-5, rtol=0)
    model.unmerge_adapter()
    for name, weight in _weights(model).items():
        torch.testing.assert_close(weight, base[name], atol=1e-6, rtol=0, msg=name)


def test_several_adapters_fuse_at_once_and_disable_takes_them_out() -> None:
    x = make_inputs("mlp")
    model = _three_adapters()
    expected = _outputs(model, x)
    with torch.no_grad():
        base_out = make_model("mlp")(x)
    model.set_adapter(["a", "b"])
    model.merge_adapter()
    assert model.get_base_model().lin1.merged_adapters == ["a", "b"]
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected[("a", "b")], atol=1e-5, rtol=0)
        with model.disable_adapter():
            torch.testing.assert_close(model(x), base_out, atol=1e-5, rtol=0)


def test_switching_merges_into_conv1d_in_its_own_layout() -> None:
    x = make_inputs("emb_conv1d")
    model = peftkit.get_peft_model(
        make_model("emb_conv1d"),
        ShiraConfig(r=2, target_modules=["conv1d"], init_weights=False),
        adapter_name="a",
    )
    model.add_adapter("b", ShiraConfig(r=2, target_modules=["conv1d"], init_weights=False))
    expected = _outputs(model, x, (["a"], ["b"]))
    model.set_adapter("a")
    model.merge_adapter()
    model.set_adapter("b")
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected[("b",)], atol=1e-5, rtol=0)


def _save(tmp_path: Path) -> tuple[Any, torch.Tensor]:
    model = peftkit.get_peft_model(
        make_model("mlp"), ShiraConfig(r=2, target_modules=["lin0", "lin1"], init_weights=False)
    )
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        return model, model(make_inputs("mlp"))


def _rewrite(tmp_path: Path, change: Any) -> None:
    from safetensors import safe_open

    file = tmp_path / "adapter_model.safetensors"
    with safe_open(file, framework="pt") as fh:
        metadata = fh.metadata()
    tensors = load_file(file)
    change(tensors)
    save_file(tensors, file, metadata=metadata)


def test_indices_saved_as_floats_load_as_integers(tmp_path: Path) -> None:
    """Hugging Face PEFT saves shira_indices as float32 on Windows; they must still load."""
    _, expected = _save(tmp_path)

    def to_float(tensors: dict[str, torch.Tensor]) -> None:
        for key in [k for k in tensors if k.endswith("shira_indices")]:
            tensors[key] = tensors[key].float()

    _rewrite(tmp_path, to_float)
    loaded = peftkit.PeftModel.from_pretrained(make_model("mlp"), tmp_path)
    assert loaded.get_base_model().lin0.shira_indices["default"].dtype == torch.int32
    with torch.no_grad():
        torch.testing.assert_close(loaded(make_inputs("mlp")), expected, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda t: t.__setitem__((0, 0), 32), r"point outside the \(32, 16\) weight"),
        (lambda t: t.__setitem__((slice(None), 1), t[:, 0]), "name the same weight entry twice"),
    ],
    ids=["out-of-range", "duplicate"],
)
def test_damaged_indices_are_refused_before_any_kernel_reads_them(
    tmp_path: Path, damage: Any, message: str
) -> None:
    _save(tmp_path)
    key = "base_model.model.lin0.shira_indices"
    _rewrite(tmp_path, lambda tensors: damage(tensors[key]))
    loaded = peftkit.PeftModel.from_pretrained(make_model("mlp"), tmp_path)
    with pytest.raises(
        peftkit.CheckpointError, match=rf"lin0 \(adapter 'default'\): shira_indices {message}"
    ):
        loaded(make_inputs("mlp"))
    with pytest.raises(peftkit.CheckpointError, match=message):
        loaded.merge_adapter()


def test_new_indices_replace_the_cached_pattern() -> None:
    """After a forward (pattern cached), indices written in place or loaded with load_state_dict are used."""
    x = make_inputs("mlp")
    config = ShiraConfig(r=2, target_modules=["lin0", "lin1"], init_weights=False)
    torch.manual_seed(0)
    model = peftkit.get_peft_model(make_model("mlp"), config)
    torch.manual_seed(1)
    other = peftkit.get_peft_model(make_model("mlp"), config)
    with torch.no_grad():
        first, expected = model(x), other(x)
        assert not torch.allclose(first, expected)
        model.load_state_dict(other.state_dict())
        torch.testing.assert_close(model(x), expected, atol=0, rtol=0)
        layer = model.get_base_model().lin0
        layer.shira_indices["default"].copy_(random_indices(32, 16, 96, seed=9))
        assert not torch.allclose(model(x), expected)
    assert layer.pattern("default").indices is layer.shira_indices["default"]


def test_low_cpu_mem_usage_load_gives_the_same_outputs(tmp_path: Path) -> None:
    _, expected = _save(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(make_model("mlp"), tmp_path, low_cpu_mem_usage=True)
    indices = loaded.get_base_model().lin0.shira_indices["default"]
    assert indices.device.type == "cpu" and indices.dtype == torch.int32
    with torch.no_grad():
        torch.testing.assert_close(loaded(make_inputs("mlp")), expected, atol=0, rtol=0)


def test_indices_are_buffers_that_never_train_or_count_as_parameters() -> None:
    model = peftkit.get_peft_model(make_model("mlp"), ShiraConfig(r=2, target_modules=["lin0", "lin1"]))
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == 2 * (16 + 32) + 2 * (32 + 32)
    assert not [n for n, _ in model.named_parameters() if "shira_indices" in n]
    model.set_requires_grad("default", True)
    model.requires_grad_(True)  # would fail on integer parameters
    buffers = dict(model.named_buffers())
    assert {k for k in buffers if "shira_indices" in k} == {
        "base_model.model.lin0.shira_indices.default",
        "base_model.model.lin1.shira_indices.default",
    }


def test_delete_adapter_removes_its_indices() -> None:
    model = peftkit.get_peft_model(make_model("mlp"), ShiraConfig(r=2, target_modules=["lin1"]))
    model.add_adapter("other", ShiraConfig(r=2, target_modules=["lin1"]))
    with torch.no_grad():
        model(make_inputs("mlp"))
    model.delete_adapter("other")
    layer = model.get_base_model().lin1
    assert "other" not in layer.shira_indices and "other" not in layer._patterns
    assert not [k for k, _ in model.named_buffers() if "other" in k.split(".")]


def test_non_linear_targets_are_refused() -> None:
    model = make_model("emb_conv1d")
    with pytest.raises(TypeError, match=r"SHiRA adapts linear layers .* emb is a Embedding"):
        peftkit.get_peft_model(model, ShiraConfig(r=1, target_modules=["emb", "conv1d"]))
    assert not any("shira" in n for n, _ in model.named_modules())

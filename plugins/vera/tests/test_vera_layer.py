"""VeRA specifics the conformance suite cannot see: shared projections, their persistence, and bad input."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import peftkit
from peftkit import CheckpointError, ConfigError
from peftkit._injection import UnsupportedLayerError
from peftkit.testing import make_inputs, make_model
from peftkit_vera.layer import VeraLayer
from peftkit_vera.projections import kaiming_uniform, make_projections

MLP = {"target_modules": ["lin0", "lin1"], "r": 4, "init_weights": False}


def _wrap(model: str = "mlp", seed: int = 0, **kwargs: Any) -> Any:
    torch.manual_seed(seed)
    return peftkit.get_peft_model(make_model(model), peftkit.config("vera", **{**MLP, **kwargs}))


def _run(model: Any, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def _layers(model: Any) -> list[VeraLayer]:
    return [m for m in model.modules() if isinstance(m, VeraLayer)]


# --- projections --------------------------------------------------------------------------------
def test_projections_are_seeded_sized_to_the_largest_layer_and_kaiming_bounded() -> None:
    a1, b1 = make_projections(7, 4, 16, 32)
    a2, b2 = make_projections(7, 4, 16, 32)
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert not torch.equal(make_projections(8, 4, 16, 32)[0], a1)
    assert a1.shape == (4, 16) and b1.shape == (32, 4) and a1.dtype == b1.dtype == torch.float32
    # Kaiming uniform with gain sqrt(2): bound sqrt(6 / fan_in), fan_in the second dimension.
    assert a1.abs().max() <= (6 / 16) ** 0.5 and b1.abs().max() <= (6 / 4) ** 0.5
    # A is drawn before B from one generator.
    gen = torch.Generator().manual_seed(7)
    assert torch.equal(kaiming_uniform((4, 16), gen), a1) and torch.equal(kaiming_uniform((32, 4), gen), b1)

    model = _wrap(target_modules=["lin0", "lin2"])  # (out, in) = (32, 16) and (8, 32)
    assert model.base_model.vera_A["default"].shape == (4, 32)
    assert model.base_model.vera_B["default"].shape == (32, 4)


def test_projections_are_one_shared_copy_across_layers_and_adapters() -> None:
    model = _wrap()
    model.add_adapter("other", peftkit.config("vera", **MLP))
    shared_A = model.base_model.vera_A["default"]
    assert model.base_model.vera_A["other"] is shared_A
    assert model.base_model.vera_B["other"] is model.base_model.vera_B["default"]
    for layer in _layers(model):
        for name in ("default", "other"):
            A, B = layer.sliced_projections(name)
            assert A.untyped_storage().data_ptr() == shared_A.untyped_storage().data_ptr()
            assert (
                B.untyped_storage().data_ptr()
                == model.base_model.vera_B["default"].untyped_storage().data_ptr()
            )
    # Nothing is registered per layer: the projections appear once in the whole state dict.
    keys = [k for k in model.state_dict() if "vera_A" in k or "vera_B" in k]
    assert sorted(keys) == sorted(f"base_model.vera_{m}.{n}" for m in "AB" for n in ("default", "other"))


def test_projections_are_never_trainable_nor_counted() -> None:
    model = _wrap()
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if "vera_A" in n or "vera_B" in n]
    model.set_requires_grad("default", True)
    assert not model.base_model.vera_A["default"].requires_grad
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == (32 + 4) * 2  # lambda_b (out,) + lambda_d (r,) for lin0 and lin1
    x = make_inputs("mlp")
    model.train()
    model(x).pow(2).mean().backward()
    assert model.base_model.vera_A["default"].grad is None
    assert all(layer.vera_lambda_d["default"].grad is not None for layer in _layers(model))


def test_identity_init_uses_d_initial() -> None:
    model = _wrap(init_weights=True, d_initial=0.3)
    for layer in _layers(model):
        assert torch.equal(layer.vera_lambda_b["default"], torch.zeros(layer.view.out_features))
        assert torch.allclose(layer.vera_lambda_d["default"], torch.full((4,), 0.3))


def test_forward_matches_the_formula_on_gpt2_conv1d() -> None:
    model = _wrap("emb_conv1d", target_modules=["conv1d"])
    layer = _layers(model)[0]
    h = torch.randn(3, 32)
    A = model.base_model.vera_A["default"][:, :32]
    B = model.base_model.vera_B["default"][:48]  # Conv1D(nf=48, nx=32): 48 outputs
    lb, ld = layer.vera_lambda_b["default"], layer.vera_lambda_d["default"]
    with torch.no_grad():
        expected = layer.base_layer(h) + lb * ((ld * (h @ A.T)) @ B.T)
        torch.testing.assert_close(layer(h), expected)
        torch.testing.assert_close(layer.delta_weight("default"), (lb[:, None] * B) @ (ld[:, None] * A))


def test_moving_the_model_moves_the_shared_projections() -> None:
    model = _wrap()
    x = make_inputs("mlp")
    expected = _run(model, x)
    model.to(torch.float64)
    assert model.base_model.vera_A["default"].dtype == torch.float64
    assert _layers(model)[0].projections[0]["default"].dtype == torch.float64
    torch.testing.assert_close(_run(model, x.double()).float(), expected, atol=1e-5, rtol=0)


# --- saving and loading -------------------------------------------------------------------------
def _keys(folder: Any) -> list[str]:
    with safe_open(os.path.join(folder, "adapter_model.safetensors"), framework="pt") as fh:
        return list(fh.keys())


@pytest.mark.parametrize("low_cpu_mem_usage", [False, True])
@pytest.mark.parametrize("save_projection", [True, False])
def test_save_projection_controls_the_file_and_loading_regenerates(
    save_projection: bool, low_cpu_mem_usage: bool, tmp_path: Any
) -> None:
    model = _wrap(save_projection=save_projection)
    x = make_inputs("mlp")
    expected = _run(model, x)
    model.save_pretrained(tmp_path)
    projection_keys = {"base_model.vera_A", "base_model.vera_B"}
    assert (projection_keys <= set(_keys(tmp_path))) is save_projection
    assert not projection_keys & set(_keys(tmp_path)) or save_projection

    torch.manual_seed(123)  # loading must not depend on the global RNG
    loaded = peftkit.PeftModel.from_pretrained(
        make_model("mlp"), tmp_path, low_cpu_mem_usage=low_cpu_mem_usage
    )
    assert torch.equal(_run(loaded, x), expected)


def test_saved_projections_are_loaded_not_regenerated(tmp_path: Any) -> None:
    model = _wrap()
    with torch.no_grad():
        model.base_model.vera_A["default"].mul_(2)  # no longer what the key would regenerate
    x = make_inputs("mlp")
    expected = _run(model, x)
    model.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(make_model("mlp"), tmp_path)
    assert torch.equal(_run(loaded, x), expected)


def test_missing_projections_with_save_projection_true_is_a_clear_error(tmp_path: Any) -> None:
    _wrap().save_pretrained(tmp_path)
    file = os.path.join(tmp_path, "adapter_model.safetensors")
    with safe_open(file, framework="pt") as fh:
        metadata = fh.metadata()
        kept = {k: fh.get_tensor(k) for k in fh.keys() if not k.startswith("base_model.vera_")}
    save_file(kept, file, metadata=metadata)
    base = make_model("mlp")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"save_projection=True.*base_model\.vera_A"):
        peftkit.PeftModel.from_pretrained(base, tmp_path)
    assert base.state_dict().keys() == before.keys()
    assert not [m for m in base.modules() if isinstance(m, VeraLayer)]


# --- several adapters ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"projection_prng_key": 1}, r"projection_prng_key=1 .* use 0"),
        ({"save_projection": False}, r"save_projection=False .* use True"),
        ({"r": 8}, r"vera_A \(8, >= 32\).*vera_A \(4, 32\) and vera_B \(32, 4\)"),
        ({"r": 2}, r"vera_A \(2, >= 32\).*vera_A \(4, 32\)"),
    ],
)
def test_incompatible_second_adapter_is_refused_and_changes_nothing(
    changes: dict[str, Any], message: str
) -> None:
    model = _wrap()
    x = make_inputs("mlp")
    expected = _run(model, x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        model.add_adapter("other", peftkit.config("vera", **{**MLP, **changes}))
    assert list(model.peft_config) == ["default"]
    assert model.state_dict().keys() == state.keys()
    assert torch.equal(_run(model, x), expected)


def test_second_adapter_needing_bigger_projections_names_the_sizes() -> None:
    model = _wrap(target_modules=["lin2"])  # (out, in) = (8, 32): projections (4, 32) and (8, 4)
    with pytest.raises(ValueError, match=r"vera_B \(>= 32, 4\).*vera_B \(8, 4\)"):
        model.add_adapter("other", peftkit.config("vera", **{**MLP, "target_modules": ["lin1"]}))
    assert "other" not in model.base_model.vera_A and list(model.peft_config) == ["default"]


def test_smaller_second_adapter_uses_slices_of_the_first_projections(tmp_path: Any) -> None:
    model = _wrap()
    model.add_adapter("small", peftkit.config("vera", **{**MLP, "target_modules": ["lin2"]}))
    model.set_adapter("small")
    x = make_inputs("mlp")
    expected = _run(model, x)
    model.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(make_model("mlp"), tmp_path)
    loaded.load_adapter(os.path.join(tmp_path, "small"), adapter_name="small")
    loaded.set_adapter("small")
    assert torch.equal(_run(loaded, x), expected)
    model.delete_adapter("small")
    assert "small" not in model.base_model.vera_A and "default" in model.base_model.vera_A


# --- bad input ----------------------------------------------------------------------------------
def test_non_linear_targets_are_refused_and_leave_the_model_unchanged() -> None:
    base = make_model("emb_conv1d")
    with pytest.raises(UnsupportedLayerError, match=r"linear layers only.*'emb \(Embedding\)'"):
        peftkit.get_peft_model(base, peftkit.config("vera", target_modules=["emb", "conv1d"], r=4))
    assert not [m for m in base.modules() if isinstance(m, VeraLayer)]


@pytest.mark.parametrize(
    "kwargs",
    [{"r": 0}, {"r": 2.5}, {"vera_dropout": 1.0}, {"projection_prng_key": "x"}, {"bias": "lora_only"}],
)
def test_bad_config_values_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        peftkit.config("vera", **kwargs)


def test_config_defaults_follow_hugging_face_peft() -> None:
    from peftkit_vera import VeraConfig

    cfg = VeraConfig()
    assert (cfg.r, cfg.projection_prng_key, cfg.save_projection, cfg.d_initial, cfg.vera_dropout) == (
        256,
        0,
        True,
        0.1,
        0.0,
    )
    assert cfg.init_weights is True and cfg.peft_type == "VERA"

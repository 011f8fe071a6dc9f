"""PiSSA / OLoRA inits: identity at init with a changed base weight, refusals, and conversion on save."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import peftkit
from peftkit.testing import make_inputs, make_model


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_3", "olora"])
@pytest.mark.parametrize(("model_name", "targets"), [("mlp", ["lin0", "lin1"]), ("emb_conv1d", ["conv1d"])])
def test_init_keeps_output_and_moves_the_principal_part(
    init: str, model_name: str, targets: list[str]
) -> None:
    x = make_inputs(model_name)
    base = make_model(model_name)
    with torch.no_grad():
        expected = base(x)
    original = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = peftkit.get_peft_model(
        base, peftkit.config("lora", target_modules=targets, r=4, lora_alpha=8, init_lora_weights=init)
    )
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)
    for target in targets:
        layer = model.get_base_model().get_submodule(target)
        residual = layer.view.read_weight()
        before = original[f"{target}.weight"]
        before = before.T if layer.view.fan_in_fan_out else before
        assert not torch.allclose(residual, before, atol=1e-3), "the base weight was not changed"
        torch.testing.assert_close(residual + layer.delta_weight("default"), before, atol=1e-5, rtol=0)


def test_pissa_takes_the_top_singular_directions() -> None:
    model = peftkit.get_peft_model(
        make_model("mlp"),
        peftkit.config("lora", target_modules=["lin1"], r=3, lora_alpha=6, init_lora_weights="pissa"),
    )
    original = make_model("mlp").lin1.weight.detach()
    S = torch.linalg.svdvals(original)
    delta = model.get_base_model().lin1.delta_weight("default")
    torch.testing.assert_close(torch.linalg.svdvals(delta)[:3], S[:3], atol=1e-5, rtol=0)


@pytest.mark.parametrize("targets", [["conv1d", "emb"], ["emb"]])
def test_non_linear_targets_are_refused_before_any_weight_changes(targets: list[str]) -> None:
    base = make_model("emb_conv1d")
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    with pytest.raises(ValueError, match=r"linear layers .* only.*emb"):
        peftkit.get_peft_model(
            base, peftkit.config("lora", target_modules=targets, init_lora_weights="pissa")
        )
    assert all(torch.equal(p, before[n]) for n, p in base.named_parameters())


@pytest.mark.parametrize("bad", ["pissa_niter_", "pissa_niter_x", "svd", "PiSSA_fast"])
def test_bad_init_names_are_config_errors(bad: str) -> None:
    with pytest.raises(peftkit.ConfigError, match="init_lora_weights"):
        peftkit.config("lora", target_modules=["lin0"], init_lora_weights=bad)


def test_lora_bias_needs_a_plain_init() -> None:
    with pytest.raises(peftkit.ConfigError, match="lora_bias=True needs init_lora_weights"):
        peftkit.config("lora", target_modules=["lin0"], init_lora_weights="olora", lora_bias=True)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_converted_adapter_applies_to_the_original_model(tmp_path: Path, use_rslora: bool) -> None:
    x = make_inputs("mlp")
    cfg = peftkit.config(
        "lora",
        target_modules=["lin0", "lin1"],
        r=2,
        lora_alpha=4,
        init_lora_weights="pissa",
        use_rslora=use_rslora,
        rank_pattern={} if use_rslora else {"lin1": 3},
    )
    model = peftkit.get_peft_model(make_model("mlp"), cfg)
    model.save_pretrained(tmp_path / "init")
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
        trained = model(x)
    model.save_pretrained(tmp_path / "lora", path_initial_model_for_weight_conversion=tmp_path / "init")
    saved = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert saved["r"] == 4 and saved["init_lora_weights"] is True
    assert saved["lora_alpha"] == pytest.approx(4 * (2**0.5 if use_rslora else 2))
    assert saved["rank_pattern"] == ({} if use_rslora else {"lin1": 6})
    plain = peftkit.PeftModel.from_pretrained(make_model("mlp"), tmp_path / "lora")
    with torch.no_grad():
        torch.testing.assert_close(plain(x), trained, atol=1e-5, rtol=0)
    # The model itself was not changed by saving: it still has its own adapter only.
    assert list(model.peft_config) == ["default"] and model.peft_config["default"].r == 2


def test_conversion_errors(tmp_path: Path) -> None:
    model = peftkit.get_peft_model(
        make_model("mlp"), peftkit.config("lora", target_modules=["lin0"], r=2, init_lora_weights="olora")
    )
    with pytest.raises(ValueError, match="is not a folder"):
        model.save_pretrained(tmp_path / "out", path_initial_model_for_weight_conversion=tmp_path / "missing")
    other = peftkit.get_peft_model(make_model("mlp"), peftkit.config("lora", target_modules=["lin0"], r=4))
    other.save_pretrained(tmp_path / "wrong")
    with pytest.raises(ValueError, match="initial adapter has"):
        model.save_pretrained(tmp_path / "out", path_initial_model_for_weight_conversion=tmp_path / "wrong")
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()
    model.add_adapter("b", peftkit.config("lora", target_modules=["lin1"]))
    with pytest.raises(ValueError, match="selected_adapters"):
        model.save_pretrained(tmp_path / "out", path_initial_model_for_weight_conversion=tmp_path / "wrong")

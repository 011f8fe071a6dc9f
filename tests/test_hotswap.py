"""Hot-swapping saved adapters into a compiled model: no recompilation, the outputs of a normal load.

For every additive method (LoRA, MiSS, VeRA, SHiRA, OFT): compile once with adapter A, swap in B
and C from disk with ``torch._dynamo.config.error_on_recompile`` set, and compare with B and C
loaded normally. LoRA adapters of other ranks and alphas swap in after
``prepare_model_for_compiled_hotswap``. A swap that cannot be done in place is an error naming
the layer and the mismatch, and changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch._dynamo as dynamo
from _models import text_inputs, tiny_llama

import peftkit

TARGETS = ["q_proj", "v_proj"]
METHODS: dict[str, dict[str, Any]] = {
    "lora": {"r": 4, "lora_alpha": 8, "init_lora_weights": False},
    "miss": {"r": 4, "init_weights": False},
    "vera": {"r": 4, "init_weights": False},
    "shira": {"r": 4, "init_weights": False},
    "oft": {"r": 0, "oft_block_size": 8, "init_weights": False},
}


def _model(method: str, seed: int, **overrides: Any) -> Any:
    torch.manual_seed(seed)
    config = peftkit.config(method, **{"target_modules": TARGETS, **METHODS[method], **overrides})
    model = peftkit.get_peft_model(tiny_llama(), config).eval()
    return model


def _save(tmp_path: Path, method: str, seed: int, **overrides: Any) -> Path:
    folder = tmp_path / f"{method}-{seed}-{'-'.join(f'{k}{v}' for k, v in overrides.items())}"
    model = _model(method, seed, **overrides)
    with torch.no_grad():  # move every adapter tensor well off its init
        gen = torch.Generator().manual_seed(seed)
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.2 * torch.randn(param.shape, generator=gen))
    model.save_pretrained(folder)
    return folder


def _loaded(folder: Path) -> torch.Tensor:
    with torch.no_grad():
        return peftkit.PeftModel.from_pretrained(tiny_llama(), folder)(**text_inputs()).logits


def _compiled(model: Any) -> Any:
    dynamo.reset()
    return torch.compile(model, backend="aot_eager", fullgraph=True)


@pytest.mark.parametrize("method", list(METHODS))
def test_swapping_adapters_into_a_compiled_model_never_recompiles(method: str, tmp_path: Path) -> None:
    a, b, c = (_save(tmp_path, method, seed) for seed in (1, 2, 3))
    model = peftkit.PeftModel.from_pretrained(tiny_llama(), a)
    compiled = _compiled(model)
    inputs = text_inputs()
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inputs).logits, _loaded(a), atol=1e-5, rtol=0)
        with dynamo.config.patch(error_on_recompile=True):
            for folder in (b, c):
                peftkit.hotswap_adapter(compiled, folder, adapter_name="default")
                torch.testing.assert_close(compiled(**inputs).logits, _loaded(folder), atol=1e-5, rtol=0)
    dynamo.reset()


def test_lora_of_other_ranks_and_alphas_swaps_in_after_preparing(tmp_path: Path) -> None:
    a = _save(tmp_path, "lora", 1, r=4, lora_alpha=8)
    others = [_save(tmp_path, "lora", 2, r=8, lora_alpha=4), _save(tmp_path, "lora", 3, r=2, lora_alpha=16)]
    model = peftkit.PeftModel.from_pretrained(tiny_llama(), a)
    inputs = text_inputs()
    with torch.no_grad():
        before = model(**inputs).logits
        peftkit.prepare_model_for_compiled_hotswap(model, target_rank=8)
        torch.testing.assert_close(
            model(**inputs).logits, before, atol=1e-6, rtol=0
        )  # padding changes nothing
        compiled = _compiled(model)
        compiled(**inputs)
        with dynamo.config.patch(error_on_recompile=True):
            for folder in others:
                peftkit.hotswap_adapter(compiled, folder)
                torch.testing.assert_close(compiled(**inputs).logits, _loaded(folder), atol=1e-5, rtol=0)
    dynamo.reset()


def _state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("method", "loaded", "saved", "message"),
    [
        ("lora", {}, {"r": 8}, r"rank 8 is above the loaded rank 4.*prepare_model_for_compiled_hotswap"),
        ("lora", {}, {"target_modules": ["q_proj", "k_proj"]}, r"targets other layers"),
        ("lora", {}, {"use_rslora": True}, r"use_rslora: False -> True"),
        ("miss", {}, {"r": 8}, r"miss_block.*shape .* does not fit"),
        ("shira", {}, {"r": 8}, r"shira_.*shape .* does not fit"),
        (
            "oft",
            {},
            {"oft_block_size": 16},
            r"q_proj\.oft_R\.weight: shape \(2, 120\) does not fit the loaded \(4, 28\)",
        ),
        (
            "vera",
            {},
            {"projection_prng_key": 7},
            r"base_model\.vera_A: the method's model-level tensor .* differs",
        ),
        ("vera", {}, {"vera_dropout": 0.1}, r"vera_dropout: 0\.0 -> 0\.1"),
    ],
)
def test_a_swap_that_cannot_be_done_in_place_names_the_mismatch_and_changes_nothing(
    tmp_path: Path, method: str, loaded: dict[str, Any], saved: dict[str, Any], message: str
) -> None:
    model = peftkit.PeftModel.from_pretrained(tiny_llama(), _save(tmp_path, method, 1, **loaded))
    before, config = _state(model), model.peft_config["default"]
    with pytest.raises(peftkit.HotswapError, match=message):
        peftkit.hotswap_adapter(model, _save(tmp_path, method, 2, **saved))
    after = _state(model)
    assert all(torch.equal(after[k], v) for k, v in before.items()) and model.peft_config["default"] is config


def test_a_swap_between_methods_is_refused(tmp_path: Path) -> None:
    model = peftkit.PeftModel.from_pretrained(tiny_llama(), _save(tmp_path, "lora", 1))
    with pytest.raises(peftkit.HotswapError, match="MISS adapter into a LORA"):
        peftkit.hotswap_adapter(model, _save(tmp_path, "miss", 2))

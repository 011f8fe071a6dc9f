"""Every installed method on tiny bitsandbytes 8-bit and 4-bit Llamas, on CPU.

The core's backend suite (``TestBnbBackend``) runs each method on each quantization: training
leaves the quantized base untouched, adapters round-trip through save/load on a fresh quantized
base and across to the full-precision one, merging stays within the base's own rounding. The
tests below are bitsandbytes' own: its views, per-weight rounding bounds, fp4 with double
quantization, and CPU weight packing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import peftkit
from peftkit.testing import BackendSuite


@pytest.fixture(autouse=True)
def _quiet_int8_matmul() -> Iterator[None]:
    """bitsandbytes' 8-bit matmul logs a warning on every call that it casts float32 inputs to float16."""
    bnb_logger = logging.getLogger("bitsandbytes.autograd._functions")
    level = bnb_logger.level
    bnb_logger.setLevel(logging.ERROR)
    yield
    bnb_logger.setLevel(level)


VOCAB = 96
TARGETS = ["q_proj", "v_proj"]  # 64 -> 64 and 64 -> 32: bnb's CPU 4-bit kernel wants out % 32 == 0

# Configs for the suite where a method's defaults do not fit these sizes, and variants worth their own case;
# installed methods not listed run with their defaults.
METHOD_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "lora": ("lora", {"r": 4, "lora_alpha": 8}),
    "lora-dora": ("lora", {"r": 4, "lora_alpha": 8, "use_dora": True}),  # reads the dequantized weight
    "miss": ("miss", {"r": 8}),
    "miss-bat": ("miss", {"r": 8, "init_weights": "bat"}),  # its forward reads the dequantized weight
    "miss-mini": ("miss", {"r": 8, "init_weights": "mini", "mini_r": 4}),
    "shira": ("shira", {"r": 8}),
    "oft": ("oft", {"oft_block_size": 16}),
    "vera": ("vera", {"r": 8}),
    "ia3": ("ia3", {"feedforward_modules": ["v_proj"]}),  # v_proj scaled on its input, q_proj on its output
}


def quantization(kind: str) -> Any:
    from transformers import BitsAndBytesConfig

    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if kind == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
    # fp4 with double quantization and a bfloat16 compute dtype: the other 4-bit settings users pick.
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="fp4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


QUANTS = ["nf4", "int8"]
QUANT_LAYER = {"int8": "Linear8bitLt", "nf4": "Linear4bit", "fp4-bf16": "Linear4bit"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama saved once; each test loads its own quantized copy (the same bits every time)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def load(path: Path, quant: str | None) -> nn.Module:
    from transformers import LlamaForCausalLM

    kwargs = {} if quant is None else {"quantization_config": quantization(quant), "device_map": "cpu"}
    return LlamaForCausalLM.from_pretrained(path, **kwargs).eval()


def make_config(case: str) -> Any:
    method, fields = METHOD_CONFIGS[case]
    return peftkit.config(method, target_modules=TARGETS, **fields)


def batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (4, 12), generator=gen)
    return {"input_ids": ids, "labels": ids}


def logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"]).logits


def train(model: nn.Module, inputs: dict[str, torch.Tensor], steps: int = 6) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=2e-2)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(model(**inputs).loss.item())
    return losses


def perturb(model: nn.Module, scale: float = 0.02) -> None:
    """Push every adapter tensor away from where training left it, so the adapter clearly changes the
    output and merging it has something to get right."""
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen).to(param.dtype) * scale)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.filterwarnings("ignore:merging into")  # each merge warns that it re-quantizes
class TestBnbBackend(BackendSuite):
    """The core's backend suite: every installed linear method on the 4-bit and 8-bit Llama."""

    backend = "bnb"
    variants = QUANTS
    target_modules = TARGETS
    method_configs = METHOD_CONFIGS
    # Merging re-quantizes with row or block scales the adapter has grown, and 8-bit layers round their
    # inputs too: merged outputs move by up to about twice the base's own rounding, so allow three times.
    rounding = 3.0

    @pytest.fixture(autouse=True)
    def _checkpoint(self, checkpoint: Path) -> None:
        self.checkpoint = checkpoint

    def make_model(self, variant: str) -> nn.Module:
        return load(self.checkpoint, variant)

    def make_reference(self, variant: str) -> nn.Module:
        return load(self.checkpoint, None)

    def make_inputs(self, variant: str) -> dict[str, torch.Tensor]:
        return batch()


def test_the_suite_covers_every_method_bnb_cares_about() -> None:
    ids = {case.id for case in TestBnbBackend.cases()}
    assert {"nf4-lora", "nf4-miss-bat", "int8-lora-dora", "int8-miss"} <= ids


@pytest.mark.parametrize("quant", [*QUANTS, "fp4-bf16"])
def test_adapted_layers_get_the_bnb_view(checkpoint: Path, quant: str) -> None:
    from peftkit_bnb.views import Linear4bitView, Linear8bitView

    model = peftkit.get_peft_model(load(checkpoint, quant), peftkit.config("lora", target_modules=TARGETS))
    layer = model.get_base_model().model.layers[0].self_attn.v_proj
    expected = Linear8bitView if quant == "int8" else Linear4bitView
    assert type(layer.view) is expected and layer.view.layer_type == QUANT_LAYER[quant]
    assert (layer.view.in_features, layer.view.out_features) == (64, 32)
    # Adapters are float (fp32: a bf16 compute dtype is autocast up), never the int8/uint8 storage dtype.
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}


@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("case", ["lora", "miss-bat"])
def test_merging_rounds_each_weight_by_at_most_one_quantization_step(
    checkpoint: Path, case: str, quant: str
) -> None:
    inputs = batch()
    model = peftkit.get_peft_model(load(checkpoint, quant), make_config(case))
    perturb(model)
    unmerged = logits(model, inputs)
    with model.disable_adapter():
        effect = max_diff(unmerged, logits(model, inputs))
    check_merge(model, inputs, unmerged, effect, QUANT_LAYER[quant])


def check_merge(
    model: Any, inputs: dict[str, torch.Tensor], unmerged: torch.Tensor, effect: float, layer_type: str
) -> None:
    """merge_and_unload re-quantizes W + delta: each merged weight lies within half a quantization step
    of the exact one, and the merged model keeps the adapter's effect up to that rounding."""
    from peftkit_bnb.views import view_for

    exact = {
        path: layer.merged_weight(layer.view.read_weight().float(), "default")
        for path, layer in model.get_base_model().named_modules()
        if isinstance(layer, peftkit.AdapterLayer)
    }
    with pytest.warns(UserWarning, match="re-quantizes"):
        merged = model.merge_and_unload()
    for path, weight in exact.items():
        module = merged.get_submodule(path)
        assert type(module).__name__ == layer_type
        got = view_for(module).read_weight().float()
        assert ((got - weight).abs() <= rounding_bound(module, weight)).all(), path
    # Rounding may cost some of the adapter's effect on the outputs, but not more than a third of it.
    assert max_diff(logits(merged, inputs), unmerged) < effect / 3


def rounding_bound(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """Per element, how far quantizing ``weight`` into ``module``'s format may move it."""
    state = getattr(module.weight, "quant_state", None)
    if state is None:  # int8: one scale per row, 127 levels each side; the input is rounded to fp16 first
        row_max = weight.abs().amax(1, keepdim=True)
        return row_max * (0.5 / 127 + 1e-3) + 1e-6
    # 4-bit: 16 code values scaled by each block's absolute maximum; rounding moves a value by at most
    # half the widest gap between neighbouring codes. Double quantization also rounds the scale itself.
    half_gap = state.code.sort().values.diff().max().item() / 2
    slack = 0.02 if state.nested else 1e-3
    blocks = weight.reshape(-1, state.blocksize).abs().amax(1, keepdim=True)
    return ((half_gap + slack) * blocks).expand(-1, state.blocksize).reshape(weight.shape) + 1e-6


def test_fp4_double_quant_bf16_compute_trains_and_merges(checkpoint: Path, tmp_path: Path) -> None:
    inputs = batch()
    for case in ("lora", "miss-bat"):
        model = peftkit.get_peft_model(load(checkpoint, "fp4-bf16"), make_config(case))
        losses = train(model, inputs)
        assert losses[-1] < losses[0] - 0.01, (case, losses)
        perturb(model)
        unmerged = logits(model, inputs)
        model.save_pretrained(tmp_path / case)
        loaded = peftkit.PeftModel.from_pretrained(load(checkpoint, "fp4-bf16"), tmp_path / case)
        assert max_diff(logits(loaded, inputs), unmerged) < 1e-5
        with model.disable_adapter():
            effect = max_diff(unmerged, logits(model, inputs))
        check_merge(model, inputs, unmerged, effect, "Linear4bit")


def test_training_after_an_eval_forward_still_gets_gradients(checkpoint: Path, packs: bool) -> None:
    # On AVX512-BF16 CPUs bitsandbytes packs 4-bit weights for inference at the first eval forward;
    # that kernel has no backward. The adapted layers' view unpacks them when training resumes.
    inputs = batch()
    model = peftkit.get_peft_model(
        load(checkpoint, "nf4"), peftkit.config("lora", target_modules="all-linear")
    )
    logits(model, inputs)  # eval, no grad: packs where the CPU lets bitsandbytes
    state = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight.quant_state
    assert bool(getattr(state, "packing_format_for_cpu", False)) == packs
    model.train()
    model(**inputs).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


def test_saving_leaves_a_4bit_model_unchanged(checkpoint: Path, tmp_path: Path, packs: bool) -> None:
    # bitsandbytes 0.50 unpacks CPU-packed 4-bit weights in place, with wrongly ordered block scales,
    # whenever a layer's state_dict() is taken; peftkit's save must never ask the base layers for it.
    inputs = batch()
    targets = ["down_proj", "v_proj"]  # down_proj has 128 inputs: two scale blocks per row
    model = peftkit.get_peft_model(load(checkpoint, "nf4"), peftkit.config("lora", target_modules=targets))
    perturb(model)
    before = logits(model, inputs)  # eval, no grad: packs where the CPU lets bitsandbytes
    state = model.get_base_model().model.layers[0].mlp.down_proj.base_layer.weight.quant_state
    assert bool(getattr(state, "packing_format_for_cpu", False)) == packs
    model.save_pretrained(tmp_path)
    assert torch.equal(logits(model, inputs), before)
    loaded = peftkit.PeftModel.from_pretrained(load(checkpoint, "nf4"), tmp_path)
    assert max_diff(logits(loaded, inputs), before) < 1e-5

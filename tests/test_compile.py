"""torch.compile on transformers models: one graph per method, and one inductor run end to end.

The conformance suite holds every method to one graph on the tiny hand-made models (aot_eager);
these add a transformers Llama in training mode and with adapters disabled, and compile a LoRA
training step with the default inductor backend, comparing loss and gradients with eager.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch._dynamo as dynamo
from _models import text_inputs, tiny_llama

import peftkit

METHODS: dict[str, dict[str, Any]] = {
    "lora": {"r": 4, "init_lora_weights": False},
    "lora-dora": {"r": 4, "init_lora_weights": False, "use_dora": True},
    "miss": {"r": 4, "init_weights": False},
    "miss-bat": {"r": 4, "init_weights": "bat"},
    "vera": {"r": 4, "init_weights": False},
    "shira": {"r": 4, "init_weights": False},
    "oft": {"r": 0, "oft_block_size": 8, "init_weights": False},
}


def _model(case: str) -> Any:
    torch.manual_seed(0)
    method = case.split("-")[0]
    return peftkit.get_peft_model(
        tiny_llama(), peftkit.config(method, target_modules=["q_proj", "v_proj"], **METHODS[case])
    )


@pytest.mark.parametrize("case", list(METHODS))
def test_a_transformers_model_compiles_as_one_graph_training_and_disabled(case: str) -> None:
    model = _model(case).train()
    inputs = {**text_inputs(), "labels": text_inputs()["input_ids"]}
    dynamo.reset()
    explained = dynamo.explain(model)(**inputs)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons[:3]
    with model.disable_adapter():
        dynamo.reset()
        explained = dynamo.explain(model)(**inputs)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons[:3]
    dynamo.reset()


def test_a_lora_training_step_under_inductor_matches_eager() -> None:
    model = _model("lora").train()
    inputs = {**text_inputs(), "labels": text_inputs()["input_ids"]}

    def step(run: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = run(**inputs).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    eager_loss, eager_grads = step(model)
    dynamo.reset()
    compiled_loss, compiled_grads = step(torch.compile(model, fullgraph=True))
    torch.testing.assert_close(compiled_loss, eager_loss, atol=1e-5, rtol=1e-5)
    assert compiled_grads.keys() == eager_grads.keys() and eager_grads
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    dynamo.reset()


@pytest.mark.parametrize("case", list(METHODS))
def test_per_sample_adapter_batches_compile_as_one_graph_per_grouping(case: str) -> None:
    model = _model(case).eval()
    torch.manual_seed(1)
    method = case.split("-")[0]
    model.add_adapter("b", peftkit.config(method, target_modules=["q_proj", "v_proj"], **METHODS[case]))
    inputs, names = text_inputs(), ["b", "default"]
    dynamo.reset()
    explained = dynamo.explain(model)(**inputs, adapter_names=names)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons[:3]
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        expected = model(**inputs, adapter_names=names).logits
        torch.testing.assert_close(
            compiled(**inputs, adapter_names=names).logits, expected, atol=1e-5, rtol=1e-5
        )
        with dynamo.config.patch(error_on_recompile=True):  # the same grouping again reuses the graph
            torch.testing.assert_close(
                compiled(**inputs, adapter_names=list(names)).logits, expected, atol=1e-5, rtol=1e-5
            )
    dynamo.reset()


PROMPT_METHODS = {"prompt_tuning": {}, "p_tuning": {"encoder_hidden_size": 16}, "prefix_tuning": {}}


@pytest.mark.parametrize("method", list(PROMPT_METHODS))
def test_prompt_learning_compiles_as_one_graph_with_eager_outputs(method: str) -> None:
    torch.manual_seed(0)
    config = peftkit.config(method, task_type="CAUSAL_LM", num_virtual_tokens=4, **PROMPT_METHODS[method])
    model = peftkit.get_peft_model(tiny_llama(), config).eval()
    inputs = text_inputs()
    dynamo.reset()
    explained = dynamo.explain(model)(**inputs)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons[:3]
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=1e-5)
    dynamo.reset()

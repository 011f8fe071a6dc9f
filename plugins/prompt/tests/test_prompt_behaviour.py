"""Prompt tuning, prefix tuning and p-tuning in peftkit: training, saving, loading, errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import peftkit
from peftkit.cli import main as cli_main

VOCAB, HIDDEN, N = 64, 16, 3


def tiny_llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def tiny_bert_tokens() -> Any:
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=32, num_labels=3,
    )  # fmt: skip
    return BertForTokenClassification(config).eval()


def batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(1, VOCAB, (2, 5), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


CONFIGS = {
    "prompt_tuning": {},
    "prefix_tuning": {},
    "prefix_projected": {"prefix_projection": True, "encoder_hidden_size": 8},
    "p_tuning": {"encoder_hidden_size": 8},
}


def make(kind: str, **extra: Any) -> Any:
    method = "prefix_tuning" if kind == "prefix_projected" else kind
    cfg = peftkit.config(method, task_type="CAUSAL_LM", num_virtual_tokens=N, **CONFIGS[kind], **extra)
    return peftkit.get_peft_model(tiny_llama(), cfg)


# Trainable parameters: prompt (N x hidden); prefix (N x layers*2*kv_dim, kv_dim = 2 heads x 4);
# projected prefix (embedding of kv_dim 8 + Linear(8, 8) + Linear(8, 2*2*8)); p-tuning MLP (16->8->8->16).
EXPECTED_TRAINABLE = {
    "prompt_tuning": N * HIDDEN,
    "prefix_tuning": N * 2 * 2 * 8,
    "prefix_projected": N * 8 + (8 * 8 + 8) + (8 * 32 + 32),
    "p_tuning": N * HIDDEN + (HIDDEN * 8 + 8) + (8 * 8 + 8) + (8 * HIDDEN + HIDDEN),
}


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_counts_and_training_touch_only_the_prompt_encoder(
    kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = make(kind)
    base_total = sum(p.numel() for p in model.get_base_model().parameters())
    trainable, total = model.get_nb_trainable_parameters()
    assert (trainable, total) == (EXPECTED_TRAINABLE[kind], base_total + EXPECTED_TRAINABLE[kind])
    model.print_trainable_parameters()
    assert f"trainable params: {trainable:,d} || all params: {total:,d}" in capsys.readouterr().out
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    losses = []
    for _ in range(3):
        loss = model(**batch()).loss
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".prompt_encoder.default." in n for n in changed)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_round_trip_config_filled_in_and_inspect(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = make(kind).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    expected = model(**batch()).logits
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["num_layers"] == 2 and saved["num_transformer_submodules"] == 1
    assert (saved["token_dim"], saved["num_attention_heads"]) == ((8, 2) if "prefix" in kind else (HIDDEN, 4))
    assert "target_modules" not in saved
    loaded = peftkit.PeftModel.from_pretrained(tiny_llama(), tmp_path)
    torch.testing.assert_close(loaded(**batch()).logits, expected)
    assert loaded.get_nb_trainable_parameters()[0] == 0
    assert cli_main(["inspect", str(tmp_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["method"] == ("prefix_tuning" if kind == "prefix_projected" else kind)
    assert [t["name"] for t in doc["tensors"]] == ["prompt_embeddings"]


def test_virtual_tokens_change_the_output_and_disable_adapter_restores_the_base() -> None:
    model = make("prompt_tuning").eval()
    plain = tiny_llama()(**batch()).logits
    with torch.no_grad():
        out = model(**batch())
        with model.disable_adapter():
            disabled = model(**batch()).logits
    assert out.logits.shape == (2, N + 5, VOCAB)  # one position per virtual token, as in Hugging Face PEFT
    assert not torch.allclose(out.logits[:, N:], plain, atol=1e-3)
    torch.testing.assert_close(disabled, plain)


def test_loaded_prompt_tuning_adapter_keeps_training(tmp_path: Path) -> None:
    make("prompt_tuning").save_pretrained(tmp_path)
    model = peftkit.PeftModel.from_pretrained(tiny_llama(), tmp_path, is_trainable=True)
    assert model.get_nb_trainable_parameters()[0] == N * HIDDEN
    model(**batch()).loss.backward()
    assert model.base_model.prompt_encoder["default"].embedding.weight.grad is not None


@pytest.mark.parametrize("kind", ["p_tuning", "prefix_projected"])
def test_output_tables_cannot_be_trained_further(kind: str, tmp_path: Path) -> None:
    make(kind).save_pretrained(tmp_path)
    base = tiny_llama()
    with pytest.raises(peftkit.ConfigError, match="cannot be trained further"):
        peftkit.PeftModel.from_pretrained(base, tmp_path, is_trainable=True)
    assert all(p.requires_grad for p in base.parameters()) and not hasattr(base, "peft_config")


def test_prefix_tuning_refuses_gradient_checkpointing() -> None:
    base = tiny_llama()
    base.gradient_checkpointing_enable()
    with pytest.raises(peftkit.ConfigError, match="gradient checkpointing"):
        peftkit.get_peft_model(
            base, peftkit.config("prefix_tuning", task_type="CAUSAL_LM", num_virtual_tokens=N)
        )
    model = make("prefix_tuning")
    model.get_base_model().gradient_checkpointing_enable()
    model.train()
    with pytest.raises(peftkit.ConfigError, match="gradient checkpointing"):
        model(**batch())


def test_prompt_tuning_works_with_gradient_checkpointing() -> None:
    model = make("prompt_tuning")
    model.get_base_model().gradient_checkpointing_enable()
    model.train()
    model(**batch()).loss.backward()
    assert model.base_model.prompt_encoder["default"].embedding.weight.grad is not None


def test_text_init_copies_the_texts_token_embeddings(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "hello", "prompt", "world"])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]").save_pretrained(tmp_path)
    cfg = peftkit.config(
        "prompt_tuning", task_type="CAUSAL_LM", num_virtual_tokens=5, prompt_tuning_init="TEXT",
        prompt_tuning_init_text="hello world", tokenizer_name_or_path=str(tmp_path),
    )  # fmt: skip
    model = peftkit.get_peft_model(tiny_llama(), cfg)
    table = model.base_model.prompt_encoder["default"].embedding.weight
    words = model.get_base_model().get_input_embeddings().weight[[1, 3, 1, 3, 1]]
    torch.testing.assert_close(table, words)  # the text's tokens, repeated to num_virtual_tokens


def test_token_classification_pads_labels() -> None:
    cfg = peftkit.config("prompt_tuning", task_type="TOKEN_CLS", num_virtual_tokens=N)
    model = peftkit.get_peft_model(tiny_bert_tokens(), cfg)
    inputs = batch()
    inputs["labels"] = inputs["labels"] % 3
    out = model(**inputs, token_type_ids=torch.ones_like(inputs["input_ids"]))
    assert out.logits.shape == (2, N + 5, 3) and torch.isfinite(out.loss)
    assert model.get_nb_trainable_parameters()[0] == N * HIDDEN + HIDDEN * 3 + 3  # prompt + classifier head


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task_type": "CAUSAL_LM"}, "num_virtual_tokens"),
        (
            {"task_type": "CAUSAL_LM", "num_virtual_tokens": 2, "target_modules": ["q_proj"]},
            "has no target_modules field",
        ),
        ({"task_type": "CAUSAL_LM", "num_virtual_tokens": 2, "prompt_tuning_init": "TEXT"}, "tokenizer"),
        ({"task_type": "CAUSAL_LM", "num_virtual_tokens": 2, "prompt_tuning_init": "SOMETHING"}, "RANDOM"),
    ],
)
def test_bad_configs_are_explained(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(peftkit.ConfigError, match=message):
        peftkit.config("prompt_tuning", **kwargs)


def test_task_type_is_required_and_model_left_alone() -> None:
    base = tiny_llama()
    with pytest.raises(peftkit.ConfigError, match="task_type"):
        peftkit.get_peft_model(base, peftkit.config("p_tuning", num_virtual_tokens=2))
    assert all(p.requires_grad for p in base.parameters())


def test_plugin_module_imports_no_torch() -> None:
    import subprocess

    code = "import sys, peftkit_prompt; peftkit_prompt.peftkit_register_methods(lambda m: None); print('torch' in sys.modules)"
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "False"
    )

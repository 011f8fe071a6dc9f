"""OFT in peftkit vs Hugging Face PEFT on a small Llama built from a config (no download).

Both libraries get the same ``OFTConfig`` fields (``oft_block_size`` on all seven projection
types), in both rotation modes (Cayley-Neumann, the default, and the exact Cayley transform).
Each (library, mode) pair is measured in a fresh subprocess per repeat, the pairs taking turns
so that a change in machine load hits them alike:

* adapter creation: ``get_peft_model`` on a freshly built base (base build not timed; the first
  creation in the process, which pays imports and plugin discovery, is discarded);
* training step: forward + backward + AdamW step on a fixed batch of token ids (median of
  ``--steps`` steps after ``--warmup``);
* merge: ``merge_and_unload()`` of an adapter whose generators were moved off zero (median of
  ``--merges`` fresh models, after one untimed merge).

Reported figures are medians over ``--repeats`` subprocesses. Example::

    .venv/bin/python bench/bench_oft.py            # table
    .venv/bin/python bench/bench_oft.py --json     # machine-readable
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LIBRARIES = ("peftkit", "peft")
MODES = {"neumann": True, "cayley": False}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=768, help="a multiple of --block-size")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--creations", type=int, default=3, help="adapter creations timed per subprocess")
    parser.add_argument("--merges", type=int, default=3, help="merges timed per subprocess")
    parser.add_argument("--repeats", type=int, default=3, help="subprocesses per (library, mode)")
    parser.add_argument("--modes", default="neumann,cayley", help=f"comma-separated, from {tuple(MODES)}")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build_base(args: argparse.Namespace) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=args.seq,
    )
    return LlamaForCausalLM(config)


def wrap(library: str, mode: str, base: Any, args: argparse.Namespace) -> Any:
    """``base`` with an OFT adapter made by ``library``."""
    kwargs = {
        "oft_block_size": args.block_size,
        "r": 0,
        "use_cayley_neumann": MODES[mode],
        "target_modules": TARGETS,
    }
    if library == "peft":
        import peft

        return peft.get_peft_model(base, peft.OFTConfig(**kwargs))
    import peftkit

    return peftkit.get_peft_model(base, peftkit.config("oft", **kwargs))


def _perturb(model: Any) -> None:
    import torch

    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.01 * torch.randn(param.shape, generator=gen))


def run_child(label: str, args: argparse.Namespace) -> dict[str, Any]:
    """Measure one (library, mode) pair in this process and return the raw figures."""
    import warnings

    import torch

    warnings.simplefilter("ignore")
    library, mode = label.split(":")
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))

    wrap(library, mode, build_base(args), args)  # imports and discovery, not timed
    creations = []
    for _ in range(args.creations):
        base = build_base(args)
        start = time.perf_counter()
        wrap(library, mode, base, args)
        creations.append(time.perf_counter() - start)

    model = wrap(library, mode, build_base(args), args)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    steps = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= args.warmup:
            steps.append(time.perf_counter() - start)
    del model, optimizer

    merges = []
    for i in range(args.merges + 1):
        model = wrap(library, mode, build_base(args), args)
        _perturb(model)
        model.eval()
        start = time.perf_counter()
        with torch.no_grad():
            model.merge_and_unload()
        if i > 0:  # the first merge pays one-time kernel and linear-algebra initialisation
            merges.append(time.perf_counter() - start)
    return {
        "trainable_params": trainable,
        "create_s": statistics.median(creations),
        "step_s": statistics.median(steps),
        "merge_s": statistics.median(merges),
    }


def _child(label: str, argv: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--child", label]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{label}: benchmark subprocess failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(labels: list[str], args: argparse.Namespace, argv: list[str]) -> list[dict[str, Any]]:
    """Median figures per (library, mode) over ``args.repeats`` fresh subprocesses, taking turns."""
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    for _ in range(args.repeats):
        for label in labels:
            runs[label].append(_child(label, argv))
    results = []
    for label in labels:
        library, mode = label.split(":")
        out: dict[str, Any] = {
            "library": library,
            "mode": mode,
            "trainable_params": runs[label][0]["trainable_params"],
        }
        for key in ("create_s", "step_s", "merge_s"):
            out[key] = statistics.median(r[key] for r in runs[label])
            out[key + "_all"] = [r[key] for r in runs[label]]
        results.append(out)
    return results


def print_table(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    import torch

    print(
        f"Llama hidden={args.hidden} intermediate={args.intermediate} layers={args.layers} vocab={args.vocab}; "
        f"OFT oft_block_size={args.block_size} on {'/'.join(t.split('_')[0] for t in TARGETS)}; "
        f"batch {args.batch}x{args.seq} tokens; CPU, torch threads {torch.get_num_threads()}; "
        f"medians of {args.repeats} subprocesses"
    )
    header = f"{'library':<9} {'mode':<8} {'trainable':>10} {'create ms':>10} {'step ms':>9} {'merge ms':>9}"
    print(header)
    print("-" * len(header))
    for row in results:
        print(
            f"{row['library']:<9} {row['mode']:<8} {row['trainable_params']:>10,d} {row['create_s'] * 1e3:>10.1f} "
            f"{row['step_s'] * 1e3:>9.1f} {row['merge_s'] * 1e3:>9.1f}"
        )


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.child, args)))
        return
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise SystemExit(f"unknown mode(s) {unknown}; choose from {tuple(MODES)}")
    labels = [f"{library}:{mode}" for mode in modes for library in LIBRARIES]
    child_argv = [a for a in argv if a != "--json"]
    results = measure(labels, args, child_argv)
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "child"}
        print(json.dumps({"settings": settings, "results": results}, indent=2))
    else:
        print_table(results, args)


if __name__ == "__main__":
    main()

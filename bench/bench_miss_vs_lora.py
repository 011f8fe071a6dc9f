"""MiSS vs LoRA at about equal trainable parameters on a small Llama built from a config.

For each method this measures, in a fresh subprocess per repeat (so one measurement never
inherits another's allocations or warm caches):

* adapter creation time: ``peftkit.get_peft_model`` on a freshly built base (the base build is
  not timed; the first creation in the process, which also discovers plugins, is discarded);
* training-step time: forward + backward + AdamW step on a fixed batch of token ids (median of
  ``--steps`` steps after ``--warmup`` steps);
* peak training memory: the growth of the process's peak resident set size
  (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) from just before the first training step to
  the end of the timed steps, i.e. activations, gradients and optimizer state beyond what the
  model and adapter already occupy. It is what the OS had to give the process, allocator
  caching included; it is not a per-tensor account.

Reported figures are medians over ``--repeats`` subprocesses. Example::

    .venv/bin/python bench/bench_miss_vs_lora.py            # table
    .venv/bin/python bench/bench_miss_vs_lora.py --json     # machine-readable
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
METHODS = ("lora", "miss", "miss-bat", "miss-mini")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument(
        "--intermediate", type=int, default=1408, help="a multiple of --miss-r so that the bat variant fits"
    )
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument(
        "--miss-r",
        type=int,
        default=64,
        help="MiSS shard size r; LoRA's rank is matched to its parameter count",
    )
    parser.add_argument(
        "--mini-r", type=int, default=64, help="mini_r of the miss-mini row (fewer parameters by design)"
    )
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--creations", type=int, default=3, help="adapter creations timed per subprocess")
    parser.add_argument("--repeats", type=int, default=3, help="subprocesses per method")
    parser.add_argument("--methods", default=",".join(METHODS[:3]), help=f"comma-separated, from {METHODS}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- sizes ------------------------------------------------------------------------------------
def _projection_shapes(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(in, out) of every targeted projection in the model."""
    h, m = args.hidden, args.intermediate
    per_layer = [(h, h)] * 4 + [(h, m), (h, m), (m, h)]
    return per_layer * args.layers


def miss_params(args: argparse.Namespace) -> int:
    return sum(args.miss_r * out for _, out in _projection_shapes(args))


def lora_rank(args: argparse.Namespace) -> int:
    """The LoRA rank whose trainable-parameter count is closest to MiSS balance's."""
    per_rank = sum(i + o for i, o in _projection_shapes(args))
    return max(1, round(miss_params(args) / per_rank))


def method_config(name: str, args: argparse.Namespace) -> Any:
    import peftkit

    if name == "lora":
        r = lora_rank(args)
        return peftkit.config("lora", r=r, lora_alpha=2 * r, target_modules=TARGETS)
    init = {"miss": True, "miss-bat": "bat", "miss-mini": "mini"}[name]
    return peftkit.config(
        "miss", r=args.miss_r, init_weights=init, mini_r=args.mini_r, target_modules=TARGETS
    )


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
    return LlamaForCausalLM(config).to(args.device)


# --- one subprocess ---------------------------------------------------------------------------
def _max_rss_mib() -> float:
    import resource

    # Linux reports kilobytes, macOS bytes.
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_child(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Measure one method in this process and return the raw figures."""
    import warnings

    import torch

    import peftkit

    warnings.simplefilter("ignore")
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen).to(args.device)

    peftkit.get_peft_model(build_base(args), method_config(name, args))  # discovery and imports, not timed
    model = peftkit.get_peft_model(build_base(args), method_config(name, args))
    trainable, _ = model.get_nb_trainable_parameters()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated() / 2**20
    rss_before = _max_rss_mib()
    times = []
    for step in range(args.warmup + args.steps):
        _sync(args.device)
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(args.device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    if args.device.startswith("cuda"):
        peak_mib = torch.cuda.max_memory_allocated() / 2**20 - base_mem
    else:
        peak_mib = _max_rss_mib() - rss_before
    del model, optimizer

    creations = []
    for _ in range(args.creations):
        base = build_base(args)
        _sync(args.device)
        start = time.perf_counter()
        peftkit.get_peft_model(base, method_config(name, args))
        _sync(args.device)
        creations.append(time.perf_counter() - start)
        del base
    return {
        "trainable_params": trainable,
        "step_s": statistics.median(times),
        "create_s": statistics.median(creations),
        "peak_train_mib": peak_mib,
    }


# --- driver -----------------------------------------------------------------------------------
def _child(name: str, argv: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--child", name]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: benchmark subprocess failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(names: list[str], args: argparse.Namespace, argv: list[str]) -> list[dict[str, Any]]:
    """Median figures per method over ``args.repeats`` fresh subprocesses.

    Methods take turns within each repeat, so a change in machine load hits them all alike.
    """
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            runs[name].append(_child(name, argv))
    results = []
    for name in names:
        out: dict[str, Any] = {"method": name, "trainable_params": runs[name][0]["trainable_params"]}
        for key in ("create_s", "step_s", "peak_train_mib"):
            out[key] = statistics.median(r[key] for r in runs[name])
            out[key + "_all"] = [r[key] for r in runs[name]]
        results.append(out)
    return results


def _describe(name: str, args: argparse.Namespace) -> str:
    if name == "lora":
        return f"lora r={lora_rank(args)}"
    if name == "miss-mini":
        return f"miss mini r={args.miss_r} mini_r={args.mini_r}"
    return f"{name.replace('-', ' ')} r={args.miss_r}" + ("" if name != "miss" else " (balance)")


def print_table(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    import torch

    print(
        f"Llama hidden={args.hidden} intermediate={args.intermediate} layers={args.layers} vocab={args.vocab}; "
        f"targets {'/'.join(t.split('_')[0] for t in TARGETS)}; batch {args.batch}x{args.seq} tokens; "
        f"device {args.device}, torch threads {torch.get_num_threads()}; medians of {args.repeats} subprocesses"
    )
    memory = (
        "peak train MiB (CUDA alloc)" if args.device.startswith("cuda") else "peak train MiB (maxRSS delta)"
    )
    header = f"{'method':<28} {'trainable':>10} {'create ms':>10} {'step ms':>9} {memory:>30}"
    print(header)
    print("-" * len(header))
    for row in results:
        print(
            f"{_describe(row['method'], args):<28} {row['trainable_params']:>10,d} {row['create_s'] * 1e3:>10.1f} "
            f"{row['step_s'] * 1e3:>9.1f} {row['peak_train_mib']:>30.1f}"
        )


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.child, args)))
        return
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {METHODS}")
    child_argv = [a for a in argv if a != "--json"]
    results = measure(names, args, child_argv)
    if args.json:
        print(
            json.dumps(
                {"settings": {k: v for k, v in vars(args).items() if k != "child"}, "results": results},
                indent=2,
            )
        )
    else:
        print_table(results, args)


if __name__ == "__main__":
    main()

"""LoRA in peftkit vs Hugging Face PEFT, in one process, interleaved, medians.

Measures adapter creation (get_peft_model), one training step (forward + backward + AdamW) and
merge_and_unload on a Llama-shaped model built from a config. Run:

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_lora.py [--hidden 1024 --layers 4 --repeats 5 --json]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import time
from collections.abc import Callable

import torch
from transformers import LlamaConfig, LlamaForCausalLM

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_base(hidden: int, layers: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=4096,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 128,
    )
    return LlamaForCausalLM(cfg)


def libraries(r: int) -> dict[str, tuple[Callable, object]]:
    import peft

    import peftkit

    return {
        "peftkit": (
            peftkit.get_peft_model,
            peftkit.config("lora", r=r, lora_alpha=2 * r, target_modules=TARGETS),
        ),
        "peft": (peft.get_peft_model, peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS)),
    }


def timed(fn: Callable[..., object], *args: object) -> tuple[float, object]:
    gc.collect()
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ids: torch.Tensor) -> None:
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    base = build_base(args.hidden, args.layers)
    libs = libraries(args.r)
    ids = torch.randint(0, 4096, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    samples: dict[str, dict[str, list[float]]] = {
        name: {"create": [], "step": [], "merge": []} for name in libs
    }
    for repeat in range(args.repeats):
        order = list(libs.items())
        # Interleaved, and the library that goes first alternates: drift and one-off warm-up hit both alike.
        for name, (get_peft_model, cfg) in order if repeat % 2 == 0 else order[::-1]:
            model_copy = copy.deepcopy(base)
            seconds, model = timed(get_peft_model, model_copy, copy.deepcopy(cfg))
            samples[name]["create"].append(seconds)
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            train_step(model, opt, ids)  # warm-up
            seconds, _ = timed(train_step, model, opt, ids)
            samples[name]["step"].append(seconds)
            seconds, _ = timed(model.merge_and_unload)
            samples[name]["merge"].append(seconds)
            del model, opt, model_copy
    return {n: {k: statistics.median(v) for k, v in m.items()} for n, m in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args)
    if args.json:
        print(json.dumps({"args": vars(args), "median_seconds": result}, indent=2))
        return
    print(
        f"LoRA r={args.r} on Llama hidden={args.hidden} layers={args.layers}, batch {args.batch}x{args.seq}, "
        f"median of {args.repeats}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"{'metric':<8} {'peftkit':>10} {'peft':>10} {'ratio':>7}")
    for metric in ("create", "step", "merge"):
        a, b = result["peftkit"][metric], result["peft"][metric]
        print(f"{metric:<8} {a * 1000:>8.1f}ms {b * 1000:>8.1f}ms {a / b:>7.2f}")


if __name__ == "__main__":
    main()

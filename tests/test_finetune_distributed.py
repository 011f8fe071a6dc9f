"""Two-process data-parallel ``peftkit finetune`` (torchrun, gloo on CPU): both ranks end with one adapter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _finetune_models import save_tiny_lm, write_jsonl
from safetensors.torch import load_file

from peftkit.finetune.distributed import digest


@pytest.mark.slow
def test_two_processes_train_one_adapter(tmp_path: Path) -> None:
    model = save_tiny_lm(tmp_path / "tiny-lm")
    train_file = write_jsonl(
        tmp_path / "train.jsonl",
        [{"prompt": f"{i} doubled is ", "completion": str(2 * i)} for i in range(40)],
    )
    out = tmp_path / "adapter"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "peftkit", "finetune", "--method", "lora", "--model", str(model), "--data", str(train_file),
        "--steps", "6", "--batch-size", "2", "--lr", "1e-2", "--output", str(out), "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr

    digests = dict(re.findall(r"rank (\d): adapter sha256 ([0-9a-f]{64})", done.stdout))
    assert sorted(digests) == ["0", "1"], done.stdout
    assert digests["0"] == digests["1"]
    # Rank 0 saved exactly the adapter both ranks hold, and training moved it off its zero start.
    saved = load_file(out / "adapter_model.safetensors")
    assert digest(saved) == digests["0"]
    assert all(t.abs().sum() > 0 for k, t in saved.items() if "lora_B" in k)
    assert "6 steps x 2 examples x 2 process(es)" in done.stdout
    assert done.stdout.count("Summary") == 1  # only rank 0 reports

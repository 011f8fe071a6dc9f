"""``peftkit bench``: one tiny run through the CLI, checked for structure (never for timings)."""

from __future__ import annotations

import json
import os

import pytest

from peftkit import cli

TINY = ["--hidden", "64", "--layers", "1", "--vocab", "128", "--batch", "2", "--seq", "8"]
ONCE = ["--repeats", "1", "--inner", "1", "--steps", "1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    chart = str(tmp_path_factory.mktemp("bench") / "ratios.png")
    capture = tmp_path_factory.mktemp("out") / "stdout.json"
    import contextlib

    with open(capture, "w") as fh, contextlib.redirect_stdout(fh):
        status = cli.main(["bench", *TINY, *ONCE, "--methods", "lora", "--json", "--chart", chart])
    assert status == 0
    return json.loads(capture.read_text()), chart


def test_bench_json_has_every_metric_for_both_libraries(tiny_run: tuple[dict, str]) -> None:
    doc, _ = tiny_run
    assert doc["settings"]["methods"] == ["lora"]
    assert doc["settings"]["options"]["lora"]["r"] == 16
    env = doc["environment"]
    assert env["peft"] and env["torch"] and env["transformers"] and env["peftkit"]
    assert env["load_average"]["min"] <= env["load_average"]["max"]
    assert doc["floor"]["step_s"] > 0 and doc["floor"]["peak_mib"] >= 0 and doc["floor"]["tensor_mib"] > 0
    (row,) = doc["results"]
    assert row["method"] == "lora"
    metrics = {
        "create_s",
        "step_s",
        "peak_mib",
        "tensor_mib",
        "merge_s",
        "save_s",
        "load_s",
        "file_bytes",
        "trainable",
    }
    for library in ("peftkit", "peft"):
        figures = row[library]
        assert metrics <= set(figures)
        assert all(figures[m] > 0 for m in metrics - {"peak_mib"})
        assert len(figures["step_s_all"]) == 1  # one repeat
    assert 0 < row["floor_step_s"]
    # Both libraries built the same adapter: same trainable parameters and the same file size.
    assert row["peftkit"]["trainable"] == row["peft"]["trainable"]
    assert row["ratio"]["trainable"] == pytest.approx(1.0)
    assert row["ratio"]["create_s"] == pytest.approx(row["peftkit"]["create_s"] / row["peft"]["create_s"])
    assert set(row["target"]) == {"create_s", "step_s", "peak_mib", "tensor_mib", "merge_s", "load_s"}
    assert set(row["missed"]) <= set(row["target"])


def test_bench_draws_the_ratio_chart(tiny_run: tuple[dict, str]) -> None:
    doc, chart = tiny_run
    assert doc["chart"] == os.path.abspath(chart)
    with open(chart, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bench_rejects_an_unknown_method(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", *ONCE, "--methods", "lora,nosuch"]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "nosuch" in err and "installed" in err


def test_bench_rejects_bad_method_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--method-options", "{r: 8}"]) == cli.EXIT_USER_ERROR
    assert "--method-options" in capsys.readouterr().err


def test_bench_says_where_it_looked_for_the_runner(
    tmp_path: os.PathLike[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["bench", "--bench-dir", str(tmp_path)]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "peftkit_bench.py" in err and str(tmp_path) in err and "checkout" in err


def test_tensor_peak_counts_what_a_block_holds_at_once() -> None:
    import importlib.util

    import torch

    from peftkit.bench_cli import find_runner

    spec = importlib.util.spec_from_file_location("peftkit_bench", find_runner())
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def two_mib_then_one() -> None:
        a = torch.ones(2**18)  # 1 MiB of float32
        b = a + 1  # 2 MiB alive
        del a, b
        c = torch.zeros(2**18)  # 1 MiB again: the peak stays at 2
        del c

    assert bench.peak_tensor_mib(two_mib_then_one) == pytest.approx(2.0)

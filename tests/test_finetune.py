"""``peftkit finetune`` on a tiny local model: user data, the built-in task, bad input, and the pieces."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
import torch
from _finetune_models import save_tiny_lm, tiny_tokenizer, write_jsonl
from safetensors.torch import load_file

import peftkit
from peftkit.cli import main
from peftkit.finetune import data, options, task
from peftkit.finetune.errors import FinetuneError
from peftkit.finetune.train import completion_loss, lr_factor


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("tiny-lm"))


def _pairs(count: int) -> list[dict[str, str]]:
    return [{"prompt": f"{i} plus one is ", "completion": str(i + 1)} for i in range(count)]


def test_finetune_lora_on_user_data(
    tiny_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train_file = write_jsonl(tmp_path / "my.jsonl", _pairs(24))
    out = tmp_path / "adapter"
    status = main(
        ["finetune", "--method", "lora", "--model", str(tiny_lm), "--data", str(train_file), "--steps", "20",
         "--batch-size", "4", "--set", "r=4", "--set", 'target_modules=["q_proj","v_proj"]', "--lr", "5e-3",
         "--output", str(out), "--no-progress"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert status == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    tensors = load_file(out / "adapter_model.safetensors")
    assert len(tensors) == 2 * 2 * 2  # A and B of q_proj and v_proj in two layers
    # LoRA B starts at zero: a non-zero B means the optimizer really stepped.
    assert all(t.abs().sum() > 0 for k, t in tensors.items() if "lora_B" in k)
    assert "8,192 trainable parameters" in printed or "trainable" in printed
    assert re.search(r"loss\s+\d+\.\d+ \(first tenth\) -> \d+\.\d+ \(last tenth\)", printed)

    from transformers import AutoModelForCausalLM

    loaded = peftkit.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_lm), out)
    for key, value in tensors.items():
        module_path = key.removeprefix("base_model.model.").replace(".weight", ".default.weight")
        assert torch.equal(loaded.base_model.model.get_parameter(module_path), value)


def test_finetune_loss_falls_on_user_data(
    tiny_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One repeated example: the adapter must learn to write it.
    train_file = write_jsonl(tmp_path / "one.jsonl", [{"prompt": "Q: ", "completion": "abc"}] * 8)
    status = main(
        ["finetune", "--method", "miss", "--model", str(tiny_lm), "--data", str(train_file), "--steps", "30",
         "--batch-size", "4", "--lr", "0.1", "--set", "r=8", "--output", str(tmp_path / "a"), "--no-progress"]
    )  # fmt: skip
    assert status == 0
    first, last = map(
        float, re.search(r"loss\s+(\S+) \(first tenth\) -> (\S+)", capsys.readouterr().out).groups()
    )
    # A random hidden-32 model cannot get confident in 30 steps, but its loss must clearly fall.
    assert last < first - 0.25


def test_finetune_builtin_task_scores_before_and_after(
    tiny_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        ["finetune", "--model", str(tiny_lm), "--steps", "2", "--batch-size", "2", "--eval-size", "3",
         "--set", "r=8", "--output", str(tmp_path / "a"), "--no-progress"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert status == 0
    assert "built-in date task: 4 training, 3 held-out examples" in printed
    assert re.search(r"held-out\s+\d/3 \(\d+%\) before -> \d/3 \(\d+%\) after", printed)
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["peft_type"] == "MISS"


def test_malformed_jsonl_line_is_reported_with_its_number(
    tiny_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [*_pairs(2), '{"prompt": "x", "completion": ', *_pairs(1)])
    status = main(
        ["finetune", "--method", "lora", "--model", str(tiny_lm), "--data", str(bad), "--steps", "1"]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert f"{bad}, line 3: not valid JSON" in err
    assert not (tmp_path / "peftkit-output").exists()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('["a", "b"]', "line 2: expected a JSON object, got list"),
        ('{"prompt": "a"}', 'line 2: an object needs "prompt" and "completion"'),
        ('{"prompt": "a", "completion": 5}', "line 2: 'completion' must be a string, got int"),
    ],
)
def test_load_jsonl_rejects_bad_records(tmp_path: Path, line: str, message: str) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "fine"}, line])
    with pytest.raises(data.DataError, match=re.escape(message)):
        data.load_jsonl(path)


def test_load_jsonl_reads_pairs_and_text_and_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "p", "completion": "c"}\n\n{"text": "plain"}\n')
    assert data.load_jsonl(path) == [data.Example("p", "c"), data.Example("", "plain")]
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(data.DataError, match="holds no examples"):
        data.load_jsonl(tmp_path / "empty.jsonl")


def test_bad_options_are_one_line_errors(tiny_lm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["finetune", "--model", str(tiny_lm), "--set", "rank"]) == 2
    assert "write it as key=value" in capsys.readouterr().err
    assert main(["finetune", "--model", str(tiny_lm), "--set", "nonsense=1"]) == 2
    assert "has no field(s) ['nonsense']" in capsys.readouterr().err
    assert main(["finetune", "--model", "/no/such/model", "--steps", "1"]) == 2
    assert "not a transformers model folder" in capsys.readouterr().err
    assert main(["finetune", "--steps", "0"]) == 2
    assert "--steps must be a positive integer" in capsys.readouterr().err


def test_method_options_layering(tmp_path: Path) -> None:
    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps({"r": 8, "init_weights": "bat", "peft_type": "MISS"}))
    got = options.method_options(
        "miss", str(config_file), ["r=16", 'target_modules=["q_proj"]', "mini_r=2.5"]
    )
    assert got == {
        "r": 16,
        "init_weights": "bat",
        "target_modules": ["q_proj"],
        "mini_r": 2.5,
        "task_type": "CAUSAL_LM",
    }
    assert options.method_options("vera", None, []) == {"task_type": "CAUSAL_LM"}
    with pytest.raises(FinetuneError, match="not valid JSON"):
        (tmp_path / "x.json").write_text("{")
        options.read_config_file(str(tmp_path / "x.json"))


def test_completion_loss_equals_transformers_loss_on_completion_labels(tiny_lm: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    tokenizer = tiny_tokenizer()
    examples = [data.Example("a long prompt here: ", "xy"), data.Example("short: ", "a much longer answer")]
    batch = data.collate([data.encode(e, tokenizer, 64) for e in examples], tokenizer.pad_token_id)
    # Only completion tokens and the closing end-of-sequence token are labelled.
    assert int((batch.labels != data.IGNORE_INDEX).sum()) == (2 + 1) + (20 + 1)
    expected = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
    torch.testing.assert_close(completion_loss(model, batch), expected)


def test_lr_schedule_warms_up_then_decays_to_zero() -> None:
    factors = [lr_factor(s, 100, 0.1) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))
    assert factors[-1] < 0.01


def test_date_task_answers_are_right_and_held_out_dates_are_unseen() -> None:
    import datetime

    pairs = task.date_examples(300, seed=1)
    for question, iso in pairs:
        day = datetime.date.fromisoformat(iso)
        assert str(day.year) in question and (
            day.strftime("%B") in question or day.strftime("%b") in question
        )
        assert re.search(rf"\b{day.day}(st|nd|rd|th)?\b", question)
    train, held_out = task.build(tiny_tokenizer(), 200, 20, seed=0)
    assert len(train) == 200 and len(held_out) == 20
    assert not {e.completion for e in train} & {e.completion for e in held_out}
    assert held_out[0].prompt.startswith(task.INSTRUCTION)

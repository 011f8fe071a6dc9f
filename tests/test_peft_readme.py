"""Hugging Face PEFT's README quick-start runs on peftkit with only the import changed.

The two snippets below are PEFT's README "Quickstart" code as written there. The test runs each
twice, once as is (with ``peft``) and once with ``from peft import`` changed to ``from peftkit
import``, and the two runs must print the same lines. No model is downloaded:
``AutoModelForCausalLM.from_pretrained`` builds a tiny random Llama, ``AutoTokenizer.from_pretrained``
a word-level tokenizer over the prompt's words, and the accelerator reads as the CPU.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from _models import tiny_llama

TRAIN = """\
import torch
from transformers import AutoModelForCausalLM
from peft import LoraConfig, TaskType, get_peft_model

device = torch.accelerator.current_accelerator().type if hasattr(torch, "accelerator") else "cuda"
model_id = "Qwen/Qwen2.5-3B-Instruct"
model = AutoModelForCausalLM.from_pretrained(model_id, device_map=device)
peft_config = LoraConfig(
    r=16,
    lora_alpha=32,
    task_type=TaskType.CAUSAL_LM,
    # target_modules=["q_proj", "v_proj", ...]  # optionally indicate target modules
)
model = get_peft_model(model, peft_config)
model.print_trainable_parameters()
# prints: trainable params: 3,686,400 || all params: 3,089,625,088 || trainable%: 0.1193

# now perform training on your dataset, e.g. using transformers Trainer, then save the model
model.save_pretrained("qwen2.5-3b-lora")
"""

INFER = """\
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel

device = torch.accelerator.current_accelerator().type if hasattr(torch, "accelerator") else "cuda"
model_id = "Qwen/Qwen2.5-3B-Instruct"
tokenizer = AutoTokenizer.from_pretrained(model_id)
model = AutoModelForCausalLM.from_pretrained(model_id, device_map=device)
model = PeftModel.from_pretrained(model, "qwen2.5-3b-lora")

inputs = tokenizer("Preheat the oven to 350 degrees and place the cookie dough", return_tensors="pt")
outputs = model.generate(**inputs.to(device), max_new_tokens=50)
print(tokenizer.decode(outputs[0], skip_special_tokens=True))

# prints something like: Preheat the oven to 350 degrees and place the cookie dough in a baking dish [...]
"""

PROMPT_WORDS = "Preheat the oven to 350 degrees and place the cookie dough".split()


def _tiny_model(model_id: str, device_map: str | None = None, **_: Any) -> torch.nn.Module:
    model = tiny_llama()
    torch.manual_seed(5)  # make the random model's next-token choice vary, so decoding says something
    with torch.no_grad():
        model.lm_head.weight.normal_(std=1.0)
    return model.to(device_map or "cpu")


def _tiny_tokenizer(model_id: str, **_: Any) -> transformers.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[UNK]", *dict.fromkeys(PROMPT_WORDS), *(f"w{i}" for i in range(96))][:96]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def _run(snippet: str, library: str) -> str:
    code = snippet.replace("from peft import", f"from {library} import")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"<PEFT README, {library}>", "exec"), {"__name__": "__readme__"})
    return out.getvalue()


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", _tiny_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", _tiny_tokenizer)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *a, **k: torch.device("cpu"))
    return tmp_path


def test_readme_quickstart_prints_what_peft_prints(offline_hub: Path) -> None:
    expected_train = _run(TRAIN, "peft")
    expected_infer = _run(INFER, "peft")
    ours_train = _run(TRAIN, "peftkit")
    saved = json.loads((offline_hub / "qwen2.5-3b-lora" / "adapter_config.json").read_text())
    ours_infer = _run(INFER, "peftkit")

    assert ours_train == expected_train
    assert ours_train.startswith("trainable params: ") and "|| all params: " in ours_train
    assert saved["task_type"] == "CAUSAL_LM" and saved["r"] == 16 and saved["lora_alpha"] == 32
    assert ours_infer == expected_infer
    assert ours_infer.startswith(" ".join(PROMPT_WORDS))
    assert len(ours_infer.split()) > len(PROMPT_WORDS)  # generate added words


def test_task_type_is_a_string_enum_and_configs_save_the_string() -> None:
    import peft

    import peftkit
    from peftkit import LoraConfig, TaskType

    assert [t.name for t in TaskType] == [t.name for t in peft.TaskType]
    assert all(t == t.value == t.name for t in TaskType)
    from_enum = LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, target_modules=["q"])
    from_str = LoraConfig(task_type="SEQ_2_SEQ_LM", target_modules=["q"])
    assert type(from_enum.task_type) is str and from_enum.to_json() == from_str.to_json()
    assert json.loads(from_enum.to_json())["task_type"] == "SEQ_2_SEQ_LM"
    assert peftkit.config("lora", task_type=TaskType.TOKEN_CLS).task_type == "TOKEN_CLS"
    with pytest.raises(peftkit.ConfigError, match="task_type 'CAUSAL' is not one of"):
        LoraConfig(task_type="CAUSAL")


def test_config_classes_of_installed_methods_import_from_peftkit() -> None:
    import peftkit
    from peftkit_lora import LoraConfig
    from peftkit_vera import VeraConfig

    assert peftkit.LoraConfig is LoraConfig and peftkit.VeraConfig is VeraConfig
    with pytest.raises(AttributeError, match=r"'NotAConfig': no installed method plugin has a config class"):
        peftkit.NotAConfig  # noqa: B018

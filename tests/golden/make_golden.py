"""Write the golden files that hold peftkit to Hugging Face peft's outputs on stacks peft cannot run.

Run by ``make golden`` on the lock (the newest stack the peft oracle supports). For each case it
saves, with peft: a tiny base model (``save_pretrained``, shared by the cases on that base), an
adapter made by peft with every trainable tensor moved off its init, and ``expected.safetensors``
with the inputs, peft's logits and, for generative models, peft's greedy ``generate`` output.
``MANIFEST.json`` records the cases and the versions that made them. ``tests/test_golden_peft.py``
loads each adapter with peftkit on whatever stack is installed and compares.
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _models import VOCAB, seq2seq_inputs, text_inputs, tiny_bert_seq_cls, tiny_llama, tiny_t5  # noqa: E402

LAYER_TARGETS = {"target_modules": ["q_proj", "v_proj"]}
PROMPT = {"num_virtual_tokens": 4}
# case id -> (base, peft config class, keyword arguments)
CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama-lora": ("llama", "LoraConfig", {"r": 4, "lora_alpha": 8, **LAYER_TARGETS}),
    "llama-lora-dora": ("llama", "LoraConfig", {"r": 4, "lora_alpha": 8, "use_dora": True, **LAYER_TARGETS}),
    "llama-miss": ("llama", "MissConfig", {"r": 4, **LAYER_TARGETS}),
    "llama-miss-bat": ("llama", "MissConfig", {"r": 4, "init_weights": "bat", **LAYER_TARGETS}),
    "llama-shira": ("llama", "ShiraConfig", {"r": 4, **LAYER_TARGETS}),
    "llama-oft": ("llama", "OFTConfig", {"r": 0, "oft_block_size": 8, **LAYER_TARGETS}),
    "llama-vera": ("llama", "VeraConfig", {"r": 4, **LAYER_TARGETS}),
}
PROMPT_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "prompt": ("PromptTuningConfig", {}),
    "prefix": ("PrefixTuningConfig", {}),
    "prefix-projected": ("PrefixTuningConfig", {"prefix_projection": True, "encoder_hidden_size": 16}),
    "ptuning-mlp": ("PromptEncoderConfig", {"encoder_hidden_size": 16}),
    "ptuning-lstm": (
        "PromptEncoderConfig",
        {"encoder_reparameterization_type": "LSTM", "encoder_hidden_size": 8},
    ),
}
TASKS = {"llama": "CAUSAL_LM", "t5": "SEQ_2_SEQ_LM", "bert": "SEQ_CLS"}
for _base, _task in TASKS.items():
    for _method, (_cls, _kwargs) in PROMPT_METHODS.items():
        CASES[f"{_base}-{_method}"] = (_base, _cls, {"task_type": _task, **PROMPT, **_kwargs})
BUILDERS = {"llama": tiny_llama, "t5": tiny_t5, "bert": tiny_bert_seq_cls}
NEW_TOKENS = 5


def inputs_for(base: str) -> dict[str, torch.Tensor]:
    """The forward inputs and, for generative bases, the prompt (``prompt_*``) of every case on ``base``."""
    inputs = seq2seq_inputs() if base == "t5" else text_inputs()
    if base == "llama":  # a left-padded batch: rows of 6, 4 and 2 real tokens
        gen = torch.Generator().manual_seed(3)
        ids = torch.randint(3, VOCAB, (3, 6), generator=gen)
        mask = torch.ones_like(ids)
        mask[1, :2] = 0
        mask[2, :4] = 0
        inputs |= {"prompt_input_ids": ids.masked_fill(mask == 0, 0), "prompt_attention_mask": mask}
    elif base == "t5":
        inputs |= {
            "prompt_input_ids": inputs["input_ids"].clone(),
            "prompt_attention_mask": inputs["attention_mask"].clone(),
        }
    return inputs


def _perturb(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters(), key=lambda item: item[0]):
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen) * 0.3)


def _expected(model: Any, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    forward = {k: v for k, v in inputs.items() if not k.startswith("prompt_")}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = {"logits": model(**forward).logits}
        if "prompt_input_ids" in inputs:
            out["generated"] = model.generate(
                input_ids=inputs["prompt_input_ids"],
                attention_mask=inputs["prompt_attention_mask"],
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=0,
            )
    return out


def main() -> None:
    import peft
    import transformers
    from safetensors.torch import save_file

    for stale in ("bases", "cases"):
        shutil.rmtree(HERE / stale, ignore_errors=True)
    for base in BUILDERS:
        BUILDERS[base]().save_pretrained(HERE / "bases" / base)
    manifest: dict[str, Any] = {
        "made_by": {
            "peft": peft.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        "new_tokens": NEW_TOKENS,
        "cases": {},
    }
    for case, (base, cls, kwargs) in CASES.items():
        torch.manual_seed(11)
        model = peft.get_peft_model(BUILDERS[base](), getattr(peft, cls)(**kwargs))
        _perturb(model)
        model.eval()
        folder = HERE / "cases" / case
        model.save_pretrained(folder)
        (folder / "README.md").unlink(missing_ok=True)  # peft's model card: not what is compared
        inputs = inputs_for(base)
        save_file({**inputs, **_expected(model, inputs)}, folder / "expected.safetensors")
        manifest["cases"][case] = {"base": base, "task": TASKS[base], "peft_config": cls}
    (HERE / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(CASES)} cases under {HERE}")


if __name__ == "__main__":
    main()

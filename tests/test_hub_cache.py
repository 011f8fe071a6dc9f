"""``PeftModel.from_pretrained(model, "user/repo")`` resolves through the Hugging Face Hub cache.

No network here: each test builds the cache layout huggingface_hub reads
(``models--user--repo/{refs/main, snapshots/<commit>/...}``) in a temporary folder and points
the library at it in offline mode.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import peftkit
from peftkit import AdapterLayer, CheckpointError
from peftkit.testing import make_inputs, make_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty offline Hub cache that huggingface_hub uses for the rest of the test."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads both at import time, so the module values are patched too.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _publish(cache: Path, repo: str, adapter: Path, subfolder: str = "") -> Path:
    """Put ``adapter`` into ``cache`` as the main revision of model repo ``repo``."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / COMMIT / subfolder
    snapshot.mkdir(parents=True)
    for file in adapter.iterdir():
        shutil.copy(file, snapshot / file.name)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    return snapshot


def _trained(tmp_path: Path) -> tuple[Path, torch.Tensor]:
    config = peftkit.config("lora", r=2, target_modules=["lin0", "lin1"], init_lora_weights=False)
    model = peftkit.get_peft_model(make_model("mlp"), config).eval()
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    with torch.no_grad():
        return folder, model(make_inputs("mlp"))


def test_repo_id_loads_from_the_cache(
    hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, expected = _trained(tmp_path)
    _publish(hub_cache, "someone/tiny-lora", folder)
    monkeypatch.chdir(tmp_path)  # no local folder called someone/tiny-lora
    model = peftkit.PeftModel.from_pretrained(make_model("mlp"), "someone/tiny-lora")
    with torch.no_grad():
        torch.testing.assert_close(model(make_inputs("mlp")), expected, atol=0, rtol=0)
    model.load_adapter("someone/tiny-lora", adapter_name="again")
    assert list(model.peft_config) == ["default", "again"]


def test_repo_subfolder_and_revision(hub_cache: Path, tmp_path: Path) -> None:
    folder, expected = _trained(tmp_path)
    _publish(hub_cache, "someone/many", folder, subfolder="adapters/first")
    model = peftkit.PeftModel.from_pretrained(
        make_model("mlp"), "someone/many", subfolder="adapters/first", revision="main"
    )
    with torch.no_grad():
        torch.testing.assert_close(model(make_inputs("mlp")), expected, atol=0, rtol=0)


def test_missing_repo_is_a_clear_error(hub_cache: Path) -> None:
    base = make_model("mlp")
    before = [(n, p.detach().clone()) for n, p in base.named_parameters()]
    with pytest.raises(CheckpointError, match=r"'nobody/nothing' is not a folder and could not be resolved"):
        peftkit.PeftModel.from_pretrained(base, "nobody/nothing")
    assert all(torch.equal(p, dict(before)[n]) for n, p in base.named_parameters())
    assert not any(isinstance(m, AdapterLayer) for m in base.modules())


def test_repo_in_cache_without_the_adapter_files(hub_cache: Path, tmp_path: Path) -> None:
    """A cached repo that holds something else (a model, say) is reported as not an adapter."""
    other = tmp_path / "model"
    other.mkdir()
    (other / "config.json").write_text("{}")
    _publish(hub_cache, "someone/a-model", other)
    with pytest.raises(peftkit.ConfigError, match=r"no adapter_config\.json"):
        peftkit.PeftModel.from_pretrained(make_model("mlp"), "someone/a-model")


def test_a_file_path_is_not_looked_up_on_the_hub(hub_cache: Path, tmp_path: Path) -> None:
    folder, _ = _trained(tmp_path)
    with pytest.raises(CheckpointError, match="is a file; pass the adapter folder"):
        peftkit.PeftModel.from_pretrained(make_model("mlp"), folder / "adapter_model.safetensors")

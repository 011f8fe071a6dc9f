"""The README.md model card saved with every adapter, and push_to_hub, tested offline against a fake Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
import torch
from _models import tiny_llama
from huggingface_hub import ModelCard
from torch import nn

import peftkit
from peftkit_lora import LoraConfig


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 2))


def test_model_card_is_read_by_huggingface_hub_as_a_peft_adapter_of_its_base(tmp_path: Path) -> None:
    base = tiny_llama()
    base.config._name_or_path = "org/tiny-llama"
    config = LoraConfig(target_modules=["q_proj"], task_type="CAUSAL_LM")
    peftkit.get_peft_model(base, config).save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "peft"
    assert card.data.base_model == "org/tiny-llama"
    assert card.data.pipeline_tag == "text-generation"
    assert {"lora", "peftkit", "base_model:adapter:org/tiny-llama"} <= set(card.data.tags)
    assert f"- peftkit {peftkit.__version__}" in card.text


def test_model_card_of_a_custom_model_names_no_base_model_and_is_prefilled(tmp_path: Path) -> None:
    peftkit.get_peft_model(mlp(), LoraConfig(target_modules=["0"])).save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model is None
    assert len(card.content) > 1000  # the Hub's template, for the user to fill in


def test_an_existing_model_card_is_updated_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("---\nmeta: hello\ntags:\n- mine\n---\nThis is a model card\n")
    model = peftkit.get_peft_model(mlp(), LoraConfig(target_modules=["0"]))
    model.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)  # saving again adds nothing twice
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "peft" and card.data.to_dict()["meta"] == "hello"
    assert {"mine", "lora", "peftkit"} <= set(card.data.tags)
    assert "This is a model card" in card.text
    assert card.text.count(f"- peftkit {peftkit.__version__}") == 1


def test_every_saved_adapter_folder_gets_a_card(tmp_path: Path) -> None:
    model = peftkit.get_peft_model(mlp(), LoraConfig(target_modules=["0"]))
    model.add_adapter("other", LoraConfig(target_modules=["2"]))
    model.save_pretrained(tmp_path)
    assert ModelCard.load(tmp_path / "other" / "README.md").data.library_name == "peft"


class FakeHub:
    """Records create_repo / create_branch / upload_folder calls and the files each upload would send."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.uploaded: list[str] = []

    def create_repo(self, repo_id: str, **kwargs: Any) -> Any:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_branch(self, repo_id: str, **kwargs: Any) -> None:
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs: Any) -> str:
        self.calls.append(("upload_folder", kwargs))
        folder = Path(kwargs["folder_path"])
        self.uploaded = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        return "commit-info"

    def call(self, name: str) -> dict[str, Any]:
        return next(kwargs for called, kwargs in self.calls if called == name)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    fake = FakeHub()
    for name in ("create_repo", "create_branch", "upload_folder"):
        monkeypatch.setattr(huggingface_hub, name, getattr(fake, name))
    return fake


def test_push_to_hub_creates_the_repo_and_uploads_the_saved_adapter(hub: FakeHub) -> None:
    model = peftkit.get_peft_model(mlp(), LoraConfig(target_modules=["0"]))
    result = model.push_to_hub("me/adapter", private=True, commit_message="first adapter")
    assert result == "commit-info"
    assert hub.call("create_repo")["repo_id"] == "me/adapter" and hub.call("create_repo")["private"] is True
    upload = hub.call("upload_folder")
    assert upload["repo_id"] == "me/adapter" and upload["commit_message"] == "first adapter"
    assert upload["revision"] is None
    assert hub.uploaded == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert [name for name, _ in hub.calls] == ["create_repo", "upload_folder"]


def test_push_to_hub_to_a_revision_creates_the_branch_and_sends_several_adapters(hub: FakeHub) -> None:
    model = peftkit.get_peft_model(mlp(), LoraConfig(target_modules=["0"]))
    model.add_adapter("other", LoraConfig(target_modules=["2"]))
    model.push_to_hub("me/adapters", revision="v2")
    assert hub.call("create_branch") == {
        "repo_id": "me/adapters",
        "branch": "v2",
        "token": None,
        "exist_ok": True,
    }
    assert hub.call("upload_folder")["revision"] == "v2"
    assert "other/adapter_model.safetensors" in hub.uploaded and "adapter_model.safetensors" in hub.uploaded


def test_push_to_hub_sends_only_the_selected_adapters(hub: FakeHub) -> None:
    model = peftkit.get_peft_model(mlp(), LoraConfig(target_modules=["0"]))
    model.add_adapter("other", LoraConfig(target_modules=["2"]))
    model.push_to_hub("me/adapters", selected_adapters=["other"])
    assert all(p.startswith("other/") for p in hub.uploaded)

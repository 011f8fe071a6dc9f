"""``PeftModel.push_to_hub``: save the adapters into a temporary folder and upload it as one commit."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import Any


def push_to_hub(
    peft_model: Any,
    repo_id: str,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_description: str | None = None,
    selected_adapters: Sequence[str] | None = None,
    **save_kwargs: Any,
) -> Any:
    """Create ``repo_id`` if needed (and the ``revision`` branch), then upload every selected adapter.

    ``save_kwargs`` go to ``save_pretrained``. Returns ``huggingface_hub``'s commit info.
    """
    import huggingface_hub as hub

    repo = hub.create_repo(repo_id, private=private, token=token, exist_ok=True)
    repo_id = getattr(repo, "repo_id", repo_id)
    if revision is not None:
        hub.create_branch(repo_id, branch=revision, token=token, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="peftkit-push-") as folder:
        peft_model.save_pretrained(folder, selected_adapters=selected_adapters, **save_kwargs)
        return hub.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message or "Upload adapter with peftkit",
            commit_description=commit_description,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )

"""Upload a checkpoint folder to the Hugging Face Hub, with a generated model card.

One commit holds every file of the folder (hidden ones excepted) plus README.md from
``card.model_card`` when the folder has none. The token comes from ``HF_TOKEN`` or the usual
``hf auth login`` store; without a network the error says so in one line.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi

from ..errors import LowbitError
from .card import model_card

log = logging.getLogger(__name__)


def hub_token() -> str:
    from huggingface_hub import get_token

    token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise LowbitError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    return token


def folder_files(folder: Path) -> list[Path]:
    """Files to upload, relative to ``folder``; hidden files and folders (.cache, .git) stay home."""
    return sorted(p.relative_to(folder) for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def push(folder: str | Path, repo_id: str, private: bool = False, card: bool = True,
         commit_message: str | None = None, api: HfApi | None = None) -> str:
    """Create ``repo_id`` (if needed) and upload ``folder`` in one commit; returns the commit URL."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise LowbitError(f"{folder} is not a model folder (no config.json): push a checkpoint folder")
    if not list(folder.glob("*.safetensors")):
        raise LowbitError(f"{folder} has no .safetensors files: push a complete checkpoint")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise LowbitError("HF_HUB_OFFLINE is set: unset it to push to the Hugging Face Hub")
    files = folder_files(folder)
    operations = [CommitOperationAdd(path_in_repo=p.as_posix(), path_or_fileobj=str(folder / p)) for p in files]
    if card and Path("README.md") not in files:
        operations.append(CommitOperationAdd(path_in_repo="README.md",
                                             path_or_fileobj=model_card(folder, repo_id).encode()))
    api = api or HfApi(token=hub_token())
    message = commit_message or f"Upload {folder.name} (lowbit)"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.create_commit(repo_id=repo_id, operations=operations, commit_message=message, repo_type="model")
    except Exception as e:  # network and HTTP errors come from httpx and huggingface_hub
        raise LowbitError(_hub_error(e, repo_id)) from None
    url = getattr(info, "commit_url", None) or str(info)
    log.info("uploaded %d files to %s", len(operations), repo_id)
    return url


def _hub_error(e: Exception, repo_id: str) -> str:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set: unset it to push to the Hugging Face Hub"
    if isinstance(e, HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            return f"the Hugging Face Hub refused the token for {repo_id} ({status}): check HF_TOKEN or `hf auth login`"
        return f"the Hugging Face Hub refused the upload to {repo_id}: {first}"
    if _is_network_error(e):
        return f"cannot reach the Hugging Face Hub ({first}): check the network connection and retry"
    raise e


def _is_network_error(e: Exception) -> bool:
    # huggingface_hub raises its HTTP client's transport errors (httpx, or its fork httpx2), whose
    # classes lowbit does not import: recognise them by name.
    names = {cls.__name__ for cls in type(e).__mro__}
    return bool(names & {"TransportError", "NetworkError", "TimeoutException"}) or isinstance(e, OSError)

"""Push a saved pipeline to the Hugging Face Hub in one commit (pull is plain ``from_pretrained(repo_id)``)."""

from pathlib import Path
from typing import List, Optional

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import filter_repo_objects

# What a pipeline folder sends: weights (safetensors only), configs, the pipeline source, card and figures
# (samples.png, which the card shows, included). huggingface_hub's own pattern rules, as upload_folder applies them.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.py", "README.md", "*.png"]
# Never sent: training state and logs (checkpoint-*/ holds optimizer state and pickles), the per-step sample grids
# under samples/, an unfinished checkpoint, hidden files.
IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/*", "logs/*", "samples/*", ".*", "*/.*"]


class HubError(RuntimeError):
    """The Hub could not be reached or refused the request; nothing was uploaded."""


def push_operations(pipeline_dir) -> List[CommitOperationAdd]:
    """The files a push sends, as the commit operations of its single commit (sorted by path in the repo)."""
    folder = Path(pipeline_dir)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{folder} holds no model_index.json: pass a folder written by save_pretrained.")
    if not (folder / "README.md").is_file():
        raise FileNotFoundError(f"{folder} has no model card: run `medgen card {folder}` first.")
    if any(folder.rglob("*.bin")) and not any(folder.rglob("*.safetensors")):
        raise ValueError(f"{folder} holds .bin weights only; re-save it with save_pretrained (safetensors).")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name))
            for name in filter_repo_objects(files, allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS)]


def push_pipeline(pipeline_dir, repo_id: str, token: Optional[str] = None, private: bool = False) -> str:
    """Create ``repo_id`` if needed and upload ``pipeline_dir`` in one commit; returns the commit URL."""
    operations = push_operations(pipeline_dir)
    token = token or get_token()
    if token is None:
        raise HubError("No Hugging Face token: run `hf auth login`, set HF_TOKEN, or pass --token. Nothing was "
                       "uploaded.")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.create_commit(repo_id=repo_id, repo_type="model", operations=operations,
                                   commit_message="Upload BloodMNISTPipeline with medgen-diffusers")
    except OfflineModeIsEnabled:
        raise HubError("HF_HUB_OFFLINE=1 is set: unset it to push. Nothing was uploaded.") from None
    except (HfHubHTTPError, OSError) as error:
        raise HubError(f"Could not push to {repo_id}: {error}. Nothing was uploaded (one commit, all or "
                       "nothing); check the network and the token's write access, then retry.") from None
    return commit.commit_url

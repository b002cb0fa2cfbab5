"""Push a saved pipeline to the Hugging Face Hub in one commit."""

from pathlib import Path
from typing import Optional

from huggingface_hub import HfApi

# What a pipeline folder sends: weights (safetensors only), configs, the pipeline source, card and figures.
PUSH_PATTERNS = ["*.json", "*.safetensors", "*.py", "README.md", "*.png"]


def push_pipeline(pipeline_dir, repo_id: str, token: Optional[str] = None, private: bool = False) -> str:
    """Upload ``pipeline_dir`` (as written by ``save_pretrained``) to ``repo_id``; returns the commit URL."""
    folder = Path(pipeline_dir)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{folder} holds no model_index.json: pass a folder written by save_pretrained.")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=PUSH_PATTERNS,
                               ignore_patterns=["checkpoint-*/**", "logs/**"],
                               commit_message="Upload BloodMNISTPipeline with medgen-diffusers")
    return commit.commit_url

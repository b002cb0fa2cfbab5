"""Push a saved pipeline to the Hugging Face Hub in one commit (pull is plain ``from_pretrained(repo_id)``)."""

import json
from pathlib import Path
from typing import List, Optional, Tuple

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import filter_repo_objects

# What a pipeline folder sends: weights (safetensors only), configs, the pipeline source, card and figures.
# huggingface_hub's own pattern rules, as upload_folder applies them.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.py", "README.md", "*.png"]
# Never sent: training state and logs (checkpoint-*/ holds optimizer state and pickles), the per-step sample grids
# under samples/, an unfinished checkpoint, hidden files.
IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/*", "logs/*", "samples/*", ".*", "*/.*", "data_order/*"]
# Figures that show generated images or curves only. For a model of the user's own data these are the only PNGs
# sent: any other (the audit's closest pairs, a progressive figure with real images, a picture of the user's) may
# show a patient's image.
GENERATED_FIGURES = ["samples.png", "classes.png", "progressive.png", "loss_curve.png", "fid_kid_curves.png",
                     "fid_vs_steps.png"]
# Curves of numbers computed on the private training images (loss, FID against them): outside a DP run's epsilon, so
# never sent for one.
PRIVATE_STATISTIC_FIGURES = ["loss_curve.png", "fid_kid_curves.png"]


class HubError(RuntimeError):
    """The Hub could not be reached or refused the request; nothing was uploaded."""


def network_error(error: BaseException) -> bool:
    """Whether an OSError (or one it was raised from) is the network's or the Hub's, not a local file's."""
    from huggingface_hub import errors

    hub_errors = (errors.HfHubHTTPError, errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled)
    while error is not None:
        if isinstance(error, hub_errors) or type(error).__module__.split(".")[0] in ("requests", "httpx", "urllib3"):
            return True
        # diffusers reports a failed download as a plain OSError; our own errors (ValueErrors) are never network.
        if type(error) is OSError and any(word in str(error) for word in ("huggingface.co", "couldn't connect",
                                                                          "not a valid model identifier")):
            return True
        error = error.__cause__ or error.__context__
    return False


def push_operations(pipeline_dir) -> List[CommitOperationAdd]:
    """The files a push sends, as the commit operations of its single commit (sorted by path in the repo). JSON
    files go with this machine's absolute paths cut to their last component; a model of non-public data sends only
    the figures known to show no real image (GENERATED_FIGURES), and a DP model none of the curves of numbers computed
    on its private images (PRIVATE_STATISTIC_FIGURES)."""
    from .provenance import is_public_source, redact_paths

    folder = Path(pipeline_dir)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{folder} holds no model_index.json: pass a folder written by save_pretrained.")
    if not (folder / "README.md").is_file():
        raise FileNotFoundError(f"{folder} has no model card: run `medgen card {folder}` first.")
    studies = sorted(p.parent for p in folder.rglob("key.json") if (p.parent / "study.json").is_file())
    if studies:  # real images (of patients, for private data) and the answer key: never published
        raise ValueError(f"{folder} holds a reader study ({studies[0].relative_to(folder)}): its real images and key "
                         "are never pushed; move the study folder out of the pipeline folder (its scores are in "
                         "reader_study.json).")
    if any(folder.rglob("*.bin")) and not any(folder.rglob("*.safetensors")):
        raise ValueError(f"{folder} holds .bin weights only; re-save it with save_pretrained (safetensors).")
    config = folder / "run_config.json"
    recorded = json.loads(config.read_text()) if config.is_file() else {}
    dataset, private_training = recorded.get("dataset"), bool(recorded.get("privacy"))
    public = dataset is not None and is_public_source(dataset)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    operations = []
    for name in filter_repo_objects(files, allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS):
        if name.endswith(".png") and not public and name not in GENERATED_FIGURES:
            continue
        if private_training and name in PRIVATE_STATISTIC_FIGURES:
            continue
        content = str(folder / name)
        if name.endswith(".json"):
            content = (json.dumps(redact_paths(json.loads((folder / name).read_text())), indent=2) + "\n").encode()
        operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=content))
    return operations


def repo_visibility(pipeline_dir, private: Optional[bool] = None) -> Tuple[bool, str]:
    """(private?, why) for a push of ``pipeline_dir``. Not given: private unless the model was trained on a public
    data set (a MedMNIST flag) -- weights can memorise their training images and the audit is evidence, not proof,
    so a model of anyone's own data is never made public by default."""
    from .provenance import is_public_source

    if private is not None:
        return private, "--private" if private else "--public"
    config = Path(pipeline_dir) / "run_config.json"
    dataset = json.loads(config.read_text()).get("dataset") if config.is_file() else None
    if dataset is not None and is_public_source(dataset):
        return False, f"trained on the public data set {dataset}"
    return True, ("trained on data that is not a public data set" if dataset else "its training data is unknown "
                  "(no run_config.json)") + ": weights can memorise their training images; --public to override"


def push_pipeline(pipeline_dir, repo_id: str, token: Optional[str] = None, private: Optional[bool] = None) -> str:
    """Create ``repo_id`` if needed (private unless ``repo_visibility`` finds public training data or ``private``
    is False) and upload ``pipeline_dir`` in one commit; returns the commit URL."""
    operations = push_operations(pipeline_dir)
    private, _ = repo_visibility(pipeline_dir, private)
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

"""What produced a result, and which data a model was trained on.

Every command that is given a model takes its data source from the run that made it (``run_config.json`` beside
the pipeline: dataset, data root, columns and the training split's checksum), so a model trained on a private
folder is never scored or audited against BloodMNIST by default. Another source is used only when named
explicitly; the result then records it, and a warning says when its checksum differs from the recorded one.

Every result (evaluation, audit, utility, a sampled npz) carries a ``provenance`` block: the sha256 of the weights
it scored, the data checksum, the command and the package version. Result files are written atomically and never
replace an earlier result unless asked to (``--overwrite``).

What may be published: :func:`redact_paths` turns this machine's absolute paths into their last component
(cards and pushed JSON files); :func:`is_public_source` says whether real images of a source may appear in a figure.
"""

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Dict, Optional

RUN_CONFIG = "run_config.json"
WEIGHTS_FILE = Path("unet") / "diffusion_pytorch_model.safetensors"


class ProvenanceError(ValueError):
    """A model's data source cannot be told, or a result would overwrite another: says how to fix it."""


def state_dict_sha256(state_dict) -> str:
    """sha256 of a model's weights: every tensor's name, dtype, shape and bytes, in name order. The same for the
    weights in memory (:func:`weights_sha256`) and in a saved pipeline (:func:`folder_weights_sha256`)."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def weights_sha256(unet) -> str:
    return state_dict_sha256(unet.state_dict())


def folder_weights_sha256(folder) -> Optional[str]:
    """The weights sha256 of a saved pipeline folder (None when it holds no safetensors UNet)."""
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS_FILE
    return state_dict_sha256(load_file(str(path))) if path.is_file() else None


def read_run_config(pipeline) -> Optional[Dict]:
    """The run_config.json of a pipeline folder (None for the shipped model's default path resolution, a Hub repo
    without one, or a folder that has none)."""
    from . import DEFAULT_MODEL

    folder = Path(DEFAULT_MODEL if pipeline is None else pipeline)
    path = folder / RUN_CONFIG
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ProvenanceError(f"{path} is not valid JSON ({error}): restore it from the training run.") from None
    if folder.exists() or "/" not in str(pipeline):
        return None
    from .pipelines.pipeline_bloodmnist import check_pipeline_path

    check_pipeline_path(pipeline)  # a mistyped folder: one clear error here, not "no training data recorded"
    try:  # a Hub repo id: its (redacted) run_config.json, from the cache when offline
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(str(pipeline), RUN_CONFIG)).read_text())
    except Exception:  # noqa: BLE001 - no run_config on the Hub: the user must name the data
        return None


def is_local_path(value) -> bool:
    return isinstance(value, str) and (value.startswith(("/", "~")) or (len(value) > 2 and value[1] == ":"))


def redact_paths(value):
    """A copy of a JSON-able value in which every absolute path of this machine is cut to its last component."""
    if isinstance(value, dict):
        return {k: redact_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_paths(v) for v in value]
    if is_local_path(value):
        return Path(value).name
    return value


def is_public_source(dataset) -> bool:
    """MedMNIST flags are public datasets: their real images may be shown. Anything else is the user's own data."""
    from medmnist.info import INFO

    return str(dataset) in INFO


# How a source is read, recorded by the run and applied by every later command (max_train_samples: the subset of
# the train split the model saw -- its members, for the audit).
MEDICAL_OPTIONS = ("window", "slice_axis", "slice_range", "split_by", "split_seed", "patient_column",
                   "patient_regex", "crop", "max_train_samples", "bit_depth")


def data_source(pipeline=None, dataset: Optional[str] = None, root: Optional[str] = None,
                image_column: Optional[str] = None, label_column: Optional[str] = None,
                run_config: Optional[Dict] = None, medical: Optional[Dict] = None):
    """The :class:`~medgen_diffusers.data.DataSource` for a command given ``pipeline``: the explicit ``dataset`` if
    named, else the run's, read with the run's options."""
    from .data.source import DataSource

    config = run_config if run_config is not None else read_run_config(pipeline)
    config = config or {}
    recorded = config.get("dataset")
    if dataset is None:
        if recorded is None:
            raise ProvenanceError(f"{pipeline or 'this pipeline'} records no training data (no run_config.json "
                                  "with a 'dataset'): name the data it was trained on with --dataset.")
        if not is_public_source(recorded) and not Path(recorded).expanduser().exists() and (
                is_local_path(recorded) or "/" not in recorded):
            raise ProvenanceError(f"{pipeline or 'The model'} was trained on {recorded!r}, which is not on this machine (a pushed "
                                  "run keeps only its name): pass --dataset PATH to the same data (its checksum "
                                  f"is checked against the recorded {config.get('data_md5')}).")
        dataset = recorded
    explicit = dataset != recorded
    label = label_column if label_column is not None else config.get("label_column", "label")
    options = {"image_column": image_column or config.get("image_column", "image"),
               "label_column": None if label is None or str(label).lower() == "none" else label}
    if not explicit:  # how the run read a DICOM/NIfTI source: the same window, slices and patient splits
        options.update({k: config[k] for k in MEDICAL_OPTIONS if config.get(k) is not None})
    options.update({k: v for k, v in (medical or {}).items() if v is not None})
    root = root if root is not None else (config.get("data_root") if not explicit else None)
    return DataSource(dataset=dataset, root=root, options=options,
                      recorded_md5=config.get("data_md5"), explicit=explicit, run_config=config or None)


def provenance(unet=None, data: Optional[Dict] = None, **extra) -> Dict:
    """The provenance block of a result: weights, data, command, version."""
    from . import __version__

    block = {"weights_sha256": None if unet is None else weights_sha256(unet), "data": data,
             "command": " ".join([Path(sys.argv[0]).name, *(redact_paths(a) for a in sys.argv[1:])]),
             "medgen_diffusers": __version__}
    block.update(extra)
    return block


def check_new_result(path, overwrite: bool = False, what: str = "--out") -> Path:
    """Refuse, before any work, a result path that already holds a file (unless ``overwrite``)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ProvenanceError(f"{what} {path} already exists: choose another {what}, or pass --overwrite to "
                              "replace it (nothing was written).")
    return path


def write_json_atomic(result: Dict, path) -> None:
    """Write JSON under a temporary name and rename it: a kill never leaves a half-written result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)

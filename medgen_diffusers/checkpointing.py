"""Run folders of the training scripts (``train_unconditional.py``, ``distill_lcm.py``): checkpoints written whole
or not at all, resume that refuses what it cannot continue, EMA weights as safetensors, and the metrics log.

* A checkpoint is Accelerate's ``save_state`` folder, written as ``checkpoint-N.tmp`` with a manifest (size and
  sha256 of every file) and renamed when whole; resuming verifies the manifest first.
* What is unpickled: Accelerate's ``load_state`` reads the optimizer, LR-scheduler and RNG states with torch's
  loader in ``weights_only`` mode (tensors and plain containers); model and EMA weights are safetensors.
* A run folder that already holds a run is never silently restarted: resume it, or pass ``--overwrite_output_dir``.
"""

import json
import os
import re
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

from .data import file_digest

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")  # complete checkpoints only: never "*.tmp"
MANIFEST = "manifest.json"  # size + sha256 of every file of a checkpoint, written last
# Files and folders a run writes: their presence means "a run lives here".
RUN_FILES = ("run_config.json", "distill_config.json", "metrics.jsonl", "model_index.json", "train_summary.json")
# Everything a run and the commands run on it write (--overwrite_output_dir removes these, and only these).
RUN_ARTEFACTS = RUN_FILES + ("unet", "unet_ema", "scheduler", "samples", "logs", "data_order", "README.md",
                             "pipeline_bloodmnist.py", "evaluation.json", "audit.json", "utility.json",
                             # medgen train-vae's AutoencoderKL and its summary
                             "config.json", "diffusion_pytorch_model.safetensors", "vae_summary.json", "vae")


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked: says why and what to pass instead."""


def list_checkpoints(output_dir) -> List[Path]:
    """Complete checkpoints, oldest first by step (not by name: checkpoint-1000 sorts before checkpoint-500)."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def checkpoint_step(checkpoint) -> int:
    return int(CHECKPOINT_PATTERN.match(Path(checkpoint).name).group(1))


@contextmanager
def quiet_diffusers():
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def file_manifest(folder):
    """{relative path: [size, sha256]} of every file under ``folder`` except the manifest itself."""
    return {p.relative_to(folder).as_posix(): [p.stat().st_size, file_digest(p, "sha256")]
            for p in sorted(Path(folder).rglob("*")) if p.is_file() and p.name != MANIFEST}


def verify_checkpoint(checkpoint):
    """Refuse a checkpoint whose files differ from its manifest (truncated, corrupted, missing)."""
    manifest_path = Path(checkpoint) / MANIFEST
    if not manifest_path.is_file():
        raise RunFolderError(f"{checkpoint} has no {MANIFEST}: it was not written whole by this script. Resume from "
                             "another checkpoint (or delete this one).")
    expected = json.loads(manifest_path.read_text())
    actual = file_manifest(checkpoint)
    for name, (size, digest) in expected.items():
        if name not in actual:
            raise RunFolderError(f"Checkpoint file {Path(checkpoint) / name} is missing. Resume from another "
                                 "checkpoint or delete this one; nothing was changed.")
        if actual[name] != [size, digest]:
            raise RunFolderError(f"Checkpoint file {Path(checkpoint) / name} is corrupt ({actual[name][0]} bytes, "
                                 f"expected {size}, or its sha256 differs). Resume from another checkpoint or delete "
                                 "this one; nothing was changed.")


def save_checkpoint(accelerator, output_dir, step, total_limit, logger=None):
    final = Path(output_dir) / f"checkpoint-{step}"
    partial = Path(output_dir) / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))  # every rank writes its own RNG state into it
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / MANIFEST).write_text(json.dumps(file_manifest(partial), indent=1) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)  # atomic: a kill leaves either the whole checkpoint or a *.tmp folder
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
        if logger is not None:
            logger.info(f"Saved {final}")
    accelerator.wait_for_everyone()


def prepare_run_folder(output_dir, resume_from_checkpoint: Optional[str], overwrite: bool = False,
                       is_main_process: bool = True) -> Optional[Path]:
    """The verified checkpoint to resume from, or None for a fresh run. Runs before anything is written.

    A folder that already holds a run (its config, metrics, pipeline or checkpoints) is refused unless it is
    resumed (``resume_from_checkpoint``) or ``overwrite`` is set -- then its earlier run files are removed here,
    so no old checkpoint, metric or result is mistaken for the new run's.
    """
    output_dir = Path(output_dir)
    checkpoints = list_checkpoints(output_dir) if output_dir.is_dir() else []
    earlier = [name for name in RUN_FILES if (output_dir / name).exists()] + [p.name for p in checkpoints]
    if overwrite:
        if earlier and is_main_process:
            for path in output_dir.iterdir():  # only what a run writes; anything else of the user's stays
                if path.name in RUN_ARTEFACTS or path.name.startswith("checkpoint-") or path.suffix == ".png":
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        return None
    if not resume_from_checkpoint:
        if earlier:
            raise RunFolderError(f"{output_dir} already holds a run ({', '.join(earlier[:4])}): pass "
                                 "--resume_from_checkpoint latest to continue it, --overwrite_output_dir to replace "
                                 "it, or another --output_dir. Nothing was changed.")
        return None
    if resume_from_checkpoint == "latest":
        if not checkpoints:
            # A run killed before its first checkpoint starts again from step 0 (its metrics are dropped); a
            # finished pipeline without checkpoints is never overwritten that way.
            if (output_dir / "model_index.json").exists():
                raise RunFolderError(f"{output_dir} holds a finished pipeline but no checkpoint to resume: pass "
                                     "--overwrite_output_dir to replace it, or another --output_dir. Nothing was "
                                     "changed.")
            return None
        checkpoint = checkpoints[-1]
    else:
        checkpoint = Path(resume_from_checkpoint)
        if not CHECKPOINT_PATTERN.match(checkpoint.name) or not checkpoint.is_dir():
            raise RunFolderError(f"{checkpoint} is not a complete checkpoint folder (checkpoint-STEP); pass one of "
                                 f"{[p.name for p in checkpoints]} or 'latest'.")
    verify_checkpoint(checkpoint)
    return checkpoint


def check_resumed_config(output_dir, config_name: str, current: dict, keys) -> None:
    """Refuse to resume a run whose recorded ``keys`` (data checksum, teacher weights, ...) differ from now."""
    path = Path(output_dir) / config_name
    if not path.is_file():
        return
    recorded = json.loads(path.read_text())
    differ = [k for k in keys if k in recorded and recorded[k] != current.get(k)]
    if differ:
        raise RunFolderError(f"{output_dir} is a run of other {', '.join(differ)} "
                             f"({', '.join(f'{k}: {recorded[k]}' for k in differ)}; now "
                             f"{', '.join(str(current.get(k)) for k in differ)}): resuming it would mix two runs. "
                             "Use another --output_dir (or --overwrite_output_dir). Nothing was changed.")


def register_ema_hooks(accelerator, ema, folder_name: str, model_cls):
    """Save/load an ``EMAModel`` with every Accelerate checkpoint, as safetensors (diffusers' examples do the same),
    never as a pickle."""
    import torch
    from diffusers.training_utils import EMAModel

    def save(models, weights, checkpoint_dir):
        if accelerator.is_main_process:
            # EMAModel.save_pretrained builds a model to save from, whose random init draws from the global RNG:
            # without fork_rng, when a run saves checkpoints would change its later noise and its weights.
            with torch.random.fork_rng(devices=[]):
                ema.save_pretrained(os.path.join(checkpoint_dir, folder_name))

    def load(models, checkpoint_dir):
        with warnings.catch_warnings(), quiet_diffusers():  # it reads its EMA fields through the model's config
            warnings.simplefilter("ignore", FutureWarning)
            loaded = EMAModel.from_pretrained(os.path.join(checkpoint_dir, folder_name), model_cls)
        ema.load_state_dict(loaded.state_dict())
        ema.to(accelerator.device)

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)


class MetricsLog:
    """``metrics.jsonl``: one JSON line per logged step. Opening it at ``resumed_step`` drops the lines a killed run
    wrote after its last checkpoint, so a resumed run never logs a step twice."""

    def __init__(self, path, resumed_step: int = 0, is_main_process: bool = True):
        self.path, self.main = Path(path), is_main_process
        if self.main:
            lines = self.path.read_text().splitlines() if self.path.exists() else []
            kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= resumed_step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.main:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

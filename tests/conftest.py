"""Shared fixtures: the real BloodMNIST file, small real diffusers pipelines, and one real training run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from medgen_diffusers import BloodMNISTPipeline, class_names
from medgen_diffusers.data import medmnist_path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BIN = Path(sys.executable).parent  # the venv's console scripts (accelerate, medgen), activated or not


@pytest.fixture(scope="session", autouse=True)
def own_cache(tmp_path_factory):
    """The session's own $MEDGEN_CACHE (prepared stores, latent caches, Inception features): the tests write
    nothing under ~/.cache, and a store left there by an earlier run of older code is never read."""
    if "MEDGEN_CACHE" not in os.environ:
        os.environ["MEDGEN_CACHE"] = str(tmp_path_factory.mktemp("medgen-cache"))
        yield
        del os.environ["MEDGEN_CACHE"]
    else:
        yield


@pytest.fixture(scope="session")
def data_root():
    """Folder of the real, MD5-verified bloodmnist.npz: $MEDMNIST_ROOT, else ../shared/data, else ~/.medmnist
    (downloaded there when online)."""
    root = os.environ.get("MEDMNIST_ROOT") or (str(SHARED_DATA) if (SHARED_DATA / "bloodmnist.npz").exists() else None)
    return medmnist_path("bloodmnist", 28, root).parent


def small_unet(conditional: bool) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=28, in_channels=3, out_channels=3, block_out_channels=(16, 32, 32), layers_per_block=1,
        down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3, norm_num_groups=8,
        num_class_embeds=9 if conditional else None,
    )


@pytest.fixture
def conditional_pipe():
    pipe = BloodMNISTPipeline(small_unet(True), DDPMScheduler(num_train_timesteps=1000), class_names("bloodmnist"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def unconditional_pipe():
    pipe = BloodMNISTPipeline(small_unet(False), DDPMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_training(output_dir, data_root, *extra, launcher=(sys.executable,), check=True, timeout=1200):
    """Run the real training script in a subprocess on the real data; returns the CompletedProcess."""
    cmd = [*launcher, str(REPO / "train_unconditional.py"), "--output_dir", str(output_dir),
           "--data_root", str(data_root), "--model_preset", "tiny", "--logger", "tensorboard", *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"training failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def train_here(output_dir, data_root, *extra):
    """The training script in this process (no interpreter start-up: ~6 s of imports per run): as run_training, in
    fp32 -- Accelerate keeps one state per process, so every in-process run must ask for the same precision."""
    import train_unconditional

    train_unconditional.main(["--output_dir", str(output_dir), "--data_root", str(data_root), "--model_preset", "tiny",
                              "--logger", "tensorboard", *extra, "--mixed_precision", "no"])


def read_metrics(output_dir):
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, data_root):
    """The README's short CPU training, shortened: `accelerate launch --cpu` on 2,048 real training images."""
    output_dir = tmp_path_factory.mktemp("trained")
    run_training(
        output_dir, data_root, "--max_train_samples", "2048", "--train_batch_size", "32", "--max_train_steps", "80",
        "--learning_rate", "1e-3", "--lr_warmup_steps", "5", "--checkpointing_steps", "40",
        "--num_sample_images", "4", "--sample_inference_steps", "5",
        "--eval_steps", "80", "--eval_num_samples", "8", "--eval_num_val", "16", "--eval_inference_steps", "4",
        launcher=(str(BIN / "accelerate"), "launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
                  "--mixed_precision", "no", "--dynamo_backend", "no"),
    )
    return output_dir


# Real BloodMNIST pixels as a user's *own* data: a folder with train/val/test class sub-folders (not a MedMNIST flag,
# so nothing may treat it as public). One training image per class is "a handful": a small UNet copies them.
OWN_CLASSES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]


def write_own_folder(root, data_root, per_split=(("train", 1), ("val", 2), ("test", 20)), seed=0):
    import numpy as np
    from PIL import Image

    with np.load(Path(data_root) / "bloodmnist.npz") as npz:
        arrays = {split: (npz[f"{split}_images"], npz[f"{split}_labels"][:, 0]) for split, _ in per_split}
    rng = np.random.default_rng(seed)
    for split, count in per_split:
        images, labels = arrays[split]
        for label, name in enumerate(OWN_CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for index in rng.choice(np.flatnonzero(labels == label), count, replace=False):
                Image.fromarray(images[index]).save(root / split / name / f"patient_{split}_{index:05d}.png")
    return root


@pytest.fixture(scope="session")
def memorised_run(tmp_path_factory, data_root):
    """A model that copies its training data: the tiny UNet trained to predict x0 on 8 real images (one per class)
    for 600 steps, no augmentation, no EMA (~1 CPU-minute; at 400 Gu's criterion no longer flags it). The known
    positive of the privacy audit."""
    source = write_own_folder(tmp_path_factory.mktemp("own") / "cells", data_root)
    output_dir = tmp_path_factory.mktemp("memorised") / "run"
    run_training(output_dir, data_root, "--dataset", str(source), "--train_batch_size", "8", "--max_train_steps",
                 "600", "--learning_rate", "3e-3", "--lr_scheduler", "constant", "--lr_warmup_steps", "20",
                 "--prediction_type", "sample", "--no-use_ema", "--checkpointing_steps", "300",
                 "--checkpoints_total_limit", "1", "--num_sample_images", "4", "--sample_inference_steps", "5",
                 "--logger", "none")
    return output_dir, source

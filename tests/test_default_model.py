"""The model shipped in the repository: loaded by default, small, documented, and it makes blood cells."""

import json
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import metadata_load

import pytest

from medgen_diffusers import DEFAULT_MODEL, FAST_MODEL, BloodMNISTPipeline
from medgen_diffusers.cli import main


@pytest.mark.parametrize("folder, extra, results", [
    (DEFAULT_MODEL, {"classes.png", "progressive.png", "loss_curve.png", "audit_closest_pairs.png"},
     ("evaluation.json", "audit.json", "utility.json")),
    (FAST_MODEL, {"samples.png", "distill_config.json", "audit_closest_pairs.png"},
     ("evaluation.json", "audit.json", "utility.json")),
], ids=["default", "4-step"])
def test_shipped_model_is_complete_and_small(folder, extra, results):
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"model_index.json", "pipeline_bloodmnist.py", "README.md", "run_config.json", "evaluation.json",
            "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"} | extra <= files
    assert not any(name.endswith((".bin", ".pkl", ".pt")) for name in files)  # safetensors only, no pickles
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) <= 25 * 2**20
    assert metadata_load(folder / "README.md")["library_name"] == "diffusers"
    # Every shipped result is of these weights (a model swapped in without re-evaluation would fail here), and the
    # card shows them because of it.
    from medgen_diffusers.provenance import folder_weights_sha256

    weights = folder_weights_sha256(folder)
    for name in results:
        assert json.loads((folder / name).read_text())["provenance"]["weights_sha256"] == weights, name
    assert "| this model |" in (folder / "README.md").read_text()
    # The pipeline file saved beside the weights (what plain diffusers runs) is the current one, not a stale copy.
    current = Path(__file__).resolve().parents[1] / "pipelines" / "pipeline_bloodmnist.py"
    assert (folder / "pipeline_bloodmnist.py").read_text() == current.read_text()


def test_from_pretrained_without_a_path_gives_blood_cells():
    pipe = BloodMNISTPipeline.from_pretrained()
    pipe.set_progress_bar_config(disable=True)
    assert pipe.num_classes == 8 and pipe.config.default_num_inference_steps <= 25
    pipe.scheduler.set_timesteps(pipe.config.default_num_inference_steps)
    assert pipe.scheduler.timesteps[0] == 999  # trailing spacing: the first step sees pure noise (FID 34.3 -> 14.7)
    images = pipe(class_labels=list(range(8)), output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (8, 28, 28, 3)
    # Smooth stained cells on a light background, not noise: neighbour differences and brightness like real data.
    assert np.abs(np.diff(images, axis=2)).mean() < 0.1
    assert 0.5 < images.mean() < 0.95


def test_cli_samples_the_shipped_model_by_default(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", "--num-images", "8", "--out", str(out)]) == 0
    assert out.is_file() and "wrote 8 images" in capsys.readouterr().out


def test_fast_samples_the_shipped_four_step_model(tmp_path, capsys):
    pipe = BloodMNISTPipeline.from_pretrained(FAST_MODEL)
    assert type(pipe.scheduler).__name__ == "LCMScheduler" and pipe.config.default_num_inference_steps == 4
    out = tmp_path / "fast.npz"
    assert main(["sample", "--fast", "--num-images", "8", "--balanced", "--out", str(out)]) == 0
    assert "the shipped 4-step model: test FID" in capsys.readouterr().out  # says what it trades
    with np.load(out, allow_pickle=False) as npz:
        made_by = json.loads(str(npz["provenance"]))
        images = npz["train_images"]
    assert made_by["pipeline"] == "medgen_diffusers/pretrained/bloodmnist-4step (shipped)"
    assert images.shape == (8, 28, 28, 3) and np.abs(np.diff(images / 255.0, axis=2)).mean() < 0.1  # cells, not noise
    assert main(["sample", DEFAULT_MODEL, "--fast", "--out", str(tmp_path / "x.png")]) == 2
    assert "--fast picks the shipped 4-step model" in capsys.readouterr().err
    assert main(["sample", "--fast", "--out", str(Path(FAST_MODEL) / "x.png")]) == 2  # never written into
    assert "inside a shipped model's folder" in capsys.readouterr().err

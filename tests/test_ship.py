"""Save -> card -> push (captured, offline) -> pull from the local Hub cache -> `medgen sample` to every format."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from huggingface_hub import CommitOperationAdd, HfApi, metadata_load

from medgen_diffusers import BloodMNISTPipeline
from medgen_diffusers.cli import main
from medgen_diffusers.hub import HubError, push_operations, push_pipeline
from medgen_diffusers.model_card import write_card
from medgen_diffusers.provenance import folder_weights_sha256

BIN = Path(sys.executable).parent
PIPELINE_FILES = {"model_index.json", "pipeline_bloodmnist.py", "README.md", "scheduler/scheduler_config.json",
                  "unet/config.json", "unet/diffusion_pytorch_model.safetensors"}


@pytest.fixture
def saved(conditional_pipe, tmp_path):
    """A saved conditional pipeline with its card, plus training leftovers a push must not send."""
    folder = tmp_path / "pipeline"
    conditional_pipe.save_pretrained(folder)
    (folder / "run_config.json").write_text(json.dumps({"dataset": "bloodmnist", "resolution": 28, "channels": 3}))
    write_card(folder, repo_id="medgen/bloodmnist-test")
    (folder / "checkpoint-10").mkdir()
    (folder / "checkpoint-10" / "optimizer.bin").write_bytes(b"state")
    (folder / "logs").mkdir()
    (folder / "logs" / "events.json").write_text("{}")
    return folder


def test_card_metadata_and_sections(saved):
    metadata = metadata_load(saved / "README.md")
    assert metadata["library_name"] == "diffusers"
    assert metadata["pipeline_tag"] == "unconditional-image-generation"
    assert metadata["license"] == "cc-by-4.0" and "medmnist/bloodmnist" in metadata["datasets"]
    assert {"medical-imaging", "medmnist", "class-conditional"} <= set(metadata["tags"])
    text = (saved / "README.md").read_text()
    for section in ("## How to use", "## Training", "## Metrics", "## Intended use and limitations", "## Citation",
                    "trust_remote_code=True", "not for diagnosis", "platelet"):
        assert section in text


def test_card_shows_metrics_with_floor_and_seed(saved):
    evaluation = {"dataset": "bloodmnist", "split": "test", "num_generated": 10, "num_real": 10,
                  "standard": {"fid": 12.5, "kid": 0.004, "kid_std": 0.001},
                  "seed": {"fid64": 1.25, "kid64": 2.5, "kid64_std": 0.5},
                  "floor": {"num_train": 10, "standard": {"fid": 3.0, "kid": 0.0001, "kid_std": 0.0001},
                            "seed": {"fid64": 0.1, "kid64": 0.01, "kid64_std": 0.01}},
                  "seed_reference": {"fid64": 5.039, "kid64": 4.141, "kid64_std": 0.343},
                  "generation": {"scheduler": "dpmsolver", "steps": 20, "nfe_per_image": 20, "seed": 0,
                                 "timestep_spacing": "trailing"},
                  "provenance": {"weights_sha256": "0" * 64}}
    (saved / "evaluation.json").write_text(json.dumps(evaluation))
    # Another model's result (an earlier run in the folder, a copied file) is not this model's: not on its card.
    assert "12.500" not in write_card(saved).read_text()
    evaluation["provenance"]["weights_sha256"] = folder_weights_sha256(saved)
    (saved / "evaluation.json").write_text(json.dumps(evaluation))
    text = write_card(saved).read_text()
    assert "| this model | 12.500 | 0.00400 | 1.250 | 2.500 |" in text  # both KIDs as computed: one convention
    assert "| real-vs-real floor (10 train images) | 3.000 |" in text
    assert "5.039" in text and "20 network evaluations per image" in text and "20 steps, trailing spacing" in text
    # A model that replaced another carries the old numbers beside its own (`package_default_model.sh` adds them).
    evaluation["previous"] = {"label": "5,500 steps, lr 1e-3", "standard": {"fid": 13.28, "kid": 0.0075},
                              "seed": {"fid64": 0.024, "kid64": 0.01}}
    (saved / "evaluation.json").write_text(json.dumps(evaluation))
    text = write_card(saved).read_text()
    assert "| previous version (5,500 steps, lr 1e-3) | 13.280 | 0.00750 | 0.024 | 0.010 |" in text


def test_push_sends_one_commit_with_exactly_the_pipeline_files(saved, monkeypatch):
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create_repo", repo_id, kw)))

    def create_commit(self, repo_id, operations, **kw):
        calls.append(("create_commit", repo_id, list(operations)))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    url = push_pipeline(saved, "medgen/bloodmnist-test", token="hf_test")
    assert url.endswith("/commit/abc")
    assert [c[0] for c in calls] == ["create_repo", "create_commit"]
    operations = calls[1][2]
    assert all(isinstance(op, CommitOperationAdd) for op in operations)
    assert {op.path_in_repo for op in operations} == PIPELINE_FILES | {"run_config.json"}
    assert {op.path_in_repo for op in operations} == {op.path_in_repo for op in push_operations(saved)}
    assert calls[0][2]["private"] is False  # a model of a public data set (MedMNIST) may be public
    # A model of anyone's own data goes to a private repository unless --public is said.
    (saved / "run_config.json").write_text(json.dumps({"dataset": "/data/hospital/ct", "resolution": 28}))
    push_pipeline(saved, "medgen/own-test", token="hf_test")
    assert calls[-2][0] == "create_repo" and calls[-2][2]["private"] is True
    push_pipeline(saved, "medgen/own-test", token="hf_test", private=False)
    assert calls[-2][2]["private"] is False


def test_push_without_token_or_network_fails_cleanly(saved, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    before = sorted(p.relative_to(saved) for p in saved.rglob("*"))
    assert main(["push", str(saved), "medgen/bloodmnist-test"]) == 3
    assert "No Hugging Face token" in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="HF_HUB_OFFLINE=1"):
        push_pipeline(saved, "medgen/bloodmnist-test", token="hf_test")
    assert sorted(p.relative_to(saved) for p in saved.rglob("*")) == before  # nothing written or removed locally


def cache_from_operations(operations, hub_cache: Path, repo_id: str) -> None:
    """Lay out exactly the pushed files as huggingface_hub caches a downloaded repo (what a pull would find)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = hub_cache / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    for op in operations:
        target = repo_dir / "snapshots" / commit / op.path_in_repo
        target.parent.mkdir(parents=True, exist_ok=True)
        content = op.path_or_fileobj  # JSON goes as bytes (paths cut), files by path
        target.write_bytes(content if isinstance(content, bytes) else Path(content).read_bytes())


def test_pull_from_cache_then_sample_1000_balanced_to_npz(saved, conditional_pipe, tmp_path, monkeypatch):
    hub_cache = tmp_path / "hf" / "hub"
    cache_from_operations(push_operations(saved), hub_cache, "medgen/bloodmnist-test")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pulled = BloodMNISTPipeline.from_pretrained("medgen/bloodmnist-test", cache_dir=hub_cache)
    for (name, a), (_, b) in zip(conditional_pipe.unet.state_dict().items(), pulled.unet.state_dict().items()):
        assert torch.equal(a, b), name
    assert pulled.config.class_names == conditional_pipe.config.class_names

    out = tmp_path / "synthetic.npz"  # the console script, resolving the repo id from the cache like a user would
    result = subprocess.run([str(BIN / "medgen"), "sample", "medgen/bloodmnist-test", "--num-images", "1000",
                             "--balanced", "--scheduler", "ddim", "--steps", "1", "--out", str(out)],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "basophil: 125" in result.stdout
    with np.load(out) as data:  # MedMNIST's own keys, dtypes and shapes
        assert data["train_images"].shape == (1000, 28, 28, 3) and data["train_images"].dtype == np.uint8
        assert data["train_labels"].shape == (1000, 1) and data["train_labels"].dtype == np.uint8
        assert np.bincount(data["train_labels"][:, 0]).tolist() == [125] * 8
    assert not out.with_name(out.name + ".parts").exists()


def test_npz_is_byte_identical_for_the_same_seed(saved, tmp_path):
    args = ["sample", str(saved), "--num-images", "24", "--like-split", "test", "--steps", "2", "--chunk-size", "10"]
    assert main(args + ["--out", str(tmp_path / "a.npz")]) == 0
    assert main(args + ["--out", str(tmp_path / "b.npz")]) == 0
    assert main(args[:-2] + ["--chunk-size", "10", "--seed", "1", "--out", str(tmp_path / "c.npz")]) == 0
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert (tmp_path / "a.npz").read_bytes() != (tmp_path / "c.npz").read_bytes()


def test_folder_and_datasets_formats(saved, tmp_path):
    assert main(["sample", str(saved), "--num-images", "16", "--balanced", "--steps", "2", "--format", "folder",
                 "--out", str(tmp_path / "folder")]) == 0
    names = json.loads((saved / "model_index.json").read_text())["class_names"]
    assert sorted(p.name for p in (tmp_path / "folder").iterdir() if p.is_dir()) == sorted(names)
    made_by = json.loads((tmp_path / "folder" / "provenance.json").read_text())  # which weights made them
    assert made_by["weights_sha256"] == folder_weights_sha256(saved)
    assert all(len(list((tmp_path / "folder" / name).glob("*.png"))) == 2 for name in names)

    assert main(["sample", str(saved), "--num-images", "16", "--class", "platelet", "--steps", "2", "--format",
                 "datasets", "--out", str(tmp_path / "ds")]) == 0
    dataset = datasets.load_from_disk(str(tmp_path / "ds"))
    assert len(dataset) == 16 and isinstance(dataset.features["image"], datasets.Image)
    assert dataset.features["label"].names == names
    assert set(dataset["label"]) == {names.index("platelet")} and dataset[0]["image"].size == (28, 28)


def test_killed_sample_run_resumes_to_the_same_bytes(saved, tmp_path, capsys):
    args = [str(BIN / "medgen"), "sample", str(saved), "--num-images", "48", "--balanced", "--scheduler", "ddpm",
            "--steps", "40", "--chunk-size", "8"]
    parts = tmp_path / "resumed.npz.parts"
    process = subprocess.Popen(args + ["--out", str(tmp_path / "resumed.npz")], stderr=subprocess.PIPE,
                               stdout=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 240
    while not (parts / "chunk-00001.npz").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = sorted(p.name for p in parts.glob("chunk-*.npz"))
    assert "chunk-00001.npz" in done_before and "chunk-00005.npz" not in done_before
    assert not (tmp_path / "resumed.npz").exists()

    # The rerun and the straight run in this process (same thread count as the killed one: same bytes).
    assert main([*args[1:], "--out", str(tmp_path / "resumed.npz")]) == 0
    assert f"{8 * len(done_before)}/48" in capsys.readouterr().err  # the progress bar started after the finished chunks
    assert main([*args[1:], "--out", str(tmp_path / "straight.npz")]) == 0
    assert (tmp_path / "resumed.npz").read_bytes() == (tmp_path / "straight.npz").read_bytes()


def test_sample_errors_exit_2(saved, tmp_path, capsys):
    assert main(["sample", str(saved), "--num-images", "10", "--balanced", "--out", str(tmp_path / "x.npz")]) == 2
    assert "multiple of 8" in capsys.readouterr().err
    assert main(["sample", str(saved), "--out", str(tmp_path / "x.txt")]) == 2
    assert "Cannot tell the format" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
    (tmp_path / "keep.npz").write_bytes(b"user data")
    assert main(["sample", str(saved), "--steps", "1", "--out", str(tmp_path / "keep.npz")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "keep.npz").read_bytes() == b"user data"

"""Off the tuned path: every data source (class folders, unlabeled folder, .npz, datasets, grayscale, 64 px), built
from the real BloodMNIST file, trained on, sampled and evaluated end to end; several processes exactly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import REPO, read_metrics, run_training, train_here
from PIL import Image

from medgen_diffusers import BloodMNISTPipeline, load_medmnist_tensors
from medgen_diffusers.cli import main
from medgen_diffusers.data import DataError, load_images

BIN = Path(sys.executable).parent
PER_CLASS = 12  # images per class and split: 96 train / 96 test images per source
TINY = ["--model_preset", "tiny", "--train_batch_size", "8", "--lr_warmup_steps", "1", "--num_sample_images", "0",
        "--logger", "none"]


def real_subset(data_root, split):
    """PER_CLASS real images of every class, uint8 NHWC, with labels."""
    data = load_medmnist_tensors("bloodmnist", split, root=data_root)
    picks = np.concatenate([np.flatnonzero(data.labels.numpy() == c)[:PER_CLASS] for c in range(8)])
    return data.images.numpy()[picks].transpose(0, 2, 3, 1), data.labels.numpy()[picks], data.class_names


def write_class_folders(folder, images, labels, names, size=None, gray=False):
    for i, (image, label) in enumerate(zip(images, labels)):
        picture = Image.fromarray(image)
        if gray:
            picture = picture.convert("L")
        if size:
            picture = picture.resize((size, size), Image.BICUBIC)
        target = folder / names[label].split("(")[0].strip().replace(" ", "_")
        target.mkdir(parents=True, exist_ok=True)
        picture.save(target / f"{i:04d}.png")


@pytest.fixture(scope="module")
def sources(data_root, tmp_path_factory):
    """Every source form, in temp dirs, from the real file."""
    root = tmp_path_factory.mktemp("sources")
    train, train_labels, names = real_subset(data_root, "train")
    test, test_labels, _ = real_subset(data_root, "test")
    out = {}
    # Grayscale 64-px class folders with train/ and test/ splits (the acceptance case), plus a stray file.
    gray = root / "gray64"
    write_class_folders(gray / "train", train, train_labels, names, size=64, gray=True)
    write_class_folders(gray / "test", test, test_labels, names, size=64, gray=True)
    (gray / "train" / "platelet" / "notes.txt").write_text("scanner settings")
    out["gray64"] = gray
    # RGB class folders without split folders: all images are the train split.
    write_class_folders(root / "rgb", train, train_labels, names)
    out["rgb"] = root / "rgb"
    # Unlabeled: images directly in the folder.
    (root / "unlabeled").mkdir()
    for i, image in enumerate(train):
        Image.fromarray(image).save(root / "unlabeled" / f"{i:04d}.png")
    out["unlabeled"] = root / "unlabeled"
    # A MedMNIST-layout npz of one's own.
    np.savez(root / "mine.npz", train_images=train, train_labels=train_labels[:, None].astype(np.uint8),
             test_images=test, test_labels=test_labels[:, None].astype(np.uint8))
    out["npz"] = root / "mine.npz"
    # A datasets dataset on disk with other column names.
    features = datasets.Features({"img": datasets.Image(), "cell": datasets.ClassLabel(names=names)})
    as_split = lambda x, y: datasets.Dataset.from_dict(  # noqa: E731
        {"img": [Image.fromarray(i) for i in x], "cell": y.tolist()}, features=features)
    datasets.DatasetDict(train=as_split(train, train_labels), test=as_split(test, test_labels)).save_to_disk(
        str(root / "hfds"))
    out["datasets"] = root / "hfds"
    # Multi-label (ChestMNIST's layout: 14 binary labels per image).
    multi = np.random.default_rng(0).integers(0, 2, (len(train), 14)).astype(np.uint8)
    np.savez(root / "multilabel.npz", train_images=train[..., 0], train_labels=multi)
    out["multilabel"] = root / "multilabel.npz"
    return out


def test_every_source_reads_into_the_same_tensors(sources, caplog):
    gray = load_images(str(sources["gray64"]), "train")
    assert gray.images.shape == (96, 1, 64, 64) and gray.images.dtype == torch.uint8
    assert gray.labels.tolist() == sorted(gray.labels.tolist()) and len(gray.class_names) == 8
    assert "ignored 1 non-image file" in caplog.text  # notes.txt
    rgb = load_images(str(sources["rgb"]), "train")
    npz = load_images(str(sources["npz"]), "test")
    hfds = load_images(str(sources["datasets"]), "train", image_column="img", label_column="cell")
    assert rgb.images.shape == hfds.images.shape == (96, 3, 28, 28) and npz.images.shape == (96, 3, 28, 28)
    assert hfds.class_names[7] == "platelet" and torch.bincount(hfds.labels).tolist() == [PER_CLASS] * 8
    unlabeled = load_images(str(sources["unlabeled"]), "train")
    assert unlabeled.labels is None and unlabeled.class_names is None
    multi = load_images(str(sources["multilabel"]), "train")
    assert multi.labels is None and "14 labels per image" in multi.notice and multi.images.shape[1] == 1
    # The checksum that keys feature caches is the content's: different data, different keys.
    assert len({d.md5 for d in (gray, rgb, npz, hfds, unlabeled)}) == 5
    assert load_images(str(sources["rgb"]), "train", size=64).images.shape == (96, 3, 64, 64)  # --resolution


def test_bad_sources_are_one_clear_error_each(sources, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_images(str(tmp_path / "empty"))
    mixed = tmp_path / "mixed" / "a"
    mixed.mkdir(parents=True)
    Image.new("RGB", (28, 28)).save(mixed / "small.png")
    Image.new("RGB", (32, 32)).save(mixed / "big.png")
    with pytest.raises(DataError, match=r"big.png is 32x32.*--resolution"):
        load_images(str(tmp_path / "mixed"))
    assert load_images(str(tmp_path / "mixed"), size=28).images.shape == (2, 3, 28, 28)
    broken = tmp_path / "broken" / "a"
    broken.mkdir(parents=True)
    Image.new("RGB", (28, 28)).save(broken / "ok.png")
    (broken / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"Cannot read image .*bad.png"):
        load_images(str(tmp_path / "broken"))
    with pytest.raises(DataError, match=r"Cannot read image .*bad.png"):  # and when preparing a store
        load_images(str(tmp_path / "broken"), prepare=True)
    with pytest.raises(DataError, match=r"no column 'picture'.*--image_column"):
        load_images(str(sources["datasets"]), image_column="picture")
    with pytest.raises(DataError, match=r"has no 'val_images' array"):
        load_images(str(sources["npz"]), "val")
    np.savez(tmp_path / "floats.npz", train_images=np.zeros((4, 28, 28, 3), np.float32))
    with pytest.raises(DataError, match="must be uint8"):
        load_images(str(tmp_path / "floats.npz"))
    with pytest.raises(ValueError, match="Unknown dataset"):
        load_images("no-such-thing")


def train_sample_evaluate(source, tmp_path, data_root, monkeypatch, *train_args, split="test", columns=()):
    """Train, sample and evaluate in this process (the console scripts run in test_cli.py and test_wheel.py); the
    evaluation in a cache of its own, so it reads the source itself."""
    run = tmp_path / "run"
    train_here(run, data_root, "--dataset", str(source), "--max_train_steps", "3", *TINY, *train_args, *columns)
    monkeypatch.setenv("MEDGEN_CACHE", str(tmp_path / "cache"))
    dash = [c.replace("_", "-") if c.startswith("--") else c for c in columns]
    assert main(["sample", str(run), "--num-images", "8", "--steps", "2", "--out", str(tmp_path / "s.npz")]) == 0
    assert main(["evaluate", str(run), "--dataset", str(source), "--split", split, "--num-samples", "8", "--num-real",
                 "16", "--steps", "2", "--protocols", "seed", "--out", str(tmp_path / "e.json"), *dash]) == 0
    with np.load(tmp_path / "s.npz") as data:
        images = data["train_images"]
    return run, images, json.loads((tmp_path / "e.json").read_text())


def test_grayscale_64px_class_folders_train_sample_and_evaluate(sources, tmp_path, data_root, monkeypatch):
    run, images, result = train_sample_evaluate(sources["gray64"], tmp_path, data_root, monkeypatch)
    config = json.loads((run / "run_config.json").read_text())
    assert config["resolution"] == 64 and config["channels"] == 1 and config["class_conditional"]
    assert images.shape == (8, 64, 64, 1) and images.dtype == np.uint8  # MedMNIST's grayscale layout
    pipe = BloodMNISTPipeline.from_pretrained(run)
    assert pipe.unet.config.sample_size == 64 and len(pipe.unet.config.block_out_channels) == 4
    assert pipe.config.class_names[-1] == "platelet"
    assert result["size"] == 64 and result["num_real"] == 16 and np.isfinite(result["seed"]["fid64"])


@pytest.mark.parametrize("name, train_args, split, columns", [
    ("npz", (), "test", ()),
    ("datasets", (), "test", ("--image_column", "img", "--label_column", "cell")),
    ("unlabeled", (), "train", ()),
])
def test_other_sources_train_sample_and_evaluate(sources, tmp_path, data_root, monkeypatch, name, train_args, split,
                                                columns):
    run, images, result = train_sample_evaluate(sources[name], tmp_path, data_root, monkeypatch, *train_args,
                                                split=split, columns=columns)
    config = json.loads((run / "run_config.json").read_text())
    assert config["class_conditional"] is (name != "unlabeled")
    assert images.shape == (8, 28, 28, 3) and result["num_generated"] == 8


def test_multilabel_data_trains_unconditionally_and_refuses_conditioning(sources, tmp_path, data_root, caplog):
    with pytest.raises(ValueError, match="--class_conditional needs one class label per image"):
        train_here(tmp_path / "refused", data_root, "--dataset", str(sources["multilabel"]), "--max_train_steps", "1",
                   "--class_conditional", *TINY)
    assert not (tmp_path / "refused").exists()  # a refused start leaves no folder behind
    train_here(tmp_path / "run", data_root, "--dataset", str(sources["multilabel"]), "--max_train_steps", "1", *TINY)
    assert "14 labels per image" in caplog.text
    assert json.loads((tmp_path / "run" / "run_config.json").read_text())["class_conditional"] is False


# Several processes ---------------------------------------------------------------------------------------------------
TWO = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port")


def test_two_machines_prepare_once_each_and_partition_every_epoch_exactly(tmp_path, data_root):
    # Two "machines" on this one (Accelerate's own launcher: --num_machines 2, a rank each, gloo on localhost), each
    # with its own cache disk, train on a folder of 520 real images: each node prepares the folder once into its
    # store, and the two ranks read disjoint halves of every epoch from it. 8 images per rank: 32 global batches per
    # epoch (the last 8 images dropped with the partial batch).
    from conftest import write_own_folder

    folder = write_own_folder(tmp_path / "cells", data_root, per_split=(("train", 65), ("val", 1), ("test", 1)))
    out = tmp_path / "run"
    machines = [subprocess.Popen(
        [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_machines", "2", "--num_processes", "2",  # CPU: gloo
         "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", "29541",
         "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "train_unconditional.py"),
         "--output_dir", str(out), "--dataset", str(folder), "--max_train_steps", "64", "--record_data_order", *TINY],
        env={**os.environ, "MEDGEN_CACHE": str(tmp_path / f"node{rank}")}, cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for machine in machines:
        _, err = machine.communicate(timeout=900)
        assert machine.returncode == 0, err[-3000:]
    for rank in (0, 1):  # one store per node, prepared by its local main process
        assert len(list((tmp_path / f"node{rank}" / "stores").iterdir())) == 1
    drawn = {r: [json.loads(line) for line in (out / "data_order" / f"rank{r}.jsonl").read_text().splitlines()]
             for r in (0, 1)}
    for epoch in (0, 1):
        per_rank = [[i for row in drawn[r] if row["epoch"] == epoch for i in row["indices"]] for r in (0, 1)]
        assert len(per_rank[0]) == len(per_rank[1]) == 256
        union = set(per_rank[0]) | set(per_rank[1])
        assert not set(per_rank[0]) & set(per_rank[1]) and len(union) == 512 and union <= set(range(520))
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["global_step"] == 64 and summary["num_processes"] == 2 and summary["ranks_in_sync"]


def test_uneven_batches_end_at_max_steps_and_resume_exactly_on_two_ranks(tmp_path, data_root):
    # 120 images, 8 per rank: 15 global batches -> 7 per rank per epoch (counting before prepare() assumed 8), so
    # step 8 is the first of epoch 1. The first leg stops at 4 by asking for 4 steps, so the learning rate must not
    # depend on --max_train_steps: a constant schedule (the default cosine decay is laid out over the run's length).
    args = ["--max_train_samples", "120", "--checkpointing_steps", "4", "--lr_scheduler", "constant_with_warmup", *TINY]
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    run_training(reference, data_root, *args, "--max_train_steps", "8", launcher=(*TWO, "29542"))
    assert [m["step"] for m in read_metrics(reference)] == list(range(1, 9))
    assert [m["epoch"] for m in read_metrics(reference)] == [0] * 7 + [1]
    summary = json.loads((reference / "train_summary.json").read_text())
    assert summary["global_step"] == 8 and summary["ranks_in_sync"]
    run_training(resumed, data_root, *args, "--max_train_steps", "4", launcher=(*TWO, "29543"))
    run_training(resumed, data_root, *args, "--max_train_steps", "8", "--resume_from_checkpoint", "latest",
                 launcher=(*TWO, "29544"))
    assert [m["loss"] for m in read_metrics(resumed)] == [m["loss"] for m in read_metrics(reference)]
    assert [m["epoch"] for m in read_metrics(resumed)] == [m["epoch"] for m in read_metrics(reference)]


def test_two_process_sample_equals_one_process_byte_for_byte(conditional_pipe, tmp_path):
    saved = tmp_path / "pipe"
    conditional_pipe.save_pretrained(saved)
    args = ["sample", str(saved), "--num-images", "20", "--chunk-size", "3", "--steps", "2", "--seed", "5",
            "--device", "cpu"]
    # torchrun gives each process one thread; CPU kernels round differently with other thread counts, so the
    # one-process run (here, in this process) gets one too (any two runs: same threads, same bytes).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*args, "--out", str(tmp_path / "one.npz")]) == 0
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    two = subprocess.run([*TWO, "29546", "-m", "medgen_diffusers.cli", *args, "--out", str(tmp_path / "two.npz")],
                         capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote 20 images") == 1  # only rank 0 assembles and reports
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()
    assert not (tmp_path / "two.npz.parts").exists()

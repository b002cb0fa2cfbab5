"""What a user's own data needs to be told the truth: one class numbering for every split, 16-bit images scaled (not
clipped), augmentation that keeps labels true, cards of the data's own licence, generated-array-only npz reading,
class-matched membership sets, weights-aware resume and merge, exit codes that say what went wrong."""

import hashlib

import datasets
import numpy as np
import pytest
import torch
from conftest import OWN_CLASSES, small_unet, write_own_folder
from diffusers import DDPMScheduler
from huggingface_hub import metadata_load
from PIL import Image

from medgen_diffusers import BloodMNISTPipeline
from medgen_diffusers.audit import membership_sets
from medgen_diffusers.cli import main
from medgen_diffusers.data import AUGMENTATION_POLICY, DataError, load_images, resolve_augmentation
from medgen_diffusers.scoring import read_images, stratified_subset
from medgen_diffusers.model_card import build_model_card
from medgen_diffusers.utility import UtilityError, merge_utility


def test_every_split_numbers_classes_as_train_does(tmp_path, data_root):
    root = write_own_folder(tmp_path / "own", data_root, (("train", 1), ("test", 2)))
    for name in OWN_CLASSES[:2]:  # test lacks train's first two classes
        for f in (root / "test" / name).iterdir():
            f.unlink()
        (root / "test" / name).rmdir()
    train, test = load_images(str(root), "train"), load_images(str(root), "test")
    assert test.class_names == train.class_names == OWN_CLASSES
    assert sorted(set(test.labels.tolist())) == list(range(2, 8))  # "erythroblast" is 2 in both, not 0
    (root / "test" / "unseen").mkdir()
    Image.new("RGB", (28, 28)).save(root / "test" / "unseen" / "x.png")
    with pytest.raises(DataError, match="unseen.*that train/ lacks"):
        load_images(str(root), "test", size=None, root="again")  # another cache key: read afresh


def test_datasets_splits_share_train_numbering(tmp_path):
    image = Image.new("RGB", (8, 8))
    train = datasets.Dataset.from_dict({"image": [image] * 3, "label": ["a", "b", "c"]})
    test = datasets.Dataset.from_dict({"image": [image] * 2, "label": ["b", "c"]})
    datasets.DatasetDict(train=train, test=test).save_to_disk(str(tmp_path / "ds"))
    loaded = load_images(str(tmp_path / "ds"), "test")
    assert loaded.class_names == ["a", "b", "c"] and loaded.labels.tolist() == [1, 2]


def test_16_bit_and_float_images_are_scaled_not_clipped(tmp_path, data_root):
    with np.load(data_root / "bloodmnist.npz") as npz:
        gray8 = np.asarray(Image.fromarray(npz["train_images"][0]).convert("L"))
    gray16 = gray8.astype(np.uint16) * 257  # the same picture at 16 bits, full range
    for name, picture in (("png16", Image.fromarray(gray16)), ("tif16", Image.fromarray(gray16)),
                          ("float", Image.fromarray(gray8.astype(np.float32) / 255))):
        folder = tmp_path / name / "cells"
        folder.mkdir(parents=True)
        picture.save(folder / ("x.tif" if name != "png16" else "x.png"))
        if name == "png16":
            assert Image.open(folder / "x.png").mode.startswith("I")  # really 16-bit on disk
        loaded = load_images(str(tmp_path / name), "train")
        np.testing.assert_array_equal(loaded.images[0, 0].numpy(), gray8)  # not "almost all white"
    bad = tmp_path / "bad" / "cells"
    bad.mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 2.0, dtype=np.float32)).save(bad / "x.tif")
    with pytest.raises(DataError, match="outside 0..1"):
        load_images(str(tmp_path / "bad"), "train")


def test_augmentation_keeps_labels_true():
    assert resolve_augmentation("auto", "bloodmnist")[0] == "dihedral"
    for flag in ("organamnist", "organcmnist", "organsmnist", "chestmnist", "octmnist", "pneumoniamnist"):
        assert resolve_augmentation("auto", flag)[0] == "none" == AUGMENTATION_POLICY[flag]
    assert resolve_augmentation("auto", "/data/my-xrays")[0] == "none"  # own data: off unless asked
    assert resolve_augmentation("dihedral", "/data/my-cells") == ("dihedral", "asked for (--augment)")
    assert resolve_augmentation(True, "bloodmnist")[0] == "dihedral"  # older runs recorded a boolean


def test_card_takes_licence_and_citation_from_the_source():
    chest = build_model_card({"dataset": "chestmnist", "channels": 1, "resolution": 28}).content
    assert "license: cc-by-4.0" in chest and "medmnist/chestmnist" in chest and "Acevedo" not in chest
    assert "28x28\ngrayscale" in chest or "28x28 grayscale" in chest.replace("\n", " ")
    derma = build_model_card({"dataset": "dermamnist"}).content
    assert "license: cc-by-nc-4.0" in derma  # MedMNIST's INFO: DermaMNIST is non-commercial
    own = build_model_card({"dataset": "/hospital/xrays", "channels": 1}, description="Chest X-rays, site A.",
                           citation="@misc{siteA}")
    assert "license: other" in own.content and "datasets:" not in own.content and "/hospital" not in own.content
    assert "Chest X-rays, site A." in own.content and "@misc{siteA}" in own.content and "smears" not in own.content


def test_npz_reading_takes_the_generated_array_and_a_class_mixed_subset(tmp_path):
    generated = np.zeros((40, 4, 4, 3), np.uint8)
    labels = np.repeat(np.arange(4), 10)  # sorted by class, as medgen sample writes
    real_test = np.full((5, 4, 4, 3), 255, np.uint8)
    np.savez(tmp_path / "x.npz", train_images=generated, train_labels=labels[:, None], test_images=real_test,
             test_labels=np.zeros((5, 1)))
    images, read_labels = read_images(tmp_path / "x.npz")
    assert len(images) == 40 and images.max() == 0  # no real test image among the "generated" ones
    keep = stratified_subset(8, read_labels, len(images), seed=0)
    assert np.bincount(read_labels[keep]).tolist() == [2, 2, 2, 2] and keep.tolist() != list(range(8))
    np.savez(tmp_path / "two.npz", a_images=generated, b_images=real_test)
    with pytest.raises(ValueError, match="--images-key"):
        read_images(tmp_path / "two.npz")


def test_membership_sets_are_random_and_class_matched():
    members = np.repeat(np.arange(3), [50, 30, 20])  # sorted by class, as folders are read
    nonmembers = np.repeat(np.arange(3), [5, 10, 25])
    m, n = membership_sets(members, nonmembers, 30, seed=0)
    assert np.bincount(members[m]).tolist() == np.bincount(nonmembers[n]).tolist()
    assert len(m) == len(n) == 30 and m.tolist() != list(range(30))


def test_class_names_come_from_the_config_not_the_class_count():
    pipe = BloodMNISTPipeline(small_unet(True), DDPMScheduler())
    assert pipe.config.class_names == [f"class_{i}" for i in range(8)]  # an 8-class UNet is not blood cells


def test_utility_merge_refuses_results_of_other_weights():
    run = lambda seed: {"seed": seed, "num_images": 1, "acc": 0.9, "auc": 0.9}  # noqa: E731
    base = {"dataset": "x", "split": "test", "arms": {"trtr": {"runs": [run(0)]}, "tstr": {"runs": [run(0)]}}}
    a = {**base, "provenance": {"weights_sha256": "a" * 64}}
    b = {**base, "arms": {"trtr": {"runs": [run(1)]}, "tstr": {"runs": [run(1)]}},
         "provenance": {"weights_sha256": "b" * 64}}
    with pytest.raises(UtilityError, match="different models"):
        merge_utility([a, b])


def test_sample_resume_refuses_parts_of_other_weights(conditional_pipe, tmp_path, capsys):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    folder, out = tmp_path / "model", tmp_path / "s.npz"
    conditional_pipe.save_pretrained(folder)
    args = ["sample", str(folder), "--num-images", "16", "--scheduler", "ddpm", "--steps", "300", "--chunk-size", "4",
            "--out", str(out)]
    process = subprocess.Popen([str(Path(sys.executable).parent / "medgen"), *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (tmp_path / "s.npz.parts" / "chunk-00000.npz").exists() and time.time() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (tmp_path / "s.npz.parts" / "chunk-00000.npz").exists()
    with torch.no_grad():  # the same folder, the same arguments, other weights (e.g. retrained in place)
        next(conditional_pipe.unet.parameters()).add_(1.0)
    conditional_pipe.save_pretrained(folder)
    capsys.readouterr()
    assert main(args) == 2
    assert "chunks of a run with other arguments" in capsys.readouterr().err and not out.exists()


def test_exit_codes_say_what_went_wrong(conditional_pipe, tmp_path, monkeypatch, capsys, data_root):
    conditional_pipe.save_pretrained(tmp_path / "p")
    # A failure of the machine or a bug keeps its traceback (exit 1), it is not "bad input".
    import diffusers

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(diffusers.UNet2DModel, "forward", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        main(["sample", str(tmp_path / "p"), "--steps", "1", "--out", str(tmp_path / "x.png")])
    monkeypatch.undo()
    # The Hub, unreachable (offline): exit 3.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["sample", "nobody-here/no-such-model", "--out", str(tmp_path / "y.png")]) == 3
    assert "Hub" in capsys.readouterr().err
    # A mistyped or unfinished run folder is bad input (exit 2, what to pass instead), not a Hub id or a traceback.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "blood" / "checkpoint-4").mkdir(parents=True)
    for path, said in ((tmp_path / "nowhere", "No folder"), ("runs/bloood", "No folder runs/bloood"),
                       ("runs/blood", "a run that has not finished"), ("runs", "no model_index.json")):
        assert main(["sample", str(path), "--out", str(tmp_path / "z.png")]) == 2, path
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err and "Hub" not in err.split("or a Hugging Face Hub")[0], err
    assert not (tmp_path / "z.png").exists()
    # The commands that first read the run's recorded data say the same (not "records no training data").
    for command in ("audit", "utility"):
        assert main([command, str(tmp_path / "nowhere"), "--out", str(tmp_path / "z.json")]) == 2
        assert f"No folder {tmp_path / 'nowhere'}" in capsys.readouterr().err, command
    # A multi-label MedMNIST set: `medgen data` summarises it instead of crashing. Built from real pixels, with the
    # official checksum replaced by this file's (the real ChestMNIST is not on this machine).
    from medmnist.info import INFO

    with np.load(data_root / "bloodmnist.npz") as npz:
        gray = {s: npz[f"{s}_images"][:20].mean(-1).astype(np.uint8) for s in ("train", "val", "test")}
    labels = (np.random.default_rng(0).random((20, 14)) < 0.2).astype(np.uint8)
    np.savez(tmp_path / "chestmnist.npz", **{f"{s}_images": g for s, g in gray.items()},
             **{f"{s}_labels": labels for s in gray})
    monkeypatch.setitem(INFO["chestmnist"], "MD5", hashlib.md5((tmp_path / "chestmnist.npz").read_bytes()).hexdigest())
    assert main(["data", "--dataset", "chestmnist", "--root", str(tmp_path), "--no-download"]) == 0
    assert f"images per finding {labels.sum(0).tolist()}" in capsys.readouterr().out


def test_loading_checks_only_what_the_pipeline_loads(conditional_pipe, tmp_path):
    conditional_pipe.save_pretrained(tmp_path / "run")
    (tmp_path / "run" / "evaluation.json").write_text('{"standard": ')  # half-written by a killed command
    (tmp_path / "run" / "checkpoint-7.tmp").mkdir()
    (tmp_path / "run" / "checkpoint-7.tmp" / "config.json").write_text("{")
    loaded = BloodMNISTPipeline.from_pretrained(tmp_path / "run")
    assert loaded.config.class_names == conditional_pipe.config.class_names
    (tmp_path / "run" / "unet" / "config.json").write_text("{")  # what it does load: still one clear error
    with pytest.raises(ValueError, match="unet/config.json is corrupt"):
        BloodMNISTPipeline.from_pretrained(tmp_path / "run")


def test_shipped_card_is_bloodmnists_from_its_run(data_root):
    from medgen_diffusers import DEFAULT_MODEL

    meta = metadata_load(f"{DEFAULT_MODEL}/README.md")
    assert meta["license"] == "cc-by-4.0" and meta["datasets"] == ["medmnist/bloodmnist"]

"""The prepared store (store.py, `medgen prepare`): the same pixels, labels, classes, patients and checksum as the
in-memory loader for every source kind; memory-mapped reads; a changed source is noticed; training prepares a
folder once and every later command reads the same store."""

import json
import os

import numpy as np
import pytest
import torch

from conftest import write_own_folder
from medgen_diffusers.cli import main
from medgen_diffusers.data import DataError, load_images
from medgen_diffusers.data.store import is_store, prepare, read_manifest
from test_medical import gray_images, write_dicom


def same_data(source, store, splits=("train", "val", "test"), size=None):
    for split in splits:
        a, b = load_images(str(source), split, size), load_images(str(store), split, size)
        assert torch.equal(a.images, b.images) and a.md5 == b.md5, split
        assert (a.labels is None and b.labels is None) or torch.equal(a.labels, b.labels)
        assert a.class_names == b.class_names


def test_a_store_holds_what_the_loader_gives_for_every_source_kind(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.setenv("MEDGEN_CACHE", str(tmp_path / "cache"))
    # 72 train images: two chunks, each written at its rows by one of two worker processes
    folder = write_own_folder(tmp_path / "cells", data_root, per_split=(("train", 9), ("val", 1), ("test", 2)))
    assert main(["prepare", str(folder), "--out", str(tmp_path / "store"), "--workers", "2"]) == 0
    assert "prepared" in capsys.readouterr().out and is_store(tmp_path / "store")
    same_data(folder, tmp_path / "store")
    # Resized at preparation: the same pixels as the loader's resize, and the folder's checksum.
    same_data(folder, prepare(str(folder), tmp_path / "store64", size=64), size=64)
    # Memory-mapped: nothing of the pixels is copied into the process.
    train = load_images(str(tmp_path / "store"), "train")
    assert isinstance(train.images.numpy().base, np.memmap) or train.images.numpy().base is not None
    manifest = read_manifest(tmp_path / "store")
    assert manifest["splits"]["train"]["count"] == 72 and manifest["splits"]["test"]["class_counts"] == [2] * 8
    # DICOM with patients: the same images and the same patient grouping (indices, no identifiers).
    gray, _ = gray_images(data_root, 40)
    for patient in range(10):
        for k in range(4):
            write_dicom(tmp_path / "ct" / "cells" / f"p{patient}_{k}.dcm", gray[patient * 4 + k:][:1],
                        f"PAT-{patient}")
    store = prepare(str(tmp_path / "ct"), tmp_path / "ct_store", split_by="patient")
    for split in ("train", "val", "test"):
        a = load_images(str(tmp_path / "ct"), split, split_by="patient")
        b = load_images(str(store), split)
        assert torch.equal(a.images, b.images) and a.md5 == b.md5
        assert len(set(a.groups.tolist())) == len(set(b.groups.tolist()))
        assert all(g.isdigit() for g in b.groups.tolist())  # indices: no identifier is stored
    assert "PAT" not in (store / "manifest.json").read_text()
    assert read_manifest(store)["splits"]["train"]["patients"] == 7
    # A store is never overwritten, and a size it does not hold is refused with the fix.
    with pytest.raises(DataError, match="exists: a store is never overwritten"):
        prepare(str(folder), tmp_path / "store")
    with pytest.raises(DataError, match="holds 28-px images, not 64.*--resolution 64"):
        load_images(str(tmp_path / "store"), "train", 64)


def test_training_prepares_a_folder_once_and_notices_a_change(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.setenv("MEDGEN_CACHE", str(tmp_path / "cache"))
    folder = write_own_folder(tmp_path / "cells", data_root, per_split=(("train", 2), ("val", 1), ("test", 1)))
    train = ["train", "--dataset", str(folder), "--model_preset", "tiny", "--max_train_steps", "1",
             "--train_batch_size", "8", "--lr_warmup_steps", "1", "--num_sample_images", "0", "--logger", "none",
             "--mixed_precision", "no"]
    assert main([*train, "--output_dir", str(tmp_path / "a")]) == 0
    assert "preparing" in capsys.readouterr().err
    stores = lambda: [p for p in (tmp_path / "cache" / "stores").iterdir() if is_store(p)]  # noqa: E731
    (store,) = stores()
    assert json.loads((tmp_path / "a" / "run_config.json").read_text())["data_md5"] == \
        read_manifest(store)["checksum"]
    assert main([*train, "--output_dir", str(tmp_path / "b")]) == 0
    assert "preparing" not in capsys.readouterr().err  # reused
    # Every later command reads the same store (no decode), e.g. the audit's train split.
    assert load_images(str(folder), "train").images.numpy().base is not None
    # A file added to the source: noticed, said, prepared again; until then commands read the folder itself.
    extra = next((folder / "train" / "basophil").iterdir())
    os.link(extra, extra.with_name("copy.png"))
    assert len(load_images(str(folder), "train")) == 17  # read from the folder itself: the store is stale
    assert main([*train, "--output_dir", str(tmp_path / "c")]) == 0
    assert "changed since it was prepared" in capsys.readouterr().err
    (store,) = stores()
    assert read_manifest(store)["splits"]["train"]["count"] == 17


def test_a_cache_that_cannot_be_written_falls_back_to_memory(tmp_path, data_root, monkeypatch, capsys):
    folder = write_own_folder(tmp_path / "cells", data_root, per_split=(("train", 1), ("val", 1), ("test", 1)))
    (tmp_path / "ro").write_text("a file where the cache folder would go")
    monkeypatch.setenv("MEDGEN_CACHE", str(tmp_path / "ro"))
    data = load_images(str(folder), "train", prepare=True)
    assert len(data) == 8 and "could not prepare a store" in capsys.readouterr().err



def test_generation_memory_follows_the_image_size_not_a_fixed_batch():
    # A fixed chunk of 256 images made `medgen evaluate` of a 256-px model peak at 7.8 GiB RssAnon (64 images in one
    # batch; 1.9 GiB now, benchmarks/results/scale/commands.jsonl); 28-px chunks stay as the shipped numbers were made.
    # Every generating command (sample, evaluate, audit, utility, figures, training's evaluation) takes this default.
    from diffusers import DDIMScheduler

    from medgen_diffusers import BloodMNISTPipeline, build_unet
    from medgen_diffusers.generation import CHUNK_PIXELS, default_chunk_size

    def chunk(size):
        return default_chunk_size(BloodMNISTPipeline(unet=build_unet("tiny", sample_size=size, channels=1),
                                                     scheduler=DDIMScheduler()))

    assert chunk(28) == 256
    for size in (256, 512):
        assert 1 <= chunk(size) < 16 and chunk(size) * size * size <= CHUNK_PIXELS


def test_non_square_images_keep_their_aspect_ratio_unless_asked(tmp_path, data_root, monkeypatch, capsys):
    # Non-square images were stretched to N x N. Each wide image here is two real cells side by side, [A | B].
    from PIL import Image

    from medgen_diffusers.data import resize_images

    monkeypatch.setenv("MEDGEN_CACHE", str(tmp_path / "cache"))
    with np.load(data_root / "bloodmnist.npz") as npz:
        cells = npz["train_images"][:8]
    for k in range(4):
        (tmp_path / "wide" / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate([cells[2 * k], cells[2 * k + 1]], axis=1)).save(
            tmp_path / "wide" / f"c{k % 2}" / f"{k}.png")
    wide = np.stack([np.concatenate([cells[2 * k], cells[2 * k + 1]], axis=1) for k in (0, 2, 1, 3)])  # class order
    center = load_images(str(tmp_path / "wide"), crop="center").images.permute(0, 2, 3, 1).numpy()
    assert np.array_equal(center, wide[:, :, 14:42])  # the central 28 x 28: half of A, half of B
    pad = load_images(str(tmp_path / "wide"), crop="pad").images.permute(0, 2, 3, 1).numpy()
    assert pad.shape[1:3] == (56, 56) and np.array_equal(pad[:, 14:42], wide) and not pad[:, :14].any()
    stretched = load_images(str(tmp_path / "wide"), "train", 28, crop="resize").images
    expected = resize_images(torch.from_numpy(wide).permute(0, 3, 1, 2).contiguous(), 28)
    assert torch.equal(stretched, expected)
    # The default is center, and the prepared store gives the same pixels and checksum in every mode.
    assert torch.equal(load_images(str(tmp_path / "wide")).images, load_images(str(tmp_path / "wide"), crop="center").images)
    for crop in ("pad", "resize"):
        assert main(["prepare", str(tmp_path / "wide"), "--out", str(tmp_path / crop), "--crop", crop,
                     "--resolution", "28"]) == 0
        a = load_images(str(tmp_path / "wide"), "train", 28, crop=crop)
        b = load_images(str(tmp_path / crop), "train", 28)
        assert torch.equal(a.images, b.images) and a.md5 == b.md5, crop
    with pytest.raises(DataError, match="--crop 'fill': choose center, pad, resize"):
        load_images(str(tmp_path / "wide"), crop="fill")


def test_dicom_and_nifti_are_prepared_file_by_file_and_large_percentile_windows_are_sampled(tmp_path, data_root):
    # A DICOM/NIfTI folder was decoded whole into float64 before anything was written (3,000 512-px slices: ~12.6
    # GB); it is now planned from headers and decoded one file at a time, into the store as the files come. NIfTI
    # volumes drop their empty slices as they are decoded, so the store grows file by file.
    import nibabel as nib

    from medgen_diffusers.data.medical_folders import intensity_rule, split_files

    gray, _ = gray_images(data_root, 60)
    for patient in range(10):
        volume = gray[patient * 6:(patient + 1) * 6].astype(np.float64) * 8 - 1000  # HU-like
        volume[0] = -1000  # an empty (constant) slice: dropped
        (tmp_path / "mr" / "cells").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.stack(list(volume), -1).astype(np.float32), np.eye(4)),
                 tmp_path / "mr" / "cells" / f"subject_{patient:02d}.nii.gz")
        for k in range(3):
            write_dicom(tmp_path / "ct" / "cells" / f"p{patient}_{k}.dcm", gray[patient * 6 + k:][:1],
                        f"PAT-{patient}", window=False)
    for kind in ("mr", "ct"):
        store = prepare(str(tmp_path / kind), tmp_path / f"{kind}_store", size=32, split_by="patient")
        for split in ("train", "val", "test"):
            a, b = load_images(str(tmp_path / kind), split, 32, split_by="patient"), load_images(str(store), split)
            assert torch.equal(a.images, b.images) and a.md5 == b.md5 and torch.equal(a.labels, b.labels), kind
        assert read_manifest(store)["splits"]["train"]["count"] == 7 * (5 if kind == "mr" else 3)
    # Without a window, the train split's percentiles: all values up to the cap, a seeded sample of whole files above.
    train = split_files(tmp_path / "ct", "train", "dicom", "patient")
    exact = intensity_rule(None, train, "dicom")
    sampled = intensity_rule(None, train, "dicom", max_values=5 * 28 * 28)
    assert "sample" not in exact["from"] and "a seeded sample of 5 of 21 train files" in sampled["from"]
    assert sampled != exact and abs(sampled["center"] - exact["center"]) < exact["width"] / 4


def test_max_train_samples_decodes_only_the_images_it_keeps(tmp_path, data_root, monkeypatch, capsys):
    from medgen_diffusers.data import kept_rows
    from medgen_diffusers.provenance import data_source
    from medgen_diffusers.data.sources import _folder_files

    monkeypatch.setenv("MEDGEN_CACHE", str(tmp_path / "cache"))
    folder = write_own_folder(tmp_path / "cells", data_root, per_split=(("train", 5), ("val", 1), ("test", 1)))
    files = _folder_files(folder / "train")[1]
    kept = kept_rows(len(files), 12)
    # a subset of every class, not the first 12 files (the first one and a half classes of a sorted folder)
    assert len(kept) == 12 and len({files[i].parent.name for i in kept}) > 3
    # Every train file it does not keep is corrupt: a full decode fails, the subset never opens them.
    for index, path in enumerate(files):
        if index not in kept:
            path.write_bytes(b"not a png")
    with pytest.raises(DataError):
        load_images(str(folder), "train")
    subset = load_images(str(folder), "train", max_train_samples=12)
    assert len(subset) == 12 and subset.class_names == load_images(str(folder), "val").class_names
    # The store holds the same 12 (prepared file by file; the other splits whole), and training reads them.
    store = prepare(str(folder), tmp_path / "store", max_train_samples=12)
    stored = load_images(str(store), "train")
    assert torch.equal(stored.images, subset.images) and torch.equal(stored.labels, subset.labels)
    assert stored.md5 == subset.md5 and read_manifest(store)["splits"]["val"]["count"] == 8
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(folder), "--max_train_samples", "12", "--train_batch_size", "4",
                 "--max_train_steps", "2", "--num_sample_images", "0", "--logger", "none", "--mixed_precision", "no",
                 "--output_dir", str(run)]) == 0
    config = json.loads((run / "run_config.json").read_text())
    assert config["num_train_images"] == 12 and config["data_md5"] == subset.md5
    # Every later command reads the run's 12 (the audit's members): the data source carries the subset.
    later = data_source(run).load("train")
    assert torch.equal(later.images, subset.images) and later.md5 == config["data_md5"]
    # DICOM: a seeded subset of the files (their frames), the window from those files only; store == loader.
    gray, _ = gray_images(data_root, 30)
    for patient in range(10):
        for k in range(3):
            write_dicom(tmp_path / "ct" / "cells" / f"p{patient}_{k}.dcm", gray[patient * 3 + k:][:1], f"PAT-{patient}",
                        window=False)
    a = load_images(str(tmp_path / "ct"), "train", split_by="patient", max_train_samples=5)
    b = load_images(str(prepare(str(tmp_path / "ct"), tmp_path / "ct_store", split_by="patient",
                                max_train_samples=5)), "train")
    full = load_images(str(tmp_path / "ct"), "train", split_by="patient")
    assert len(a) == 5 and torch.equal(a.images, b.images) and a.md5 == b.md5 and len(full) == 21
    assert a.intensity != full.intensity  # percentiles of the 5 kept slices, not of all 21


def test_bit_depth_16_keeps_16_bits_from_the_files_through_training_to_the_synthetic_pngs(tmp_path, data_root,
                                                                                           monkeypatch):
    from PIL import Image

    monkeypatch.setenv("MEDGEN_CACHE", str(tmp_path / "cache"))
    # 16-bit PNGs of real pixels: one grayscale cell as the high byte, another as the low byte -- detail that an
    # 8-bit read rounds away.
    gray, labels = gray_images(data_root, 96)
    values = gray[:48].astype(np.uint16) * 256 + gray[48:]
    for i, image in enumerate(values):
        split = "train" if i < 32 else ("val" if i < 40 else "test")
        (tmp_path / "xr" / split / f"c{labels[i] % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "xr" / split / f"c{labels[i] % 2}" / f"{i:03d}.png")
    folder = tmp_path / "xr"
    eight = load_images(str(folder), "train")
    data = load_images(str(folder), "train", bit_depth=16)
    files = sorted((folder / "train").rglob("*.png"))
    stack = np.stack([np.asarray(Image.open(f)) for f in files])
    assert data.images16.dtype == torch.uint16 and np.array_equal(data.images16[:, 0].numpy(), stack)
    assert torch.equal(data.images, eight.images)  # the 8-bit view is what an 8-bit read gives
    assert data.md5 != eight.md5  # the checksum is of the 16-bit pixels
    # The store holds the same uint16 pixels (and the 8-bit view), memory-mapped.
    store = prepare(str(folder), tmp_path / "store16", bit_depth=16)
    stored = load_images(str(store), "train", bit_depth=16)
    assert torch.equal(stored.images16, data.images16) and torch.equal(stored.images, data.images)
    assert stored.md5 == data.md5 and read_manifest(store)["bit_depth"] == 16
    with pytest.raises(DataError, match="8-bit images: prepare one with --bit_depth 16"):
        load_images(str(prepare(str(folder), tmp_path / "store8")), "train", bit_depth=16)
    with pytest.raises(DataError, match="8-bit images"):
        load_images("bloodmnist", "train", bit_depth=16)
    # Training reads the 16-bit images (its recorded checksum is theirs); sampling writes 16-bit PNG and DICOM.
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(folder), "--bit_depth", "16", "--train_batch_size", "8",
                 "--max_train_steps", "2", "--num_sample_images", "0", "--logger", "none", "--mixed_precision", "no",
                 "--output_dir", str(run)]) == 0
    config = json.loads((run / "run_config.json").read_text())
    assert config["bit_depth"] == 16 and config["data_md5"] == data.md5
    assert main(["sample", str(run), "--num-images", "4", "--steps", "2", "--format", "folder",
                 "--out", str(tmp_path / "synthetic")]) == 0
    pngs = [Image.open(f) for f in sorted((tmp_path / "synthetic").rglob("*.png"))]
    assert len(pngs) == 4 and all(p.mode == "I;16" for p in pngs)
    assert any((np.asarray(p).astype(np.int64) % 257).any() for p in pngs)  # values an 8-bit image cannot hold
    assert main(["sample", str(run), "--num-images", "2", "--steps", "2", "--format", "dicom",
                 "--out", str(tmp_path / "dcm")]) == 0
    import pydicom

    assert {pydicom.dcmread(f).BitsStored for f in (tmp_path / "dcm").rglob("*.dcm")} == {16}
    assert main(["sample", str(run), "--num-images", "2", "--steps", "2", "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as npz:
        assert npz["train_images"].dtype == np.uint8  # MedMNIST's layout stays 8-bit
    # DICOM: the window mapped onto 0..65535 (12-bit values keep their levels); the store and the loader agree.
    for patient in range(4):
        write_dicom(tmp_path / "ct" / "cells" / f"p{patient}.dcm", gray[patient:][:1], f"PAT-{patient}", window=False)
    a = load_images(str(tmp_path / "ct"), "train", bit_depth=16)
    b = load_images(str(prepare(str(tmp_path / "ct"), tmp_path / "ct16", bit_depth=16)), "train")
    assert torch.equal(a.images16, b.images16) and a.md5 == b.md5
    assert (a.images16.numpy().astype(np.int64) % 257).any()  # windowed onto 16 bits, not 8-bit values x 257

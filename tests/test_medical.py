"""DICOM and NIfTI folders built from real BloodMNIST pixels (no other medical file is on this machine): the
radiologist's intensity path pixel for pixel, canonical NIfTI slices, patient-level splits end to end, no PHI in
anything written, and one clear error per bad file."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import train_here
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import set_pixel_data
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, SecondaryCaptureImageStorage, generate_uid

from medgen_diffusers.cli import main
from medgen_diffusers.data import DataError, load_images
SLOPE, INTERCEPT, CENTER, WIDTH = 0.5, -1000.0, 20.0, 2040.0  # 12-bit stored -> modality units -> window
PHI = ("Doe^Jane", "PAT-0")  # strings of the headers that must never appear in anything written


def medgen(*args) -> int:
    return main([str(a) for a in args])  # the command line, in-process


def reference_window(modality, monochrome1=False):
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR), written out here independently of the code under test; MONOCHROME1's
    minimum is white, so its windowed value is shown inverted."""
    c, w = CENTER - 0.5, WIDTH - 1
    unit = np.clip((modality - c) / w + 0.5, 0, 1)
    return np.round((1 - unit if monochrome1 else unit) * 255).astype(np.uint8)


def gray_images(data_root, count, offset=0):
    with np.load(Path(data_root) / "bloodmnist.npz") as npz:
        rgb, labels = npz["train_images"][offset:offset + count], npz["train_labels"][offset:offset + count, 0]
    return rgb.mean(-1).round().astype(np.uint8), labels


def write_dicom(path, gray_frames, patient, monochrome1=False, window=True):
    stored = gray_frames.astype(np.uint16) * 16  # 12-bit: 0..4080
    if monochrome1:
        stored = 4095 - stored  # stored inverted: bright = 0
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Doe^Jane", patient, "CT"
    set_pixel_data(ds, stored if len(stored) > 1 else stored[0], "MONOCHROME1" if monochrome1 else "MONOCHROME2", 12)
    ds.RescaleSlope, ds.RescaleIntercept = SLOPE, INTERCEPT
    if window:
        ds.WindowCenter, ds.WindowWidth = CENTER, WIDTH
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_dicom_modality_lut_window_monochrome1_and_frames_pixel_for_pixel(tmp_path, data_root):
    gray, _ = gray_images(data_root, 6)
    folder = tmp_path / "ct" / "cells"
    write_dicom(folder / "a.dcm", gray[:1], "PAT-01")
    write_dicom(folder / "b.dcm", gray[1:2], "PAT-02", monochrome1=True)
    write_dicom(folder / "c.dcm", gray[2:5], "PAT-03")  # one file, three frames
    data = load_images(str(tmp_path / "ct"), "train")
    assert data.images.shape == (5, 1, 28, 28) and data.intensity["rule"] == "file"
    modality = SLOPE * gray[:5].astype(np.float64) * 16 + INTERCEPT
    expected = reference_window(modality)
    expected[1] = reference_window(SLOPE * (4095 - gray[1].astype(np.float64) * 16) + INTERCEPT, monochrome1=True)
    np.testing.assert_array_equal(data.images[:, 0].numpy(), expected)
    assert np.abs(data.images[1, 0].numpy().astype(int) - gray[1]).max() <= 1  # dense is bright, as in MONOCHROME2
    assert len(set(data.groups.tolist())) == 3 and not any("PAT" in g for g in data.groups.tolist())
    # An explicit window (here a preset) wins over the file's; it is recorded as numbers.
    lung = load_images(str(tmp_path / "ct"), "train", window="lung")
    assert lung.intensity == {"rule": "window", "center": -600.0, "width": 1500.0, "from": "--window"}
    assert not np.array_equal(lung.images.numpy(), data.images.numpy())


def test_nifti_volumes_are_sliced_in_canonical_orientation(tmp_path, data_root):
    gray, _ = gray_images(data_root, 5)
    hu = SLOPE * np.stack(list(gray), axis=-1).astype(np.float64) * 16 + INTERCEPT  # (28, 28, 5), RAS order
    volume = np.concatenate([hu, np.full((28, 28, 1), -1000.0)], axis=-1)  # plus an empty (constant) slice
    flipped = np.ascontiguousarray(volume[::-1])  # stored left-right flipped, with an affine that says so
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    affine[0, 3] = 27.0
    (tmp_path / "mr" / "cells").mkdir(parents=True)
    nib.save(nib.Nifti1Image(flipped.astype(np.float32), affine), tmp_path / "mr" / "cells" / "vol_one.nii.gz")
    data = load_images(str(tmp_path / "mr"), "train", window=f"{CENTER},{WIDTH}")
    assert data.images.shape == (5, 1, 28, 28)  # the empty slice is skipped
    expected = reference_window(np.moveaxis(hu, -1, 0))
    np.testing.assert_array_equal(data.images[:, 0].numpy(), expected)  # canonical RAS: the flip undone
    assert len(set(data.groups.tolist())) == 1  # one volume, one patient
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), tmp_path / "bad4d.nii")
    (tmp_path / "bad" / "x").mkdir(parents=True)
    (tmp_path / "bad4d.nii").rename(tmp_path / "bad" / "x" / "bad4d.nii")
    with pytest.raises(DataError, match=r"bad4d.nii is a 4D volume"):
        load_images(str(tmp_path / "bad"), "train")


def test_bad_dicom_files_are_one_clear_error_each(tmp_path, data_root):
    gray, _ = gray_images(data_root, 1)
    write_dicom(tmp_path / "nopixels" / "c" / "a.dcm", gray, "PAT-1")
    ds = pydicom.dcmread(tmp_path / "nopixels" / "c" / "a.dcm")
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels" / "c" / "a.dcm")
    with pytest.raises(DataError, match=r"a.dcm has no pixel data"):
        load_images(str(tmp_path / "nopixels"), "train")
    write_dicom(tmp_path / "j2k" / "c" / "a.dcm", gray, "PAT-1")
    ds = pydicom.dcmread(tmp_path / "j2k" / "c" / "a.dcm")
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "j2k" / "c" / "a.dcm")
    with pytest.raises(DataError, match=r"a.dcm: its pixel data is compressed as JPEG 2000.*pylibjpeg"):
        load_images(str(tmp_path / "j2k"), "train")
    write_dicom(tmp_path / "ok" / "c" / "a.dcm", gray, "PAT-1")
    with pytest.raises(DataError, match="no train/val/test sub-folders and no --split_by"):
        load_images(str(tmp_path / "ok"), "test")
    with pytest.raises(DataError, match="give CENTER,WIDTH .* or a preset: lung"):
        load_images(str(tmp_path / "ok"), "train", window="wide")
    from PIL import Image

    (tmp_path / "png" / "c").mkdir(parents=True)
    Image.fromarray(gray[0]).save(tmp_path / "png" / "c" / "x.png")
    with pytest.raises(DataError, match="--split_by patient needs a patient per image"):
        load_images(str(tmp_path / "png"), "train", split_by="patient")
    with pytest.raises(DataError, match="--window / --slice_range / --patient_regex apply to DICOM and NIfTI"):
        load_images(str(tmp_path / "png"), "train", window="lung")



def test_dicom_patients_split_train_sample_evaluate_audit_without_phi(tmp_path, data_root):
    """Ten patients of six images each, no split folders: --split_by patient makes the splits; no patient in two of
    them; every later command reads the same way; nothing written holds a name or ID from the headers."""
    gray, labels = gray_images(data_root, 200)
    source = tmp_path / "dicom"
    for patient in range(10):
        for k in range(6):
            index = patient * 6 + k
            name = ["even", "odd"][int(labels[index]) % 2]
            write_dicom(source / name / f"p{patient}_{k}.dcm", gray[index:index + 1], f"PAT-0{patient}")
    splits = {s: load_images(str(source), s, split_by="patient") for s in ("train", "val", "test")}
    patients = {s: set(d.groups.tolist()) for s, d in splits.items()}
    assert [len(patients[s]) for s in ("train", "val", "test")] == [7, 1, 2]
    assert not (patients["train"] & patients["test"]) and not (patients["train"] & patients["val"])
    run = tmp_path / "run"
    train_here(run, data_root, "--dataset", str(source), "--split_by", "patient", "--train_batch_size", "8",
                 "--max_train_steps", "6", "--lr_warmup_steps", "1", "--num_sample_images", "0", "--logger", "none")
    config = json.loads((run / "run_config.json").read_text())
    assert config["patients"] == {"train": 7, "val": 1, "test": 2} and config["intensity"]["rule"] == "file"
    assert medgen("sample", run, "--num-images", "8", "--balanced", "--steps", "2", "--out", tmp_path / "s.npz") == 0
    assert medgen("sample", run, "--num-images", "4", "--steps", "2", "--format", "dicom", "--out",
                  tmp_path / "synthetic_dicom") == 0
    written = pydicom.dcmread(next((tmp_path / "synthetic_dicom").rglob("*.dcm")))
    assert written.ImageType == ["DERIVED", "SECONDARY"] and written.PatientID == "SYNTHETIC"
    assert medgen("evaluate", tmp_path / "s.npz", "--protocols", "seed", "--no-floor", "--out",
                  tmp_path / "e.json") == 0
    assert json.loads((tmp_path / "e.json").read_text())["num_real"] == 12  # the two test patients' images
    assert medgen("audit", run, "--spaces", "pixel", "--num-samples", "8", "--steps", "2", "--out",
                  tmp_path / "a.json") == 0
    result = json.loads((tmp_path / "a.json").read_text())
    assert result["patients"] == {"train": 7, "test": 2, "in_both": 0}
    assert result["membership_inference"]["per_patient"]["num_nonmember_patients"] == 2
    assert medgen("card", run) == 0
    for path in [*run.rglob("*.json"), *run.rglob("*.md"), tmp_path / "a.json", tmp_path / "e.json"]:
        text = path.read_text(errors="ignore")
        assert not any(phi in text for phi in PHI), path


def test_a_patient_column_keeps_patients_apart(tmp_path, data_root):
    import datasets
    from PIL import Image

    gray, labels = gray_images(data_root, 40)
    rows = {"image": [Image.fromarray(g) for g in gray], "label": labels.tolist(),
            "patient": [f"PAT-0{i // 4}" for i in range(40)]}  # ten patients, four images each
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "one"))
    before = sorted(p.name for p in (tmp_path / "one").iterdir())
    parts = {s: load_images(str(tmp_path / "one"), s, split_by="patient", patient_column="patient")
             for s in ("train", "val", "test")}
    groups = {s: set(d.groups.tolist()) for s, d in parts.items()}
    assert [len(groups[s]) for s in ("train", "val", "test")] == [7, 1, 2] and not groups["train"] & groups["test"]
    assert sum(len(d) for d in parts.values()) == 40 and not any("PAT" in g for g in groups["train"])
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == before  # nothing written beside the data
    leaky = datasets.DatasetDict(train=datasets.Dataset.from_dict({k: v[:24] for k, v in rows.items()}),
                                 test=datasets.Dataset.from_dict({k: v[20:] for k, v in rows.items()}))
    leaky.save_to_disk(str(tmp_path / "leaky"))
    with pytest.raises(DataError, match="1 patient\\(s\\) of column 'patient' are in both 'test' and 'train'"):
        load_images(str(tmp_path / "leaky"), "train", patient_column="patient")
    gaps = dict(rows, patient=[None if i in (3, 17) else p for i, p in enumerate(rows["patient"])])
    datasets.Dataset.from_dict(gaps).save_to_disk(str(tmp_path / "gaps"))
    with pytest.raises(DataError, match=r"no patient for row\(s\) \[3, 17\]"):
        load_images(str(tmp_path / "gaps"), "train", split_by="patient", patient_column="patient")


def test_nifti_volumes_as_patients_train_evaluate_audit(tmp_path, data_root):
    """Ten volumes (patients) of six slices, class folders, no split folders: --split_by patient, a train run, then
    evaluate and audit read the same slices and window from the run; the test patients are not train patients."""
    gray, labels = gray_images(data_root, 120)
    source = tmp_path / "nifti"
    for patient in range(10):
        cls = "even" if patient % 2 == 0 else "odd"
        slices = gray[patient * 6:(patient + 1) * 6].astype(np.float64) * 8 - 1000  # HU-like
        (source / cls).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.stack(list(slices), -1).astype(np.float32), np.eye(4)),
                 source / cls / f"subject_{patient:02d}.nii.gz")
    run = tmp_path / "run"
    train_here(run, data_root, "--dataset", str(source), "--split_by", "patient", "--window", "soft-tissue",
                 "--train_batch_size", "8", "--max_train_steps", "4", "--lr_warmup_steps", "1",
                 "--num_sample_images", "0", "--logger", "none")
    config = json.loads((run / "run_config.json").read_text())
    assert config["patients"] == {"train": 7, "val": 1, "test": 2}
    assert config["intensity"] == {"rule": "window", "center": 40.0, "width": 400.0, "from": "--window"}
    assert medgen("evaluate", run, "--num-samples", "12", "--steps", "2", "--protocols", "seed", "--no-floor") == 0
    assert json.loads((run / "evaluation.json").read_text())["num_real"] == 12  # 2 test volumes x 6 slices
    assert medgen("audit", run, "--spaces", "pixel", "--num-samples", "8", "--steps", "2", "--out",
                  run / "audit.json") == 0
    assert json.loads((run / "audit.json").read_text())["patients"] == {"train": 7, "test": 2, "in_both": 0}
    assert not any("subject_" in p.read_text(errors="ignore") for p in run.rglob("*.json"))  # no volume names

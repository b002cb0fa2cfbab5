"""Trust round 3 on real BloodMNIST pixels written as the files hospitals have: colour DICOM (YBR_FULL, PALETTE
COLOR, 16-bit RGB), enhanced multi-frame DICOM with functional groups, PACS/BraTS/BIDS layouts, windows that squeeze
or overflow, and the patient as the unit in every split. Each test failed on the code before this round."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import convert_color_space, set_pixel_data
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

import train_unconditional
from medgen_diffusers.data import DataError, load_images
from medgen_diffusers.data.medical import inverse_window, write_dicom as write_synthetic
from medgen_diffusers.privacy import PrivacyError
from test_medical import CENTER, INTERCEPT, SLOPE, WIDTH, gray_images, reference_window, write_dicom


def rgb_images(data_root, count):
    with np.load(data_root / "bloodmnist.npz") as npz:
        return npz["train_images"][:count]


def dicom_dataset(patient="PAT-1"):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    if patient is not None:
        ds.PatientID = patient
    return ds


def save(ds, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_colour_dicom_reads_as_the_rgb_it_stores(tmp_path, data_root):
    rgb = rgb_images(data_root, 3)
    # YBR_FULL: pydicom's pixel_array already gives RGB; converting it again turned (200, 30, 30) into (63, 255, 26).
    ds = dicom_dataset()
    set_pixel_data(ds, rgb[0], "RGB", 8)
    ds.PixelData = convert_color_space(rgb[0], "RGB", "YBR_FULL").tobytes()
    ds.PhotometricInterpretation = "YBR_FULL"
    save(ds, tmp_path / "ybr" / "cells" / "a.dcm")
    got = load_images(str(tmp_path / "ybr"), "train").images[0].permute(1, 2, 0).numpy()
    assert np.abs(got.astype(int) - rgb[0]).max() <= 2  # the YCbCr round trip's rounding only (was 173)
    # 16-bit RGB is scaled by its bit depth, not wrapped modulo 256.
    ds = dicom_dataset()
    set_pixel_data(ds, rgb[1].astype(np.uint16) * 257, "RGB", 16)
    save(ds, tmp_path / "rgb16" / "cells" / "a.dcm")
    np.testing.assert_array_equal(load_images(str(tmp_path / "rgb16"), "train").images[0].permute(1, 2, 0), rgb[1])
    # PALETTE COLOR: stored values index a colour table (16-bit entries), they are not grey levels.
    gray = rgb[2].mean(-1).round().astype(np.uint8)
    table = np.stack([np.arange(256), 255 - np.arange(256), (np.arange(256) * 3) % 256], -1).astype(np.uint16)
    ds = dicom_dataset()
    set_pixel_data(ds, gray, "MONOCHROME2", 8)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    for channel, name in enumerate(("Red", "Green", "Blue")):
        setattr(ds, f"{name}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{name}PaletteColorLookupTableData", (table[:, channel] * 257).astype("<u2").tobytes())
    save(ds, tmp_path / "palette" / "cells" / "a.dcm")
    got = load_images(str(tmp_path / "palette"), "train").images[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, table[gray].astype(np.uint8))


def test_enhanced_multiframe_dicom_keeps_its_functional_group_rescale_and_windows(tmp_path, data_root):
    gray, _ = gray_images(data_root, 3)
    ds = dicom_dataset()
    set_pixel_data(ds, gray.astype(np.uint16) * 16, "MONOCHROME2", 12)  # 3 frames, 12-bit, no top-level rescale
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = SLOPE, INTERCEPT, "HU"
    shared = Dataset()
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for index in range(3):  # each frame its own window: the last one a narrower one
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = CENTER, WIDTH if index < 2 else WIDTH / 4
        frame = Dataset()
        frame.FrameVOILUTSequence = Sequence([voi])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    save(ds, tmp_path / "enhanced" / "cells" / "ct.dcm")
    data = load_images(str(tmp_path / "enhanced"), "train")
    modality = SLOPE * gray.astype(np.float64) * 16 + INTERCEPT  # stored 1024 with intercept -1000 is 24 HU, not 1024
    assert data.intensity["rule"] == "file"
    np.testing.assert_array_equal(data.images[:2, 0].numpy(), reference_window(modality[:2]))
    c, w = CENTER - 0.5, WIDTH / 4 - 1
    narrow = np.round(np.clip((modality[2] - c) / w + 0.5, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(data.images[2, 0].numpy(), narrow)


def test_windows_neither_squeeze_nor_overflow(tmp_path, data_root):
    gray, _ = gray_images(data_root, 4)
    # Float data with a range below 1 (a probability map, normalised MR): the percentile window used to floor its
    # width at 2, leaving ~26 grey levels; it now spans the data.
    (tmp_path / "prob" / "maps").mkdir(parents=True)
    volume = np.stack(list(gray), -1).astype(np.float32) / 255 * 0.01
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "prob" / "maps" / "vol.nii.gz")
    data = load_images(str(tmp_path / "prob"), "train")
    levels = len(np.unique(gray))  # the source's own grey levels (169 in these 4 images)
    assert len(np.unique(data.images.numpy())) >= 0.9 * levels > 100
    # A window of 0..100000 written back as DICOM: 255 is stored as 100000 (an int16 cast wrote -31572).
    rule = {"rule": "window", "center": 50000.5, "width": 100001.0}
    image = np.array([[[0], [128], [255]]], dtype=np.uint8)
    write_synthetic(image, tmp_path / "wide.dcm", rule, None, 1)
    written = pydicom.dcmread(tmp_path / "wide.dcm")
    modality = written.pixel_array * float(written.RescaleSlope) + float(written.RescaleIntercept)
    np.testing.assert_allclose(modality[0], [0.0, 50196.08, 100000.0], atol=2.0)
    # A narrow window keeps all 256 levels (stored as int16 it kept the window's 80).
    stored, info = inverse_window(np.arange(256, dtype=np.uint8), {"rule": "window", "center": 40, "width": 80})
    assert len(np.unique(stored)) == 256 and not info["signed"]


def write_volume(path, gray_slices):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.stack(list(gray_slices), -1).astype(np.float32) * 8 - 1000, np.eye(4)), path)


def test_the_patient_is_the_patient_in_every_layout(tmp_path, data_root):
    gray, _ = gray_images(data_root, 24)
    # BraTS: one case folder, four modalities -- one patient (it was four units, so epsilon per case was 4 epsilon).
    for case in ("BraTS_001", "BraTS_002"):
        for modality in ("t1", "t1ce", "t2", "flair"):
            write_volume(tmp_path / "brats" / "glioma" / case / f"{case}_{modality}.nii.gz", gray[:2])
    data = load_images(str(tmp_path / "brats"), "train", window="brain")
    assert len(data) == 16 and len(set(data.groups.tolist())) == 2
    # BIDS: two sessions of one subject are one patient.
    for subject, session in (("sub-01", "ses-01"), ("sub-01", "ses-02"), ("sub-02", "ses-01")):
        write_volume(tmp_path / "bids" / "scans" / subject / session / "anat" / f"{subject}_{session}_T1w.nii.gz",
                     gray[:2])
    assert len(set(load_images(str(tmp_path / "bids"), "train", window="brain").groups.tolist())) == 2
    # The same case in train/ and test/ is one patient in two splits: refused (the hash used to include the folder).
    write_volume(tmp_path / "leak" / "train" / "tumour" / "case001.nii.gz", gray[:2])
    write_volume(tmp_path / "leak" / "train" / "tumour" / "case002.nii.gz", gray[2:4])
    write_volume(tmp_path / "leak" / "test" / "tumour" / "case001.nii.gz", gray[4:6])
    with pytest.raises(DataError, match="1 patient\\(s\\) have images in both test/ and train/"):
        load_images(str(tmp_path / "leak"), "train", window="brain")
    # --patient_regex: the patient named by the file path, e.g. case001_a / case001_b in one class folder.
    for name in ("case001_a", "case001_b", "case002_a"):
        write_volume(tmp_path / "flat" / "tumour" / f"{name}.nii.gz", gray[:2])
    assert len(set(load_images(str(tmp_path / "flat"), "train", window="brain").groups.tolist())) == 3
    regex = load_images(str(tmp_path / "flat"), "train", window="brain", patient_regex=r"(case\d+)")
    assert len(set(regex.groups.tolist())) == 2 and regex.patient_rule == r"--patient_regex (case\d+)"
    with pytest.raises(DataError, match="finds no patient in tumour/case001_a.nii.gz"):
        load_images(str(tmp_path / "flat"), "train", window="brain", patient_regex="sub-[0-9]+")
    # DICOM without PatientID: no silent fallback to the study or folder.
    for index in range(6):
        ds = dicom_dataset(patient=None if index < 3 else f"PAT-{index}")
        set_pixel_data(ds, gray[index], "MONOCHROME2", 8)
        save(ds, tmp_path / "noid" / "cells" / f"{index}.dcm")
    with pytest.raises(DataError, match="3 of 6 images .* without a PatientID.*--patient_regex"):
        load_images(str(tmp_path / "noid"), "train", split_by="patient")
    data = load_images(str(tmp_path / "noid"), "train", window="0,255")
    assert data.groups is None and data.patient_rule.startswith("unknown: 3 images")


def dp_train(output_dir, data_root, *extra):
    train_unconditional.main(["--output_dir", str(output_dir), "--data_root", str(data_root), "--model_preset",
                              "tiny", "--logger", "none", "--max_train_steps", "2", "--train_batch_size", "4", "--mixed_precision", "no",
                              "--num_sample_images", "0", "--lr_warmup_steps", "1", *map(str, extra)])


def test_patient_folders_never_become_published_class_names(tmp_path, data_root):
    gray, _ = gray_images(data_root, 12)
    # A PACS export: root/<patient>/<study>/*.dcm -- the first sub-folder (a name and MRN) would be the class.
    for patient in range(3):
        for k in range(4):
            write_dicom(tmp_path / "pacs" / f"DOE^JOHN_MRN00{patient}" / "study1" / f"{k}.dcm",
                        gray[patient * 4 + k:patient * 4 + k + 1], f"MRN00{patient}")
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"class folder\(s\) \['DOE\^JOHN_MRN000'.*look like patients.*"
                                         "--no-class_conditional"):
        dp_train(run, data_root, "--dataset", tmp_path / "pacs")
    assert not (run / "model_index.json").exists()
    dp_train(run, data_root, "--dataset", tmp_path / "pacs", "--no-class_conditional", "--overwrite_output_dir")
    written = "".join(p.read_text(errors="ignore") for p in run.rglob("*") if p.suffix in (".json", ".md"))
    assert "DOE" not in written and "MRN00" not in written
    # A BIDS tree read as classes: refused by name even before counting patients.
    write_volume(tmp_path / "bids" / "sub-01" / "anat" / "sub-01_T1w.nii.gz", gray[:4])
    write_volume(tmp_path / "bids" / "sub-02" / "anat" / "sub-02_T1w.nii.gz", gray[4:8])
    with pytest.raises(ValueError, match=r"\['sub-01', 'sub-02'\] look like patients"):
        dp_train(tmp_path / "bids_run", data_root, "--dataset", tmp_path / "bids", "--window", "brain")


def test_dp_refuses_a_private_window_and_unknown_patients(tmp_path, data_root):
    gray, _ = gray_images(data_root, 40)
    for patient in range(10):
        write_volume(tmp_path / "mr" / "scans" / f"vol{patient:02d}.nii.gz", gray[patient * 4:(patient + 1) * 4])
    dp = ["--dp_epsilon", "10", "--dp_batch_size", "2", "--no-class_conditional"]
    # No --window: the window would be the percentiles of every private pixel, published and outside epsilon.
    with pytest.raises(PrivacyError, match="percentiles of all private training pixels.*--window CENTER,WIDTH"):
        dp_train(tmp_path / "a", data_root, "--dataset", tmp_path / "mr", *dp)
    dp_train(tmp_path / "b", data_root, "--dataset", tmp_path / "mr", "--window", "brain", *dp)
    privacy = json.loads((tmp_path / "b" / "run_config.json").read_text())["privacy"]
    assert (privacy["unit"], privacy["num_units"]) == ("patient", 10)
    # DICOM files without PatientID: the patient is unknown, so no per-patient guarantee unless --dp_unit image.
    for index in range(12):
        ds = dicom_dataset(patient=None)
        set_pixel_data(ds, gray[index], "MONOCHROME2", 8)
        save(ds, tmp_path / "noid" / "cells" / f"{index}.dcm")
    with pytest.raises(PrivacyError, match="without a PatientID.*--dp_unit image if every image is a different"):
        dp_train(tmp_path / "c", data_root, "--dataset", tmp_path / "noid", "--window", "128,256", *dp)
    dp_train(tmp_path / "d", data_root, "--dataset", tmp_path / "noid", "--window", "128,256", *dp,
             "--dp_unit", "image")


def test_patient_pseudonyms_cannot_be_recomputed(data_root):
    """The pseudonym of an identifier differs in every process (a per-process secret salt) and is not the sha256
    anyone could compute from a guessed MRN with the salt that stood in the source."""
    import hashlib

    code = "from medgen_diffusers.data.medical import hash_id, pseudonym; print(pseudonym(hash_id('MRN0012345')))"
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
            for _ in range(2)}
    assert len(runs) == 2 and all(len(r) == 16 for r in runs)
    old = hashlib.sha256(b"medgen-diffusers:MRN0012345").hexdigest()[:16]
    assert old not in runs


def test_audit_members_are_the_images_the_model_trained_on(trained_run, tmp_path):
    """trained_run saw the first 2,048 of 11,959 training images (--max_train_samples): members and copy candidates
    are those 2,048 -- with all 11,959, ~83 % of the "members" were never seen and the AUC read as chance."""
    from medgen_diffusers.cli import main

    assert main(["audit", str(trained_run), "--spaces", "pixel", "--num-samples", "8", "--num-mia", "16", "--steps",
                 "2", "--out", str(tmp_path / "audit.json")]) == 0
    result = json.loads((tmp_path / "audit.json").read_text())
    assert result["num_trained"] == 2048 and result["num_train"] == 2048
    assert result["membership_inference"]["num_members"] == 16

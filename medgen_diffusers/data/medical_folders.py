"""A folder of DICOM or NIfTI files as a data source: which files, patients and splits (from the headers alone),
the intensity rule, and the images, decoded **one file at a time** (medical.py reads and writes single files).

Reading a folder is two passes. The *plan* reads headers only (DICOM without pixel data, NIfTI shapes): each file's
class folder, patient key, frame count and size. Patients decide splits (``--split_by patient``, or the user's
``train/``/``val/``/``test/`` folders, checked for a patient in two of them) and the intensity rule is fixed from
the train split: ``--window``, else each DICOM file's own VOI, else the 0.5..99.5 percentiles of the train
split's values -- all of them up to :data:`PERCENTILE_VALUES`, a seeded sample of whole train images above it (the
rule records which). The second pass decodes, windows, crops and resizes file after file and yields the uint8
images: the in-memory loader stacks them, ``medgen prepare`` writes them to the store as they come. Memory is one
file's modality values (float64) plus the uint8 output, never the float64 values of the whole folder (3,000 512-px
slices were ~12.6 GB that way).
"""

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from .files import visible_files
from .images import SPLITS, _image_data, resize_images, square
from .medical import (PERCENTILES, _error, file_window, frame_view, hash_id, is_dicom, is_nifti, linear_window,
                      parse_window, pseudonym, read_dicom, read_nifti, to_uint8)

SPLIT_FRACTIONS = (0.7, 0.1, 0.2)  # train / val / test patients, MedMNIST's 7:1:2
MIN_SPLIT_PATIENTS, FEW_PATIENTS = 5, 10  # --split_by patient: refused below 5 patients, warned below 10
# Percentile windows from at most this many train values (128 MB as float64): exact below it, a seeded sample of
# whole train files above it. On 2,100 12-bit 512-px train slices (64 sampled) the window's ends were 1.6 of 255 grey
# levels from the exact percentiles' (benchmarks/results/scale/dicom.jsonl).
PERCENTILE_VALUES = 2 ** 24
BIDS_SUBJECT = re.compile(r"^sub-[A-Za-z0-9]+$")
PATIENT_RULES = {  # one documented rule per source kind (docs/own-data.md); --patient_regex replaces either
    "dicom": "DICOM PatientID",
    "nifti": "the BIDS sub-XX folder, else the case folder (root/<class>/<case>/..., or a folder whose name the "
             "file name starts with, as BraTS' <case>/<case>_t1.nii.gz), else the file name",
}


@dataclass(frozen=True)
class MedicalFile:
    """One file of a folder, from its header: what splits, rules and counts need before any pixel is decoded."""

    path: Path
    label: str  # its class folder ('.' for files at the top level)
    patient: Optional[str]  # hash_id of its patient; None: a DICOM file without PatientID
    frames: int  # images it holds (DICOM frames; NIfTI: an upper bound, empty slices are dropped when decoded)
    values: int  # its pixel values (for the percentile sample)
    colour: bool  # RGB / palette: stored as 8-bit colour, never windowed
    has_window: bool  # every frame carries its own VOI (DICOM WindowCenter/Width or a VOI LUT)


def medical_kind(files: List[Path]) -> Optional[str]:
    """"dicom" / "nifti" when a folder's files are of that kind (None: an image folder)."""
    if any(is_nifti(p) for p in files):
        return "nifti"
    if any(p.suffix.lower() == ".dcm" for p in files) or (files and all(is_dicom(p) for p in files[:20])):
        return "dicom"
    return None


def patient_of(relative: Path, kind: str, patient_id: Optional[str], patient_regex: Optional[str]) -> Optional[str]:
    """The patient identifier of one file (``relative``: its path below the split/root folder), or None when a
    DICOM file has no PatientID. The same in every split folder, so the cross-split check sees a patient twice."""
    if patient_regex:
        match = re.search(patient_regex, relative.as_posix())
        if match is None:
            raise _error(f"--patient_regex {patient_regex!r} finds no patient in {relative.as_posix()}: give a "
                         "pattern that matches every file's path below the data folder (its first group, or the "
                         "whole match, is the patient), e.g. 'sub-[^/]+' or '(case[0-9]+)'.")
        return match.group(1) if match.groups() else match.group(0)
    if kind == "dicom":
        return patient_id
    folders, name = relative.parts[:-1], relative.name.split(".")[0]
    subject = next((part for part in folders if BIDS_SUBJECT.match(part)), None)
    if subject is not None:  # BIDS: sessions and modalities of one subject are one patient
        return subject
    if len(folders) >= 2:  # <class>/<case>/...: every file below the case folder is that case
        return folders[1]
    if len(folders) == 1 and name.startswith(folders[0]):  # BraTS: <case>/<case>_t1.nii.gz, _t2, _flair, ...
        return folders[0]
    return name


def _dicom_header(path: Path, relative: Path, label: str, patient_regex: Optional[str]) -> MedicalFile:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as error:  # noqa: BLE001 - pydicom raises several kinds for "not a DICOM file"
        raise _error(f"Cannot read DICOM file {path} ({type(error).__name__}: {error}); fix or remove it.") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    colour = str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR" or int(ds.get("SamplesPerPixel", 1)) == 3
    windows = [frame_view(ds, index) for index in range(frames)]
    patient = patient_of(relative, "dicom", str(ds.get("PatientID", "") or "").strip() or None, patient_regex)
    return MedicalFile(path, label, None if patient is None else hash_id(patient), frames,
                       frames * int(ds.get("Rows", 0)) * int(ds.get("Columns", 0)), colour,
                       all("VOILUTSequence" in view or "WindowCenter" in view for view in windows))


def _nifti_header(path: Path, relative: Path, label: str, patient_regex: Optional[str]) -> MedicalFile:
    import nibabel as nib

    try:
        shape = nib.load(str(path)).shape  # the header: no voxel is read
    except Exception as error:  # noqa: BLE001 - nibabel raises several kinds for unreadable files
        raise _error(f"Cannot read NIfTI file {path} ({type(error).__name__}: {error}); fix or remove it.") from None
    return MedicalFile(path, label, hash_id(patient_of(relative, "nifti", None, patient_regex)), max(shape[:3]),
                       int(np.prod(shape)), False, False)


@lru_cache(maxsize=16)
def scan(folder: str, kind: str, patient_regex: Optional[str] = None) -> Tuple[MedicalFile, ...]:
    """Every file of ``kind`` under ``folder``, sorted, from its header (once per process)."""
    root = Path(folder)
    files = visible_files(root)
    picked = [p for p in files if (is_nifti(p) if kind == "nifti" else is_dicom(p))]
    read = _dicom_header if kind == "dicom" else _nifti_header
    planned = tuple(read(p, p.relative_to(root), p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1
                         else ".", patient_regex) for p in picked)
    if not planned:
        raise _error(f"{folder} holds no {kind.upper()} images.")
    return planned


def split_patients(patients: List[str], seed: int = 0) -> Dict[str, str]:
    """Patient -> split ("train"/"val"/"test"), seeded, 7:1:2 of the patients (at least one each when >= 3)."""
    unique = sorted(set(patients))
    if len(unique) < MIN_SPLIT_PATIENTS:  # 3 patients gave 1 / 1 / 1: a model of one patient, scored on one other
        raise _error(f"--split_by patient needs at least {MIN_SPLIT_PATIENTS} patients (at least 3 to train on, 1 "
                     f"for val, 1 for test); the data has {len(unique)}. Add patients, or lay out your own train/, "
                     "val/ and test/ sub-folders.")
    if len(unique) < FEW_PATIENTS:
        import logging

        logging.getLogger(__name__).warning(
            f"--split_by patient with only {len(unique)} patients: val and test hold "
            f"{max(1, round(SPLIT_FRACTIONS[1] * len(unique)))} and {max(1, round(SPLIT_FRACTIONS[2] * len(unique)))} "
            "patient(s), so held-out numbers (FID, the audit's baseline) speak for those few people only.")
    order = np.random.default_rng(seed).permutation(len(unique))
    n_val = max(1, round(SPLIT_FRACTIONS[1] * len(unique)))
    n_test = max(1, round(SPLIT_FRACTIONS[2] * len(unique)))
    split_of = {}
    for rank, index in enumerate(order):
        split_of[unique[index]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return split_of


def split_files(path: Path, split: str, kind: str, split_by: Optional[str] = None, seed: int = 0,
                patient_regex: Optional[str] = None) -> Tuple[MedicalFile, ...]:
    """The files of one split: a split sub-folder (a patient in two of them refused), the whole folder as 'train',
    or seeded patient-level splits (``split_by="patient"``)."""
    if split_by not in (None, "patient"):
        raise _error(f"--split_by {split_by!r}: the only unit is 'patient'.")
    split_dirs = [name for name in SPLITS if (path / name).is_dir()]
    if split_dirs and split_by:
        raise _error(f"{path} already has split folders {split_dirs}: drop --split_by (or the folders).")
    if split_dirs:
        if split not in split_dirs:
            raise _error(f"{path} has split folders {split_dirs} but no '{split}/': add it or choose another split.")
        # User-made splits: a patient in two of them leaks train data into the held-out numbers.
        seen = {name: {f.patient for f in scan(str(path / name), kind, patient_regex)} - {None} for name in split_dirs}
        for a in split_dirs:
            for b in split_dirs:
                if a < b and seen[a] & seen[b]:
                    raise _error(f"{path}: {len(seen[a] & seen[b])} patient(s) have images in both {a}/ and {b}/ "
                                 "(by DICOM PatientID / NIfTI volume): move each patient's images into one split, "
                                 "or put all images in one folder and pass --split_by patient.")
        return scan(str(path / split), kind, patient_regex)
    everything = scan(str(path), kind, patient_regex)
    if split_by is None:
        if split != "train":
            raise _error(f"{path} has no train/val/test sub-folders and no --split_by: all its images are "
                         f"'train', there is no '{split}' split. Pass --split_by patient for patient-level splits.")
        return everything
    missing = sum(f.frames for f in everything if f.patient is None)
    if missing:
        raise _error(f"--split_by patient: {missing} of {sum(f.frames for f in everything)} images of {path} come "
                     "from DICOM files without a PatientID, so their patient is unknown. Fill in PatientID, or pass "
                     "--patient_regex PATTERN that finds the patient in each file's path (e.g. '^([^/]+)/' for one "
                     "folder per patient).")
    split_of = split_patients([f.patient for f in everything], seed)
    return tuple(f for f in everything if split_of[f.patient] == split)


def decode(file: MedicalFile, kind: str, slice_axis: str = "axial", slice_range: Optional[str] = None):
    """[(values or 8-bit RGB, the frame's own window in [0, 1] or None, MONOCHROME1)] of one file's images."""
    if kind == "nifti":
        return [(frame, None, False) for frame in read_nifti(file.path, slice_axis, slice_range)]
    values, views, _ = read_dicom(file.path)
    return [(frame, None if frame.dtype == np.uint8 else file_window(view, frame),
             str(view.get("PhotometricInterpretation", "")) == "MONOCHROME1") for frame, view in zip(values, views)]


@lru_cache(maxsize=16)  # per process: every split of a source is read with its train split's rule
def intensity_rule(window, train: Tuple[MedicalFile, ...], kind: str, slice_axis: str = "axial",
                   slice_range: Optional[str] = None, max_values: int = PERCENTILE_VALUES) -> Dict:
    """How values become [0, 1]: the given window, else each DICOM file's own VOI, else the train split's
    percentiles (as a window, so every split and every later command uses the same numbers) of at most
    ``max_values`` values: all of them, or a seeded sample of whole files."""
    given = parse_window(window)
    if given is not None:
        return {"rule": "window", "center": given[0], "width": given[1], "from": "--window"}
    grayscale = [f for f in train if not f.colour]
    if kind == "dicom" and grayscale and all(f.has_window for f in grayscale):
        return {"rule": "file", "from": "each file's VOI (WindowCenter/Width or VOI LUT)"}
    if not grayscale:
        return {"rule": "rgb", "from": "8-bit colour as stored"}
    picked, source = grayscale, f"train split percentiles {PERCENTILES[0]}..{PERCENTILES[1]}"
    if sum(f.values for f in grayscale) > max_values:  # a seeded sample of whole files, within the cap
        order, picked, total = np.random.default_rng(0).permutation(len(grayscale)), [], 0
        for index in order:
            if total + grayscale[index].values > max_values and picked:
                break
            picked.append(grayscale[index])
            total += grayscale[index].values
        source += (f" of a seeded sample of {len(picked)} of {len(grayscale)} train files ({total:,} values; "
                   f"exact up to {max_values:,})")
    values = np.concatenate([frame.ravel() for f in picked
                             for frame, _, _ in decode(f, kind, slice_axis, slice_range) if frame.dtype != np.uint8])
    low, high = (float(v) for v in np.percentile(values, PERCENTILES))
    # LINEAR maps [c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2] onto [0, 1]: w - 1 = high - low exactly, however
    # small (float data with a range below 1 kept only a few grey levels when the width was floored at 2).
    width = max(high - low, 1e-6 * max(abs(high), abs(low), 1.0)) + 1
    return {"rule": "window", "center": float(low + high) / 2 + 0.5, "width": width, "from": source}


def render(item, rule: Dict, bit_depth: int = 8) -> np.ndarray:
    """uint8 (H, W, C) of one decoded image under ``rule`` (MONOCHROME1 inverted after windowing); ``bit_depth=16``:
    uint16, the window mapped onto 0..65535 (the modality values' own resolution, up to 16 bits)."""
    values, windowed, invert = item
    if values.dtype == np.uint8:
        return values if bit_depth != 16 else values.astype(np.uint16) * 257
    unit = windowed if rule["rule"] == "file" else linear_window(values, rule["center"], rule["width"])
    if unit is None:  # this file has no VOI while the others do
        raise _error("A DICOM file without a window among files with one: pass --window C,W (or a preset) so every "
                     "image is mapped the same way.")
    if invert:
        unit = 1.0 - unit
    if bit_depth == 16:
        return np.round(np.asarray(unit, dtype=np.float64) * 65535).astype(np.uint16)[..., None]
    return to_uint8(unit)[..., None]


def iter_images(files: Tuple[MedicalFile, ...], kind: str, rule: Dict, size: Optional[int] = None,
                crop: Optional[str] = None, slice_axis: str = "axial",
                slice_range: Optional[str] = None, bit_depth: int = 8) -> Iterator[Tuple[np.ndarray, MedicalFile]]:
    """(uint8 images (k, size, size, C) of one file, the file), file after file: windowed, made square (--crop) and
    resized to ``size`` (None: the data's own size, which must then be one square size)."""
    import torch


    first = None
    for file in files:
        images = []
        for item in decode(file, kind, slice_axis, slice_range):
            image = square(render(item, rule, bit_depth), crop)
            first = first or image.shape
            if size is None and (image.shape[:2] != first[:2] or image.shape[0] != image.shape[1]):
                raise _error(f"{file.path.parent}: images differ in size or are not square ({first[1]}x{first[0]}, "
                             f"{image.shape[1]}x{image.shape[0]} in {file.path.name}): pass --resolution N to "
                             "resize every image to N x N.")
            if size is not None and image.shape[0] != size:
                image = resize_images(torch.from_numpy(image.copy()).permute(2, 0, 1)[None].contiguous(),
                                      size)[0].permute(1, 2, 0).numpy()
            images.append(image)
        if images:
            yield np.stack(images), file


def class_names_of(train: Tuple[MedicalFile, ...]) -> Optional[List[str]]:
    classes = sorted({f.label for f in train})
    return None if "." in classes else classes


def patient_rule(patient_regex: Optional[str], kind: str, files) -> Tuple[str, Optional[str]]:
    """(how patients were found, a notice when some are unknown)."""
    missing = sum(f.frames for f in files if f.patient is None)
    if missing:  # patients unknown: no pseudonyms at all, and the DP unit cannot be the patient
        return (f"unknown: {missing} images come from DICOM files without a PatientID",
                f"{missing} images come from DICOM files without a PatientID, so patients are unknown (no "
                "patient-level splits, cross-split check or per-patient DP): fill in PatientID or pass "
                "--patient_regex.")
    return (f"--patient_regex {patient_regex}" if patient_regex else PATIENT_RULES[kind]), None


def kept_files(files: Tuple["MedicalFile", ...], max_train_samples: Optional[int]) -> Tuple["MedicalFile", ...]:
    """The train files ``--max_train_samples`` decodes: a seeded random subset (in plan order) whose frames reach
    that many images (the last file's extra frames are dropped as it is read); all files when they hold fewer."""
    if max_train_samples is None or sum(f.frames for f in files) <= max_train_samples:
        return files
    kept, frames = [], 0
    for index in np.random.default_rng(0).permutation(len(files)):
        kept.append(int(index))
        frames += files[index].frames
        if frames >= max_train_samples:
            break
    return tuple(files[i] for i in sorted(kept))


def load_medical(path: Path, split: str, kind: str, window=None, slice_axis: str = "axial",
                 slice_range: Optional[str] = None, split_by: Optional[str] = None, seed: int = 0,
                 size: Optional[int] = None, patient_regex: Optional[str] = None, crop: Optional[str] = None,
                 max_train_samples: Optional[int] = None, bit_depth: int = 8):
    """One split of a DICOM/NIfTI folder as ImageData (uint8 images, labels, patient pseudonyms, intensity rule).
    Patients: :data:`PATIENT_RULES` for the kind, or ``patient_regex``; ``data.patient_rule`` says which.
    ``max_train_samples``: the train split is the images of a seeded subset of its files (:func:`kept_files`),
    and the window is computed from those files only."""
    files, train = (split_files(path, name, kind, split_by, seed, patient_regex) for name in (split, "train"))
    classes = class_names_of(train)  # of every train file: a subset keeps the class numbering
    train = kept_files(train, max_train_samples)
    files = train if split == "train" else files
    rule = dict(intensity_rule(tuple(window) if isinstance(window, list) else window, train, kind, slice_axis,
                               slice_range))
    if classes is not None:
        unknown = sorted({f.label for f in files} - set(classes))
        if unknown:
            raise _error(f"{path} ({split}) has class folder(s) {unknown} that the train split lacks.")
    images, owners, room = [], [], max_train_samples if split == "train" and max_train_samples else None
    for block, file in iter_images(files, kind, rule, size, crop, slice_axis, slice_range, bit_depth):
        block = block if room is None else block[:room - len(owners)]
        images.append(block)
        owners.extend([file] * len(block))
        if room is not None and len(owners) >= room:
            break
    if not images:
        raise _error(f"{path}: the {split} split holds no images (too few patients for --split_by patient?).")
    labels = np.array([[classes.index(f.label)] for f in owners]) if classes is not None else None
    data = _image_data(np.concatenate(images), labels, classes, str(path), split)
    data.patient_rule, notice = patient_rule(patient_regex, kind, (*files, *(train if split != "train" else ())))
    if notice:
        data.notice = f"{path}: {notice}"
    else:
        pseudonyms = {f.patient: pseudonym(f.patient) for f in files}
        data.groups = np.array([pseudonyms[f.patient] for f in owners])
    data.intensity = rule
    return data


def patient_named_classes(class_names: Optional[List[str]], labels: Optional[np.ndarray],
                          groups: Optional[np.ndarray]) -> List[str]:
    """Class names that are (or may be) patients: a BIDS sub-/ses- folder, a DICOM person name (^), or a class
    that holds exactly one patient. PACS/TCIA exports (root/<patient>/<study>/), BraTS (root/<case>/) and BIDS
    (root/sub-01/) put the patient in the first sub-folder, which a folder source reads as the class."""
    if not class_names or labels is None:
        return []
    labels = np.asarray(labels).reshape(-1)
    found = []
    for index, name in enumerate(class_names):
        one_patient = groups is not None and len(set(np.asarray(groups)[labels == index].tolist())) == 1
        if one_patient or re.match(r"^(sub|ses)-", name) or "^" in name:
            found.append(name)
    return found

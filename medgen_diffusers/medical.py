"""DICOM and NIfTI folders as training data, with patients as the unit of splits (``--dataset FOLDER``).

**DICOM** (pydicom): every ``.dcm`` file (or file with the ``DICM`` preamble) under the folder, one sub-folder per
class as for images. Stored values go through the modality LUT (RescaleSlope/Intercept, or a Modality LUT
Sequence: ``pydicom.pixels.apply_modality_lut``), then a window to [0, 1]: ``--window C,W`` or a preset name
(:data:`WINDOW_PRESETS`, in Hounsfield units) if given, else the file's own VOI (WindowCenter/Width with its
VOILUTFunction, or a VOI LUT Sequence: ``pydicom.pixels.apply_voi_lut``), else a window over the 0.5th..99.5th
percentile of the *train* split's values (so val/test and every later command use the train split's numbers).
MONOCHROME1 (stored inverted) is flipped so that bright is dense everywhere; a multi-frame file gives one image per
frame; a compressed transfer syntax is decoded when its pydicom plugin is installed, else refused with its name.

**NIfTI** (nibabel): every ``.nii`` / ``.nii.gz`` volume, reoriented to the closest canonical (RAS+) orientation
(``nibabel.as_closest_canonical``) so that slices of every volume run the same way, then cut into 2D slices along
``--slice_axis`` (axial by default) within ``--slice_range A:B``; constant (empty) slices are skipped. Intensities
as for DICOM without a file window: ``--window``, else the train split's percentiles.

**Patients.** Every image carries a patient: DICOM PatientID (else the StudyInstanceUID), the NIfTI volume. Only a
salted hash of it is kept (:func:`hash_id`); no name, ID or other header field reaches a run folder, card or
result. With ``train/``, ``val/``, ``test/`` sub-folders a patient found in two splits is refused; without them
``--split_by patient`` makes seeded patient-level splits (7 : 1 : 2, MedMNIST's ratio).

The decoded image is 8-bit (the model's input), the window recorded in ``ImageData.intensity`` and the run's
``run_config.json``; ``medgen sample --format dicom`` maps generated images back through the same window.
"""

import hashlib
import hmac
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

WINDOW_PRESETS = {  # (center, width) in Hounsfield units: the usual CT display windows
    "lung": (-600.0, 1500.0), "mediastinum": (50.0, 350.0), "soft-tissue": (40.0, 400.0),
    "bone": (400.0, 1800.0), "brain": (40.0, 80.0), "liver": (60.0, 160.0),
}
PERCENTILES = (0.5, 99.5)
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)  # train / val / test patients, MedMNIST's 7:1:2
MIN_SPLIT_PATIENTS, FEW_PATIENTS = 5, 10  # --split_by patient: refused below 5 patients, warned below 10
SLICE_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}  # in canonical RAS+ voxel order
# Plugins pydicom decodes compressed transfer syntaxes with (pydicom's own documentation names them).
DECODER_HINT = ("install a pydicom pixel-data plugin for it -- `pip install pylibjpeg pylibjpeg-libjpeg "
                "pylibjpeg-openjpeg` (JPEG, JPEG-LS, JPEG 2000) or `pip install python-gdcm` -- or decompress the "
                "files first (e.g. `gdcmconv --raw`)")


def _error(message):
    from .data import DataError

    return DataError(message)


# A per-process secret: the pseudonyms in ImageData.groups cannot be recomputed from a guessed identifier (a
# constant salt in this source would let anyone who can guess an MRN find its pseudonym). Nothing writes them.
_PSEUDONYM_SALT = os.urandom(16)


def hash_id(value: str) -> str:
    """The key a patient identifier is split and compared by (identical in every split and every process), kept in
    memory only while a folder is read: sha256 of the identifier. What leaves the reader is :func:`pseudonym`."""
    return hashlib.sha256(f"medgen-diffusers:{value}".encode()).hexdigest()


def pseudonym(key: str) -> str:
    """The patient pseudonym an ImageData carries: 16 hex digits of an HMAC keyed by this process's secret salt."""
    return hmac.new(_PSEUDONYM_SALT, key.encode(), hashlib.sha256).hexdigest()[:16]


def parse_window(text) -> Optional[Tuple[float, float]]:
    """``"C,W"`` or a preset name (:data:`WINDOW_PRESETS`) -> (center, width); None -> None."""
    if text is None or text == "":
        return None
    if isinstance(text, (list, tuple)):
        return float(text[0]), float(text[1])
    if text in WINDOW_PRESETS:
        return WINDOW_PRESETS[text]
    try:
        center, width = (float(v) for v in str(text).split(","))
    except ValueError:
        raise _error(f"--window {text!r}: give CENTER,WIDTH (e.g. 40,400) or a preset: "
                     f"{', '.join(WINDOW_PRESETS)}.") from None
    if width < 1:
        raise _error(f"--window {text!r}: the width must be >= 1.")
    return center, width


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM's LINEAR VOI function (PS3.3 C.11.2.1.2.1) with output range [0, 1]."""
    c, w = center - 0.5, width - 1
    return np.clip((values - c) / max(w, 1e-12) + 0.5, 0.0, 1.0)


def to_uint8(unit: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(unit, dtype=np.float64) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# Reading files

def is_dicom(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def read_dicom(path: Path):
    """(values, per-frame views, patient identifier or None): values are modality values (frames, H, W) float64, or
    8-bit RGB (frames, H, W, 3) for colour files; a view holds the attributes that map one frame (see frame_view)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(path)
    except Exception as error:  # noqa: BLE001 - pydicom raises several kinds for "not a DICOM file"
        raise _error(f"Cannot read DICOM file {path} ({type(error).__name__}: {error}); fix or remove it.") from None
    if "PixelData" not in ds:
        raise _error(f"{path} has no pixel data (SOP class {ds.get('SOPClassUID', 'unknown')}: e.g. a report or "
                     "DICOMDIR): remove it from the image folder.")
    try:
        array = ds.pixel_array  # pydicom 3 returns YBR_* colour already converted to RGB
    except Exception as error:  # noqa: BLE001 - missing decoders raise RuntimeError/NotImplementedError
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        name = getattr(syntax, "name", str(syntax))
        raise _error(f"{path}: its pixel data is compressed as {name} ({syntax}), which pydicom cannot decode here "
                     f"({str(error).splitlines()[0]}): {DECODER_HINT}.") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        array = array[None]
    photometric = str(ds.get("PhotometricInterpretation", ""))
    views = [frame_view(ds, index) for index in range(frames)]
    patient = str(ds.get("PatientID", "") or "").strip() or None
    if photometric == "PALETTE COLOR":  # stored values index a colour table: look them up
        from pydicom.pixels import apply_color_lut

        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return rgb_to_uint8(apply_color_lut(array, ds), bits), views, patient
    if int(ds.get("SamplesPerPixel", 1)) == 3:  # colour (pathology, ophthalmology): RGB, no windowing
        return rgb_to_uint8(array, int(ds.get("BitsStored", 8))), views, patient
    values = np.stack([np.asarray(apply_modality_lut(frame, view), dtype=np.float64)
                       for frame, view in zip(array, views)])
    return values, views, patient


def rgb_to_uint8(array: np.ndarray, bits: int) -> np.ndarray:
    """Colour samples of ``bits`` bits as 8-bit: scaled by the bit depth (16-bit RGB would wrap modulo 256)."""
    if array.dtype == np.uint8 and bits <= 8:
        return array
    return np.round(np.asarray(array, dtype=np.float64) * (255 / (2 ** bits - 1))).clip(0, 255).astype(np.uint8)


# What maps one frame's stored values to modality values and then to display: the top level of the file, where
# enhanced multi-frame objects (CT/MR/XA) put them in functional groups instead -- shared by all frames, or per
# frame (PS3.3 C.7.6.16): the Pixel Value Transformation and Frame VOI LUT macros.
_FRAME_ATTRIBUTES = ("BitsStored", "BitsAllocated", "PixelRepresentation", "PhotometricInterpretation",
                     "RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence", "WindowCenter",
                     "WindowWidth", "VOILUTFunction", "VOILUTSequence")
_FUNCTIONAL_GROUPS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")


def frame_view(ds, index: int):
    """A flat dataset with what maps frame ``index``: the top level, overridden by the shared functional groups,
    overridden by the frame's own (pydicom's apply_modality_lut / apply_voi_lut read the top level only)."""
    from pydicom.dataset import Dataset

    view = Dataset()
    for keyword in _FRAME_ATTRIBUTES:
        if keyword in ds:
            view[keyword] = ds[keyword]
    shared, per_frame = ds.get("SharedFunctionalGroupsSequence"), ds.get("PerFrameFunctionalGroupsSequence")
    groups = ([shared[0]] if shared else []) + ([per_frame[index]] if per_frame and index < len(per_frame) else [])
    for group in groups:
        for sequence in _FUNCTIONAL_GROUPS:
            if group.get(sequence):
                for element in group[sequence][0]:
                    view[element.tag] = element
    return view


def file_window(view, values: np.ndarray) -> Optional[np.ndarray]:
    """A frame's own VOI (``view``: its frame_view) applied to its modality ``values``, scaled to [0, 1]; None when
    it has none."""
    from pydicom.pixels import apply_voi_lut

    if "VOILUTSequence" not in view and "WindowCenter" not in view:
        return None
    out = np.asarray(apply_voi_lut(values, view), dtype=np.float64)
    if "VOILUTSequence" in view and view.VOILUTSequence:
        bits = int(view.VOILUTSequence[0].LUTDescriptor[2])
        return np.clip(out / (2 ** bits - 1), 0, 1)
    # pydicom's windowing output range (apply_windowing): the stored range, through the rescale when there is one.
    bits = int(view.BitsStored)
    low, high = (0, 2 ** bits - 1) if int(view.PixelRepresentation) == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if view.get("ModalityLUTSequence"):
        low, high = 0, 2 ** int(view.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
    elif "RescaleSlope" in view and "RescaleIntercept" in view:
        low, high = (v * float(view.RescaleSlope) + float(view.RescaleIntercept) for v in (low, high))
    return np.clip((out - low) / (high - low), 0, 1)


def read_nifti(path: Path, slice_axis: str = "axial", slice_range: Optional[str] = None) -> np.ndarray:
    """Slices (N, H, W) float64 of a canonical-orientation 3D volume; constant slices left out."""
    import nibabel as nib

    try:
        image = nib.as_closest_canonical(nib.load(str(path)))
    except Exception as error:  # noqa: BLE001 - nibabel raises several kinds for unreadable files
        raise _error(f"Cannot read NIfTI file {path} ({type(error).__name__}: {error}); fix or remove it.") from None
    shape = image.shape
    if len(shape) == 4 and shape[3] == 1:
        image = image.slicer[..., 0]
    elif len(shape) != 3:
        raise _error(f"{path} is a {len(shape)}D volume {shape}: give 3D volumes (for a 4D series, save one volume, "
                     "e.g. nibabel's img.slicer[..., k]).")
    if slice_axis not in SLICE_AXES:
        raise _error(f"--slice_axis {slice_axis!r}: choose {', '.join(SLICE_AXES)}.")
    volume = np.moveaxis(np.asarray(image.get_fdata(), dtype=np.float64), SLICE_AXES[slice_axis], 0)
    start, stop = parse_slice_range(slice_range, len(volume), path)
    slices = volume[start:stop]
    keep = [s for s in slices if s.max() > s.min()]
    return np.stack(keep) if keep else np.zeros((0, *volume.shape[1:]))


def parse_slice_range(text: Optional[str], count: int, path) -> Tuple[int, int]:
    if not text:
        return 0, count
    try:
        start, stop = (int(v) if v else None for v in str(text).split(":"))
    except ValueError:
        raise _error(f"--slice_range {text!r}: give START:STOP slice indices, e.g. 10:50.") from None
    start, stop = start or 0, count if stop is None else stop
    if not 0 <= start < stop <= count:
        raise _error(f"--slice_range {text!r} does not fit {path}'s {count} slices along this axis.")
    return start, stop


# ----------------------------------------------------------------------------------------------------------------
# A folder of medical files -> ImageData

def medical_kind(files: List[Path]) -> Optional[str]:
    """"dicom" / "nifti" when a folder's files are of that kind (None: an image folder)."""
    if any(is_nifti(p) for p in files):
        return "nifti"
    if any(p.suffix.lower() == ".dcm" for p in files) or (files and all(is_dicom(p) for p in files[:20])):
        return "dicom"
    return None


def _scan(folder: Path, kind: str) -> List[Tuple[Path, str]]:
    """(file, class folder) of every file of ``kind`` under ``folder`` ('.' for files at its top level)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    picked = [p for p in files if (is_nifti(p) if kind == "nifti" else is_dicom(p))]
    return [(p, p.relative_to(folder).parts[0] if len(p.relative_to(folder).parts) > 1 else ".") for p in picked]


BIDS_SUBJECT = re.compile(r"^sub-[A-Za-z0-9]+$")
PATIENT_RULES = {  # one documented rule per source kind (docs/own-data.md); --patient_regex replaces either
    "dicom": "DICOM PatientID",
    "nifti": "the BIDS sub-XX folder, else the case folder (root/<class>/<case>/..., or a folder whose name the "
             "file name starts with, as BraTS' <case>/<case>_t1.nii.gz), else the file name",
}


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


@lru_cache(maxsize=8)
def _decode_folder(folder: str, kind: str, slice_axis: str, slice_range: Optional[str],
                   patient_regex: Optional[str] = None):
    """Every image of one folder: [(values or RGB, file-window-or-None, patient key or None, class, invert)],
    decoded once per process."""
    items = []
    for path, label in _scan(Path(folder), kind):
        relative = path.relative_to(folder)
        if kind == "dicom":
            values, views, patient_id = read_dicom(path)
            patient = patient_of(relative, kind, patient_id, patient_regex)
            for frame, view in zip(values, views):
                windowed = None if frame.dtype == np.uint8 else file_window(view, frame)
                invert = str(view.get("PhotometricInterpretation", "")) == "MONOCHROME1"
                items.append((frame, windowed, None if patient is None else hash_id(patient), label, invert))
        else:
            patient = hash_id(patient_of(relative, kind, None, patient_regex))
            for frame in read_nifti(path, slice_axis, slice_range):
                items.append((frame, None, patient, label, False))
    if not items:
        raise _error(f"{folder} holds no {kind.upper()} images.")
    return items


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


def load_medical(path: Path, split: str, kind: str, window=None, slice_axis: str = "axial",
                 slice_range: Optional[str] = None, split_by: Optional[str] = None, seed: int = 0,
                 size: Optional[int] = None, patient_regex: Optional[str] = None, crop: Optional[str] = None):
    """One split of a DICOM/NIfTI folder as ImageData (uint8 images, labels, patient pseudonyms, intensity rule).
    Patients: :data:`PATIENT_RULES` for the kind, or ``patient_regex``; ``data.patient_rule`` says which."""
    from .data import SPLITS, _image_data

    if split_by not in (None, "patient"):
        raise _error(f"--split_by {split_by!r}: the only unit is 'patient'.")
    split_dirs = [name for name in SPLITS if (path / name).is_dir()]
    if split_dirs and split_by:
        raise _error(f"{path} already has split folders {split_dirs}: drop --split_by (or the folders).")

    def items_of(name):
        if split_dirs:
            if name not in split_dirs:
                raise _error(f"{path} has split folders {split_dirs} but no '{name}/': add it or choose another split.")
            return _decode_folder(str(path / name), kind, slice_axis, slice_range, patient_regex)
        everything = _decode_folder(str(path), kind, slice_axis, slice_range, patient_regex)
        if split_by is None:
            if name != "train":
                raise _error(f"{path} has no train/val/test sub-folders and no --split_by: all its images are "
                             f"'train', there is no '{name}' split. Pass --split_by patient for patient-level splits.")
            return everything
        missing = sum(item[2] is None for item in everything)
        if missing:
            raise _error(f"--split_by patient: {missing} of {len(everything)} images of {path} come from DICOM files "
                         "without a PatientID, so their patient is unknown. Fill in PatientID, or pass "
                         "--patient_regex PATTERN that finds the patient in each file's path (e.g. '^([^/]+)/' "
                         "for one folder per patient).")
        split_of = split_patients([item[2] for item in everything], seed)
        return tuple(item for item in everything if split_of[item[2]] == name)

    if split_dirs:  # user-made splits: a patient in two of them leaks train data into the held-out numbers
        seen = {name: {item[2] for item in items_of(name)} - {None} for name in split_dirs}
        for a in split_dirs:
            for b in split_dirs:
                if a < b and seen[a] & seen[b]:
                    raise _error(f"{path}: {len(seen[a] & seen[b])} patient(s) have images in both {a}/ and {b}/ "
                                 "(by DICOM PatientID / NIfTI volume): move each patient's images into one split, "
                                 "or put all images in one folder and pass --split_by patient.")
    items, train = items_of(split), items_of("train")
    if not items:
        raise _error(f"{path}: the {split} split holds no images (too few patients for --split_by patient?).")
    rule = intensity_rule(window, train, kind)
    from .sources import square

    images = [square(render(item, rule), crop) for item in items]
    if len({im.shape for im in images}) > 1 or images[0].shape[0] != images[0].shape[1]:
        if size is None:
            raise _error(f"{path}: images differ in size or are not square ({images[0].shape[1]}x{images[0].shape[0]}, "
                         "...): pass --resolution N to resize every image to N x N.")
        import torch

        from .data import resize_images

        images = [resize_images(torch.from_numpy(im.copy()).permute(2, 0, 1)[None].contiguous(), size)[0]
                  .permute(1, 2, 0).numpy() for im in images]
    images = np.stack(images)
    classes = sorted({item[3] for item in train})
    labeled = "." not in classes
    if labeled:
        unknown = sorted({item[3] for item in items} - set(classes))
        if unknown:
            raise _error(f"{path} ({split}) has class folder(s) {unknown} that the train split lacks.")
    labels = np.array([[classes.index(item[3])] for item in items]) if labeled else None
    data = _image_data(images, labels, classes if labeled else None, str(path), split)
    missing = sum(item[2] is None for item in (*items, *(train if split != "train" else ())))
    data.patient_rule = f"--patient_regex {patient_regex}" if patient_regex else PATIENT_RULES[kind]
    if missing:  # patients unknown: no pseudonyms at all, and the DP unit cannot be the patient
        data.patient_rule = f"unknown: {missing} images come from DICOM files without a PatientID"
        data.notice = (f"{path}: {missing} images come from DICOM files without a PatientID, so patients are "
                       "unknown (no patient-level splits, cross-split check or per-patient DP): fill in PatientID or "
                       "pass --patient_regex.")
    else:
        pseudonyms = {key: pseudonym(key) for key in {item[2] for item in items}}
        data.groups = np.array([pseudonyms[item[2]] for item in items])
    data.intensity = rule
    return data


def intensity_rule(window, train_items, kind: str) -> Dict:
    """How values become [0, 1]: the given window, else each DICOM file's own VOI, else the train split's
    percentiles (as a window, so every split and every later command uses the same numbers)."""
    given = parse_window(window)
    if given is not None:
        return {"rule": "window", "center": given[0], "width": given[1], "from": "--window"}
    grayscale = [item for item in train_items if item[0].dtype != np.uint8]
    if kind == "dicom" and grayscale and all(item[1] is not None for item in grayscale):
        return {"rule": "file", "from": "each file's VOI (WindowCenter/Width or VOI LUT)"}
    if not grayscale:
        return {"rule": "rgb", "from": "8-bit colour as stored"}
    values = np.concatenate([item[0].ravel() for item in grayscale])
    low, high = (float(v) for v in np.percentile(values, PERCENTILES))
    # LINEAR maps [c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2] onto [0, 1]: w - 1 = high - low exactly, however
    # small (float data with a range below 1 kept only a few grey levels when the width was floored at 2).
    width = max(high - low, 1e-6 * max(abs(high), abs(low), 1.0)) + 1
    return {"rule": "window", "center": float(low + high) / 2 + 0.5, "width": width,
            "from": f"train split percentiles {PERCENTILES[0]}..{PERCENTILES[1]}"}


def render(item, rule: Dict) -> np.ndarray:
    """uint8 (H, W, C) of one decoded item under ``rule`` (MONOCHROME1 inverted after windowing)."""
    values, windowed, _, _, invert = item
    if values.dtype == np.uint8:
        return values
    unit = windowed if rule["rule"] == "file" else linear_window(values, rule["center"], rule["width"])
    if unit is None:  # this file has no VOI while the others do
        raise _error("A DICOM file without a window among files with one: pass --window C,W (or a preset) so every "
                     "image is mapped the same way.")
    if invert:
        unit = 1.0 - unit
    return to_uint8(unit)[..., None]


# ----------------------------------------------------------------------------------------------------------------
# Writing generated images back as DICOM

SYNTHETIC_NOTE = "Synthetic image generated by medgen-diffusers: not an image of any patient"


def inverse_window(images_uint8: np.ndarray, rule: Optional[Dict]) -> Tuple[np.ndarray, Dict]:
    """Stored values and their mapping for generated 8-bit images: through the inverse of the run's window when it
    had one (a value v becomes the modality value c - 0.5 + (v / 255 - 0.5) (w - 1)), else the 8-bit values
    themselves. Modality values that fit int16 are stored as they are; wider ones (a 0..100000 window) as uint16
    with a RescaleSlope/Intercept that gives them back -- a plain int16 cast would wrap them."""
    if rule and rule.get("rule") == "window":
        center, width = float(rule["center"]), float(rule["width"])
        values = center - 0.5 + (images_uint8.astype(np.float64) / 255 - 0.5) * (width - 1)
        low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
        info = {"center": center, "width": width, "signed": True, "slope": 1.0, "intercept": 0.0}
        if -32768 <= round(low) and round(high) <= 32767 and width >= 256:
            return np.round(values).astype(np.int16), info
        # The window's range over the full 16 bits: no value wraps, none is lost. DICOM's DS holds 16 characters.
        slope, low = float(f"{(high - low) / 65535:.9g}"), float(f"{low:.9g}")
        stored = np.round((values - low) / slope).clip(0, 65535).astype(np.uint16)
        return stored, {**info, "signed": False, "bits": 16, "slope": slope, "intercept": low}
    return images_uint8.astype(np.uint8), {"center": 127.5, "width": 256.0, "signed": False, "bits": 8,
                                           "slope": 1.0, "intercept": 0.0}


def write_dicom(image: np.ndarray, path: Path, rule: Optional[Dict], class_name: Optional[str], number: int) -> None:
    """One generated image as a Secondary Capture DICOM file, marked synthetic (ImageType DERIVED/SECONDARY, the
    derivation description, a synthetic patient) with fresh UIDs: no identity of any input is copied."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.pixels import set_pixel_data
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
    import pydicom

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.ConversionType = "OT", "SYN"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = SYNTHETIC_NOTE
    ds.SeriesDescription = "SYNTHETIC" + (f" {class_name}" if class_name else "")
    ds.PatientName, ds.PatientID, ds.BurnedInAnnotation = "SYNTHETIC", "SYNTHETIC", "NO"
    ds.InstanceNumber = number
    if image.shape[-1] == 3:
        set_pixel_data(ds, np.ascontiguousarray(image, dtype=np.uint8), "RGB", 8)
    else:
        stored, window = inverse_window(image[..., 0], rule)
        set_pixel_data(ds, stored, "MONOCHROME2", 16 if window["signed"] else window["bits"])
        ds.WindowCenter, ds.WindowWidth = window["center"], window["width"]
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = window["slope"], window["intercept"], "US"
    ds.save_as(path, enforce_file_format=True)

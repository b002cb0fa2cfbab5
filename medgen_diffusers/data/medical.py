"""DICOM and NIfTI files: reading one file (pixels through the modality LUT and window), writing synthetic images
back as DICOM, and the patient keys. A *folder* of them as a data source -- patients, splits, the intensity rule,
decoding file by file -- is medical_folders.py.

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
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

WINDOW_PRESETS = {  # (center, width) in Hounsfield units: the usual CT display windows
    "lung": (-600.0, 1500.0), "mediastinum": (50.0, 350.0), "soft-tissue": (40.0, 400.0),
    "bone": (400.0, 1800.0), "brain": (40.0, 80.0), "liver": (60.0, 160.0),
}
PERCENTILES = (0.5, 99.5)
SLICE_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}  # in canonical RAS+ voxel order
# Plugins pydicom decodes compressed transfer syntaxes with (pydicom's own documentation names them).
DECODER_HINT = ("install a pydicom pixel-data plugin for it -- `pip install pylibjpeg pylibjpeg-libjpeg "
                "pylibjpeg-openjpeg` (JPEG, JPEG-LS, JPEG 2000) or `pip install python-gdcm` -- or decompress the "
                "files first (e.g. `gdcmconv --raw`)")


def _error(message):
    from .images import DataError

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
# Writing generated images back as DICOM

SYNTHETIC_NOTE = "Synthetic image generated by medgen-diffusers: not an image of any patient"


def inverse_window(images_uint8: np.ndarray, rule: Optional[Dict]) -> Tuple[np.ndarray, Dict]:
    """Stored values and their mapping for generated 8-bit images (or 16-bit ones, --bit_depth 16: top = 65535):
    through the inverse of the run's window when it had one (a value v becomes the modality value
    c - 0.5 + (v / top - 0.5) (w - 1)), else the values themselves. Modality values that fit int16 are stored as
    they are; wider ones (a 0..100000 window) as uint16 with a RescaleSlope/Intercept that gives them back -- a
    plain int16 cast would wrap them."""
    top = 65535 if images_uint8.dtype == np.uint16 else 255
    if rule and rule.get("rule") == "window":
        center, width = float(rule["center"]), float(rule["width"])
        values = center - 0.5 + (images_uint8.astype(np.float64) / top - 0.5) * (width - 1)
        low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
        info = {"center": center, "width": width, "signed": True, "slope": 1.0, "intercept": 0.0}
        if -32768 <= round(low) and round(high) <= 32767 and width >= 256:
            return np.round(values).astype(np.int16), info
        # The window's range over the full 16 bits: no value wraps, none is lost. DICOM's DS holds 16 characters.
        slope, low = float(f"{(high - low) / 65535:.9g}"), float(f"{low:.9g}")
        stored = np.round((values - low) / slope).clip(0, 65535).astype(np.uint16)
        return stored, {**info, "signed": False, "bits": 16, "slope": slope, "intercept": low}
    if top == 65535:
        return images_uint8, {"center": 32767.5, "width": 65536.0, "signed": False, "bits": 16, "slope": 1.0,
                              "intercept": 0.0}
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

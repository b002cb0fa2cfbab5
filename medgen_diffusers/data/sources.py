"""Sources other than MedMNIST's own files, decoded into :class:`~medgen_diffusers.data.ImageData` (through
:func:`medgen_diffusers.data.load_images`): a folder of images (a sub-folder per class; ``train/``, ``val/``,
``test/`` split folders), a MedMNIST-layout ``.npz`` of your own, a ``datasets`` dataset. One class numbering for
every split (train's), 16-bit and float images scaled by their bit depth, patients from a ``datasets`` column.
DICOM and NIfTI folders: :mod:`medgen_diffusers.medical`.
"""

import zipfile
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from .files import visible_files
from .images import SPLITS, DataError, ImageData, _image_data, kept_rows, resize_images, square
from .medical import hash_id, pseudonym
from .medical_folders import split_patients
from .medmnist import _read_split

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def load_npz(path: Path, split: str) -> ImageData:
    if not path.is_file():
        raise DataError(f"{path} does not exist: pass the path of your MedMNIST-layout .npz.")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not an .npz archive (numpy.savez writes one); MedMNIST's layout has "
                        "train_images (N, H, W[, C]) uint8 and train_labels (N, 1).")
    images, labels = _read_split(path, split)  # your own file: no MD5 check, shape and dtype checked
    return _image_data(images, labels, None, str(path), split)


# Full-scale value of each PIL mode that holds more than 8 bits per pixel: images are scaled by their bit depth
# to uint8, never clipped (a 16-bit X-ray clipped at 255 is almost all white). "I" (32-bit int) is how Pillow opens
# many 16-bit PNGs: it is read as 16-bit, and a value outside 0..65535 is refused. "F" (float) images must lie in
# [0, 1]. Issue: per-dataset windows and percentiles for CT/MR intensities come with the DICOM/NIfTI readers.
HIGH_DEPTH_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


def pil_to_array(image, name: str, bit_depth: int = 8) -> np.ndarray:
    """uint8 (H, W, 1|3) of a PIL image; 16-bit and float images scaled by their full range (see HIGH_DEPTH_MODES).
    ``bit_depth=16``: uint16, 16-bit values as they are, float ones x 65535, 8-bit ones x 257 (the same full range)."""
    top, dtype = (65535, np.uint16) if bit_depth == 16 else (255, np.uint8)
    if image.mode in HIGH_DEPTH_MODES:
        full = HIGH_DEPTH_MODES[image.mode]
        array = np.asarray(image, dtype=np.float64)
        if array.min() < 0 or array.max() > full:
            raise DataError(f"{name}: {image.mode} pixel values {array.min():g}..{array.max():g} lie outside "
                            f"0..{full:g}, the range this mode is scaled from: save it as 8- or 16-bit (unsigned), "
                            "or as float in [0, 1].")
        return np.round(array / full * top).astype(dtype)[..., None]
    if image.mode in ("L", "LA", "1"):
        array = np.asarray(image.convert("L"))[..., None]
    else:
        array = np.asarray(image.convert("RGB"))
    return array if bit_depth != 16 else array.astype(np.uint16) * 257


def _decode(path: Path, bit_depth: int = 8) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return pil_to_array(image, str(path), bit_depth)
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"Cannot read image {path} ({error}); fix or remove it.") from None


def _folder_files(path: Path):
    files = visible_files(path)
    return files, [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]


def _folder_classes(path: Path, images=None) -> List[str]:
    """Sorted class folder names of one split folder ('.' for images at its top level)."""
    images = _folder_files(path)[1] if images is None else images
    classes = sorted({p.parent.relative_to(path).as_posix() for p in images})
    if "." in classes and len(classes) > 1:
        raise DataError(f"{path} mixes images at its top level with images in sub-folders {classes[1:4]}: put every "
                        "image in a class sub-folder (labeled) or all at the top level (unlabeled).")
    return classes


def load_folder(path: Path, split: str, size: Optional[int], crop: Optional[str] = None,
                limit: Optional[int] = None, bit_depth: int = 8) -> ImageData:
    """One split of an image folder, decoded in memory; ``limit``: only a seeded subset of that many files is
    decoded (``--max_train_samples``; :func:`~medgen_diffusers.data.kept_rows`)."""
    import logging


    split_dirs = [name for name in SPLITS if (path / name).is_dir()]
    train_classes = None
    if split_dirs:
        if split not in split_dirs:
            raise DataError(f"{path} has split folders {split_dirs} but no '{split}/': add it or choose another split.")
        if split != "train" and "train" in split_dirs:  # one class numbering for every split: train's
            train_classes = _folder_classes(path / "train")
        path = path / split
    elif split != "train":
        raise DataError(f"{path} has no train/val/test sub-folders, so all its images are its 'train' split; there is "
                        f"no '{split}' split: add {path}/{split}/ (same layout) or use split 'train'.")
    files, images = _folder_files(path)
    ignored = len(files) - len(images)
    if ignored:
        kept = set(images)  # a set: `p not in images` (a list) made the scan quadratic with one stray file
        logging.getLogger(__name__).warning(f"{path}: ignored {ignored} non-image file(s) (e.g. "
                                            f"{next(p for p in files if p not in kept).name}).")
    if not images:
        raise DataError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)}): put them in one sub-folder per "
                        "class, or directly in the folder for unlabeled data.")
    classes = _folder_classes(path, images)
    labeled = "." not in classes
    if train_classes is not None and labeled:
        unknown = sorted(set(classes) - set(train_classes))
        if unknown:
            raise DataError(f"{path} has class folder(s) {unknown} that train/ lacks (train's classes: "
                            f"{train_classes}): a model cannot be scored on a class it never saw; add them to "
                            "train/ or remove them here.")
        classes = train_classes
    rows = kept_rows(len(images), limit)  # after the classes: a subset keeps the folder's class numbering
    if rows is not None:
        images = [images[i] for i in rows]
    arrays = [square(_decode(p, bit_depth), crop) for p in images]
    shapes = {a.shape[:2] for a in arrays}
    if len(shapes) > 1 or any(a.shape[0] != a.shape[1] for a in arrays):
        if size is None:
            odd = next(p for p, a in zip(images, arrays) if a.shape[:2] != arrays[0].shape[:2] or a.shape[0] != a.shape[1])
            raise DataError(f"{path}: images differ in size or are not square (e.g. "
                            f"{images[0].relative_to(path).as_posix()} is {arrays[0].shape[1]}x{arrays[0].shape[0]}, "
                            f"{odd.relative_to(path).as_posix()} is "
                            f"{arrays[images.index(odd)].shape[1]}x{arrays[images.index(odd)].shape[0]}): pass "
                            "--resolution N to resize every image to N x N (non-square images are cropped to their "
                            "central square first; --crop pad or resize to change that).")
        arrays = [resize_images(torch.from_numpy(a.copy()).permute(2, 0, 1)[None].contiguous(), size)[0].permute(1, 2, 0)
                  .numpy() for a in arrays]
    if len({a.shape[-1] for a in arrays}) > 1:  # some grayscale, some colour: colour wins
        arrays = [np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a for a in arrays]
    labels = np.array([[classes.index(p.parent.relative_to(path).as_posix())] for p in images]) if labeled else None
    return _image_data(np.stack(arrays), labels, classes if labeled else None, str(path), split)


def load_datasets(name: str, split: str, image_column: str, label_column: Optional[str],
                   from_disk: bool, patient_column: Optional[str] = None, split_by: Optional[str] = None,
                   split_seed: int = 0, limit: Optional[int] = None, bit_depth: int = 8) -> ImageData:
    import datasets


    try:
        loaded = datasets.load_from_disk(name) if from_disk else datasets.load_dataset(name)
    except Exception as error:  # noqa: BLE001 - datasets raises many kinds for "not there / not reachable"
        raise DataError(f"Could not load the datasets dataset {name!r} ({type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''}).") from None
    train = None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{name} has splits {list(loaded)} but no '{split}'.")
        if split_by:
            raise DataError(f"{name} already has splits {list(loaded)}: drop --split_by.")
        if patient_column is not None:
            _check_patients_apart(loaded, patient_column, name)
        train = loaded["train"] if "train" in loaded else None
        loaded = loaded[split]
    elif split_by:  # one dataset with a patient column: seeded patient-level splits
        if patient_column is None:
            raise DataError(f"--split_by patient needs --patient_column: the column of {name} naming each image's "
                            "patient.")
        ids = _patient_ids(loaded, patient_column, name)
        split_of = split_patients(ids.tolist(), split_seed)
        rows_of = lambda part: [i for i, p in enumerate(ids) if split_of[p] == part]  # noqa: E731
        # In memory: nothing is written beside the user's dataset.
        train = loaded.select(rows_of("train"), keep_in_memory=True)
        loaded = loaded.select(rows_of(split), keep_in_memory=True)
        if len(loaded) == 0:
            raise DataError(f"{name}: --split_by patient left the {split} split empty: too few patients.")
    elif split != "train":
        raise DataError(f"{name} is a single dataset (no splits): it is the 'train' split; there is no '{split}' "
                        "(with a patient column, --split_by patient makes patient-level splits).")
    rows = kept_rows(len(loaded), limit)  # --max_train_samples: only these rows are decoded
    if rows is not None:
        loaded = loaded.select(rows.tolist(), keep_in_memory=True)
    columns = loaded.column_names
    if image_column not in columns:
        raise DataError(f"{name} has no column {image_column!r} (columns: {', '.join(columns)}): pass "
                        "--image_column NAME.")
    if label_column is not None and label_column not in columns:
        if label_column != "label":
            raise DataError(f"{name} has no column {label_column!r} (columns: {', '.join(columns)}): pass "
                            "--label_column NAME.")
        label_column = None  # the default: no "label" column = unlabeled
    arrays = []
    for row, image in enumerate(loaded[image_column]):
        array = pil_to_array(image, f"{name} row {row}", bit_depth)
        if arrays and array.shape != arrays[0].shape:
            raise DataError(f"{name}: row {row} of {image_column!r} is {array.shape}, row 0 {arrays[0].shape}; "
                            "images must share one size and channel count.")
        arrays.append(array)
    labels, names = None, None
    if label_column is not None:
        labels, names = _dataset_labels(loaded, label_column, train, name, split)
    data = _image_data(np.stack(arrays), labels, names, name, split)
    if patient_column is not None:
        data.groups = np.array([pseudonym(key) for key in _patient_ids(loaded, patient_column, name)])
        data.patient_rule = f"column {patient_column!r}"
    return data


def _hash(value) -> str:
    return hash_id(str(value))  # the split key, in memory only; ImageData.groups holds pseudonyms


def _patient_ids(part, column: str, name: str) -> np.ndarray:
    """Pseudonyms of a patient column; a missing column or an empty value is an error naming the row."""
    if column not in part.column_names:
        raise DataError(f"{name} has no column {column!r} (columns: {', '.join(part.column_names)}): pass "
                        "--patient_column NAME.")
    values = part[column]
    gaps = [row for row, value in enumerate(values) if value is None or str(value).strip() == ""]
    if gaps:
        raise DataError(f"{name}: column {column!r} has no patient for row(s) {gaps[:5]}"
                        f"{' ...' if len(gaps) > 5 else ''} ({len(gaps)} in all): fill them in (every image needs "
                        "its patient, or splits and the audit cannot keep patients apart).")
    return np.array([_hash(value) for value in values])


def _check_patients_apart(splits, column: str, name: str) -> None:
    """A patient in two splits of a DatasetDict leaks training data into held-out numbers: refused."""
    seen = {split: set(_patient_ids(part, column, f"{name} ({split})").tolist()) for split, part in splits.items()}
    for a in seen:
        for b in seen:
            if a < b and seen[a] & seen[b]:
                raise DataError(f"{name}: {len(seen[a] & seen[b])} patient(s) of column {column!r} are in both "
                                f"'{a}' and '{b}': keep each patient in one split (or give one dataset and "
                                "--split_by patient).")


def _dataset_labels(loaded, label_column: str, train, name: str, split: str):
    """(labels (N, k), class names) with the train split's numbering: ClassLabel names are matched by name (a
    split's own ClassLabel may list its classes in another order or fewer of them), string labels are numbered in
    the sorted order of train's names, integer labels are kept."""
    import datasets

    def names_of(part):
        feature = part.features[label_column]
        if isinstance(feature, datasets.ClassLabel):
            return list(feature.names)
        values = part[label_column]
        return sorted(set(values)) if values and isinstance(values[0], str) else None

    own, reference = names_of(loaded), names_of(train) if train is not None else None
    reference = reference or own
    values = loaded[label_column]
    if own is None:  # integer (or multi-label) values: the same numbers in every split
        labels = np.asarray(values)
        return labels.reshape(len(labels), -1), None
    as_names = [own[v] if not isinstance(v, str) else v for v in values]
    unknown = sorted(set(as_names) - set(reference))
    if unknown:
        raise DataError(f"{name} ({split}) has label(s) {unknown[:5]} that its train split lacks (train: "
                        f"{reference[:8]}): a model cannot be scored on a class it never saw.")
    return np.array([[reference.index(v)] for v in as_names]), reference

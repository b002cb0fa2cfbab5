"""One split of a source decoded in memory, whatever its kind: :func:`read_split` -- the dispatcher that
:func:`~medgen_diffusers.data.load_images` uses when there is no prepared store, and the store uses to prepare a
source that is not an image, DICOM or NIfTI folder (MedMNIST, ``.npz``, ``datasets``).

One reader per kind: MedMNIST files (``medmnist``), image folders, ``.npz`` and ``datasets`` (``sources``),
DICOM/NIfTI folders (``medical_folders``). Every one returns the same :class:`~.images.ImageData`; here the split is
then resized to the asked size and, with ``bit_depth=16``, given its 8-bit view.
"""

import os
import re
from pathlib import Path
from typing import Optional, Union

import torch

from . import sources
from .files import visible_files
from .images import SPLITS, DataError, ImageData, eight_bit, keep_subset, resize_images
from .medical_folders import load_medical, medical_kind
from .medmnist import available_flags, load_medmnist_tensors, medmnist_info

DATASETS_FILES = ("dataset_info.json", "dataset_dict.json", "state.json")  # a datasets save_to_disk folder


def read_split(source: str, split: str, size: Optional[int] = None, root: Optional[Union[str, os.PathLike]] = None,
               download: bool = True, image_column: str = "image", label_column: Optional[str] = "label",
               window=None, slice_axis: str = "axial", slice_range: Optional[str] = None,
               split_by: Optional[str] = None, split_seed: int = 0, patient_column: Optional[str] = None,
               patient_regex: Optional[str] = None, crop: Optional[str] = None,
               max_train_samples: Optional[int] = None, bit_depth: Optional[int] = None) -> ImageData:
    """Decode ``split`` of ``source`` into memory (the options as :func:`~medgen_diffusers.data.load_images`'s)."""
    source = str(source)
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}. Valid splits: {', '.join(SPLITS)}.")
    check_bit_depth(bit_depth)
    path = Path(source).expanduser()
    limit = max_train_samples if split == "train" else None
    depth = bit_depth or 8
    if bit_depth == 16 and (source in medmnist_info() or path.suffix == ".npz"):
        raise DataError(f"--bit_depth 16: {source} holds 8-bit images (MedMNIST's layout is uint8), so 16 bits "
                        "would add nothing: drop --bit_depth.")
    if source in medmnist_info():
        data = keep_subset(load_medmnist_tensors(source, split, size or 28, root, download), limit, rehash=False)
    elif path.suffix == ".npz":
        data = keep_subset(sources.load_npz(path, split), limit)
    elif path.is_dir() and any((path / name).is_file() for name in DATASETS_FILES):
        data = sources.load_datasets(str(path), split, image_column, label_column, True, patient_column, split_by,
                                     split_seed, limit, depth)
    elif path.is_dir():
        kind = medical_kind(visible_files(path)[:500])
        if kind is not None:
            data = load_medical(path, split, kind, window, slice_axis, slice_range, split_by, split_seed, size,
                                patient_regex, crop, max_train_samples, depth)
        elif split_by is not None:
            raise DataError(f"--split_by {split_by} needs a patient per image: DICOM (PatientID) or NIfTI (one "
                            f"volume per patient) files; {path} holds ordinary images.")
        elif window is not None or slice_range is not None or patient_regex is not None:
            raise DataError(f"--window / --slice_range / --patient_regex apply to DICOM and NIfTI folders; {path} "
                            "holds ordinary images (8/16-bit files are scaled by their bit depth): drop them.")
        else:
            data = sources.load_folder(path, split, size, crop, limit, depth)
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not source.startswith("."):  # a Hub name, owner/name
        data = sources.load_datasets(source, split, image_column, label_column, False, patient_column, split_by,
                                     split_seed, limit, depth)
    elif source.startswith((".", "/", "~")) or "/" in source or os.sep in source or path.suffix:
        raise DataError(f"--dataset {source}: no such file or folder ({path.resolve()} does not exist). Check the "
                        "path; a MedMNIST data set is named by its flag, e.g. bloodmnist.")
    else:
        raise ValueError(f"Unknown dataset {source!r}: pass a MedMNIST 2D flag ({', '.join(available_flags())}), "
                         "a folder of images, a MedMNIST-layout .npz, or a datasets dataset (save_to_disk folder or "
                         "Hub name).")
    if size is not None and data.images.shape[-1] != size:
        data.images = resize_images(data.images, size)
    if bit_depth == 16:  # decoded at 16 bits: keep them, and their 8-bit view for everything that compares 8-bit
        if data.images.shape[1] != 1:
            raise DataError(f"--bit_depth 16 is for grayscale images; {source} has {data.images.shape[1]} channels "
                            "(16-bit colour PNGs cannot be written back): drop --bit_depth.")
        data.images16, data.images = data.images, eight_bit(data.images)
    return data


def check_bit_depth(bit_depth: Optional[int]) -> None:
    if bit_depth not in (None, 8, 16):
        raise DataError(f"--bit_depth must be 8 or 16; got {bit_depth}.")


def is_sixteen_bit(data: ImageData) -> bool:
    return data.images16 is not None and data.images16.dtype == torch.uint16

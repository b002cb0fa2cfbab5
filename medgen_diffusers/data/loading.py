""":func:`load_images`: one split of any source as :class:`~.images.ImageData` -- from its prepared store when
there is one (memory-mapped, nothing decoded), else decoded in memory by :func:`~.readers.read_split` -- and
:func:`class_counts`. The top of :mod:`medgen_diffusers.data`: it uses the store and the readers, neither uses it.
"""

import os
from pathlib import Path
from typing import List, Optional, Union

import torch

from .images import DataError, ImageData
from .readers import check_bit_depth, is_sixteen_bit, read_split
from .store import cached_store, is_store, load_store, source_signature

_LOADED = {}  # (source, split, size, options) -> ImageData: a split is decoded once per process


def load_images(source: str = "bloodmnist", split: str = "train", size: Optional[int] = None,
                root: Optional[Union[str, os.PathLike]] = None, download: bool = True,
                image_column: str = "image", label_column: Optional[str] = "label", window=None,
                slice_axis: str = "axial", slice_range: Optional[str] = None, split_by: Optional[str] = None,
                split_seed: int = 0, patient_column: Optional[str] = None,
                patient_regex: Optional[str] = None, crop: Optional[str] = None, prepare: bool = False,
                max_train_samples: Optional[int] = None, bit_depth: Optional[int] = None) -> ImageData:
    """One split of any source as :class:`~medgen_diffusers.data.ImageData`.

    Sources (``--dataset``): a MedMNIST 2D flag (any set, sizes 28/64/128/224; the official file, MD5-verified), a
    folder of images (one sub-folder per class, or none = unlabeled; optional ``train/``, ``val/``, ``test/``
    split folders), a DICOM or NIfTI folder, a MedMNIST-layout ``.npz`` of your own, a Hugging Face ``datasets``
    dataset (a ``save_to_disk`` folder or a Hub name), or a prepared store (``medgen prepare``).

    ``size``: resize to ``size`` x ``size`` (antialiased) when the data has another size; None keeps the data's
    size (MedMNIST: 28). ``root``: the MedMNIST data folder. ``image_column``/``label_column``: for ``datasets``
    sources (``label_column=None``: unlabeled). ``window``, ``slice_axis``, ``slice_range``, ``split_by``,
    ``split_seed``: for DICOM / NIfTI folders (:mod:`medgen_diffusers.data.medical_folders`); ``patient_column``
    (with ``split_by``) for ``datasets`` sources that name each image's patient; ``patient_regex`` finds the
    patient in a DICOM/NIfTI file's path instead of the kind's own rule. ``crop``: how non-square images of a folder
    or DICOM/NIfTI source become square (``center``, the default; ``pad``; ``resize``). ``max_train_samples``: the
    train split is a seeded random subset of that many images (:func:`~.images.kept_rows`), chosen before anything
    is decoded -- only those are decoded, stored and checksummed; the other splits are whole. ``bit_depth=16``
    (folders of 16-bit images, DICOM, NIfTI, ``datasets``): ``images16`` holds uint16 images, windowed or scaled to
    the full 0..65535 range, and the checksum is theirs; ``images`` is their 8-bit view. A local folder is read
    from its prepared store in the cache when one is there and its files have not changed
    (:mod:`medgen_diffusers.data.store`); ``prepare=True`` (training) makes that store first.
    """
    source = str(source)
    check_bit_depth(bit_depth)
    # A local folder's files (names, sizes, mtimes) are part of the key: a folder changed on disk is read again.
    signature = source_signature(source) if Path(source).expanduser().is_dir() else None
    options = dict(image_column=image_column, label_column=label_column, window=window, slice_axis=slice_axis,
                   slice_range=slice_range, split_by=split_by, split_seed=split_seed, patient_column=patient_column,
                   patient_regex=patient_regex, crop=crop, max_train_samples=max_train_samples, bit_depth=bit_depth)
    key = (source, split, size, str(root), *map(str, options.values()), signature, prepare)
    if key in _LOADED:
        return _LOADED[key]
    path = Path(source).expanduser()
    store = path if path.is_dir() and is_store(path) else cached_store(
        source, size, root, create=prepare, signature=signature,
        **{**options, "bit_depth": None if bit_depth in (None, 8) else bit_depth})
    if store is not None:  # a prepared store (given, or the cache's for this folder): memory-mapped, not decoded
        data = load_store(store, split, size)
        if bit_depth == 16 and not is_sixteen_bit(data):
            raise DataError(f"{source} is a store of 8-bit images: prepare one with --bit_depth 16 (medgen prepare "
                            "SOURCE --bit-depth 16 --out NEW).")
    else:
        data = read_split(source, split, size, root, download, **options)
    _LOADED[key] = data
    return data


def class_counts(source: str = "bloodmnist", split: str = "train", size: Optional[int] = None,
                 root: Optional[Union[str, os.PathLike]] = None, **source_options) -> List[int]:
    """Images per class of a split (for generating in its class mix)."""
    data = load_images(source, split, size, root, **source_options)
    if data.labels is None:
        raise DataError(f"{source} ({split}) has no class labels, so it has no class mix: drop --like-split.")
    return torch.bincount(data.labels, minlength=len(data.class_names)).tolist()

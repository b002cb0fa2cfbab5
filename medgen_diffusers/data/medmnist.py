"""MedMNIST's own files: the 2D flags and their class names, the official ``.npz`` found (or downloaded) and
MD5-verified, a split as in-memory tensors (:func:`load_medmnist_tensors`, the training path) or as a
``datasets.Dataset`` (:func:`load_medmnist`, for browsing and ``datasets``-based code)."""

import hashlib
import os
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch

from .images import SPLITS, DataError, ImageData, MedMNISTTensors, _labels_or_notice

ROOT_ENV_VAR = "MEDMNIST_ROOT"
SIZES = (28, 64, 128, 224)
_MD5_CACHE = {}


def medmnist_info():
    """medmnist's INFO table, imported when first needed: ``import medmnist`` imports scikit-learn (~1.2 s), which
    a command reading a folder or a store -- and every data-preparation worker process -- never needs."""
    from medmnist.info import INFO

    return INFO


def available_flags() -> List[str]:
    """The 2D MedMNIST datasets (3D volumes are not images a 2D UNet can learn)."""
    return sorted(flag for flag in medmnist_info() if not flag.endswith("3d"))


def _check_request(flag: str, split: str, size: int) -> None:
    if flag not in available_flags():
        raise ValueError(f"Unknown MedMNIST flag {flag!r}. Valid 2D flags: {', '.join(available_flags())}.")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}. Valid splits: {', '.join(SPLITS)}.")
    if size not in SIZES:
        raise ValueError(f"Unsupported size {size!r}. Valid sizes: {', '.join(map(str, SIZES))}.")


def class_names(flag: str = "bloodmnist") -> List[str]:
    """Class names in label order, from ``medmnist.INFO``."""
    if flag not in medmnist_info():
        raise ValueError(f"Unknown MedMNIST flag {flag!r}. Valid 2D flags: {', '.join(available_flags())}.")
    labels = medmnist_info()[flag]["label"]
    return [labels[str(i)] for i in range(len(labels))]


def npz_filename(flag: str, size: int = 28) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def expected_md5(flag: str, size: int = 28) -> str:
    return medmnist_info()[flag]["MD5" if size == 28 else f"MD5_{size}"]


def resolve_root(root: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The data folder: ``root`` if given, else ``$MEDMNIST_ROOT``, else medmnist's default (``~/.medmnist``)."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(ROOT_ENV_VAR):
        return Path(os.environ[ROOT_ENV_VAR]).expanduser()
    from medmnist.info import DEFAULT_ROOT

    return Path(DEFAULT_ROOT).expanduser()


def file_digest(path: Union[str, os.PathLike], algorithm: str = "md5") -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verified_md5(path: Path) -> str:
    # Cache by (path, size, mtime): a 35 MB file is re-hashed only when it changes.
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _MD5_CACHE:
        _MD5_CACHE[key] = file_digest(path, "md5")
    return _MD5_CACHE[key]


def medmnist_path(
    flag: str = "bloodmnist",
    size: int = 28,
    root: Optional[Union[str, os.PathLike]] = None,
    download: bool = True,
) -> Path:
    """Path of the verified official ``.npz``; downloads it through medmnist when missing and ``download``."""
    _check_request(flag, "train", size)
    folder = resolve_root(root)
    path = folder / npz_filename(flag, size)
    if not path.exists() and download:
        folder.mkdir(parents=True, exist_ok=True)
        import medmnist

        dataset_class = getattr(medmnist, medmnist_info()[flag]["python_class"])
        try:
            dataset_class(split="train", download=True, root=str(folder), size=size)
        except Exception as error:  # medmnist raises bare RuntimeErrors for every network failure
            raise DataError(
                f"{path.name} is not in {folder} and downloading it failed ({str(error).strip().splitlines()[0]}). "
                f"Download {medmnist_info()[flag]['url' if size == 28 else f'url_{size}']} by hand into {folder}, "
                f"or point root= / ${ROOT_ENV_VAR} at the folder that holds it."
            ) from None
    if not path.exists():
        source = "root=" if root is not None else f"${ROOT_ENV_VAR}" if os.environ.get(ROOT_ENV_VAR) else "default"
        raise DataError(
            f"{path.name} was not found in {folder} (the {source} data folder) and download=False. Pass root= or "
            f"set ${ROOT_ENV_VAR} to the folder that holds it, or allow download=True with internet."
        )
    actual, expected = _verified_md5(path), expected_md5(flag, size)
    if actual != expected:
        raise DataError(
            f"{path} has MD5 {actual} but the official {path.name} has MD5 {expected}: the file is truncated or "
            f"corrupt (it was left untouched). Delete it and download it again."
        )
    return path


def _read_split(path: Path, split: str) -> Tuple[np.ndarray, np.ndarray]:
    with np.load(path) as npz:
        if f"{split}_images" not in npz.files:
            raise DataError(f"{path} has no '{split}_images' array (arrays: {', '.join(npz.files)}); MedMNIST's layout "
                            "is train_images/train_labels, val_..., test_....")
        images = npz[f"{split}_images"]
        labels = npz[f"{split}_labels"] if f"{split}_labels" in npz.files else None
    if images.ndim == 3:  # grayscale datasets store (N, H, W)
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
        raise DataError(f"{path}: '{split}_images' must be uint8 (N, H, W) or (N, H, W, 1|3); got {images.dtype} "
                        f"{images.shape}.")
    if labels is not None:
        labels = labels.reshape(len(labels), -1)
        if len(labels) != len(images):
            raise DataError(f"{path}: {len(images)} {split} images but {len(labels)} labels.")
    return images, labels


def load_medmnist_tensors(
    flag: str = "bloodmnist",
    split: str = "train",
    size: int = 28,
    root: Optional[Union[str, os.PathLike]] = None,
    download: bool = True,
) -> MedMNISTTensors:
    """A split as in-memory uint8 tensors, channels first (the fast path used for training)."""
    _check_request(flag, split, size)
    path = medmnist_path(flag, size, root, download)
    images, labels = _read_split(path, split)
    labels, names, notice = _labels_or_notice(labels, class_names(flag), flag)
    return ImageData(images=torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
                     labels=None if labels is None else torch.from_numpy(labels), class_names=names, flag=flag,
                     split=split, md5=_verified_md5(path), notice=notice)


def load_medmnist(
    flag: str = "bloodmnist",
    split: str = "train",
    size: int = 28,
    root: Optional[Union[str, os.PathLike]] = None,
    download: bool = True,
):
    """A split as a ``datasets.Dataset`` with columns ``image`` (``Image``) and ``label`` (``ClassLabel``; for
    multi-label sets a sequence of 0/1 per finding)."""
    import datasets

    _check_request(flag, split, size)
    path = medmnist_path(flag, size, root, download)
    images, labels = _read_split(path, split)
    if images.shape[-1] == 1:
        images = images[..., 0]
    if labels.shape[1] == 1:
        label_feature, labels = datasets.ClassLabel(names=class_names(flag)), labels[:, 0]
    else:  # multi-label sets (ChestMNIST): one 0/1 entry per finding
        label_feature = datasets.Sequence(datasets.Value("uint8"), length=labels.shape[1])
    features = datasets.Features({"image": datasets.Image(), "label": label_feature})
    return datasets.Dataset.from_dict({"image": list(images), "label": labels.tolist()}, features=features)

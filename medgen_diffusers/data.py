"""MedMNIST 2D data: find (or download) the official ``.npz``, verify its MD5, and serve it two ways.

* :func:`load_medmnist` returns a ``datasets.Dataset`` with an ``Image`` and a ``ClassLabel`` column: the view
  for browsing, sharing and any ``datasets``-based code.
* :func:`load_medmnist_tensors` returns uint8 tensors held in memory: the training path, with
  :func:`augment_dihedral` doing flips and 90° rotations as batched tensor ops (cell images have no
  canonical orientation), so training is never data-bound.
"""

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple, Union

import medmnist
import numpy as np
import torch
from medmnist.info import DEFAULT_ROOT, INFO

ROOT_ENV_VAR = "MEDMNIST_ROOT"
SPLITS = ("train", "val", "test")
SIZES = (28, 64, 128, 224)
_MD5_CACHE = {}


class DataError(RuntimeError):
    """A MedMNIST file is missing, corrupt or not what was asked for."""


def available_flags() -> List[str]:
    """The 2D MedMNIST datasets (3D volumes are not images a 2D UNet can learn)."""
    return sorted(flag for flag in INFO if not flag.endswith("3d"))


def _check_request(flag: str, split: str, size: int) -> None:
    if flag not in available_flags():
        raise ValueError(f"Unknown MedMNIST flag {flag!r}. Valid 2D flags: {', '.join(available_flags())}.")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}. Valid splits: {', '.join(SPLITS)}.")
    if size not in SIZES:
        raise ValueError(f"Unsupported size {size!r}. Valid sizes: {', '.join(map(str, SIZES))}.")


def class_names(flag: str = "bloodmnist") -> List[str]:
    """Class names in label order, from ``medmnist.INFO``."""
    if flag not in INFO:
        raise ValueError(f"Unknown MedMNIST flag {flag!r}. Valid 2D flags: {', '.join(available_flags())}.")
    labels = INFO[flag]["label"]
    return [labels[str(i)] for i in range(len(labels))]


def npz_filename(flag: str, size: int = 28) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def expected_md5(flag: str, size: int = 28) -> str:
    return INFO[flag]["MD5" if size == 28 else f"MD5_{size}"]


def resolve_root(root: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The data folder: ``root`` if given, else ``$MEDMNIST_ROOT``, else medmnist's default (``~/.medmnist``)."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(ROOT_ENV_VAR):
        return Path(os.environ[ROOT_ENV_VAR]).expanduser()
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
        dataset_class = getattr(medmnist, INFO[flag]["python_class"])
        try:
            dataset_class(split="train", download=True, root=str(folder), size=size)
        except Exception as error:  # medmnist raises bare RuntimeErrors for every network failure
            raise DataError(
                f"{path.name} is not in {folder} and downloading it failed ({str(error).strip().splitlines()[0]}). "
                f"Download {INFO[flag]['url' if size == 28 else f'url_{size}']} by hand into {folder}, "
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


@dataclass
class MedMNISTTensors:
    """One split held in memory: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: List[str]
    flag: str
    split: str
    md5: str

    def __len__(self) -> int:
        return len(self.labels)


def _read_split(path: Path, split: str) -> Tuple[np.ndarray, np.ndarray]:
    with np.load(path) as npz:
        images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
    if images.ndim == 3:  # grayscale datasets store (N, H, W)
        images = images[..., None]
    return images, labels.reshape(len(labels), -1)[:, 0]


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
    return MedMNISTTensors(
        images=torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
        labels=torch.from_numpy(labels.astype(np.int64)),
        class_names=class_names(flag),
        flag=flag,
        split=split,
        md5=_verified_md5(path),
    )


def class_counts(flag: str = "bloodmnist", split: str = "train", size: int = 28,
                 root: Optional[Union[str, os.PathLike]] = None) -> List[int]:
    """Images per class of a split (for generating in its class mix)."""
    data = load_medmnist_tensors(flag, split, size, root)
    return torch.bincount(data.labels, minlength=len(data.class_names)).tolist()


def load_medmnist(
    flag: str = "bloodmnist",
    split: str = "train",
    size: int = 28,
    root: Optional[Union[str, os.PathLike]] = None,
    download: bool = True,
):
    """A split as a ``datasets.Dataset`` with columns ``image`` (``Image``) and ``label`` (``ClassLabel``)."""
    import datasets

    _check_request(flag, split, size)
    path = medmnist_path(flag, size, root, download)
    images, labels = _read_split(path, split)
    if images.shape[-1] == 1:
        images = images[..., 0]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=class_names(flag))}
    )
    return datasets.Dataset.from_dict({"image": list(images), "label": labels.tolist()}, features=features)


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the range diffusion models are trained in."""
    return images_uint8.float().div_(127.5).sub_(1.0)


def augment_dihedral(images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random element of the dihedral group D4 (4 rotations x optional flip) per image, as tensor ops.

    ``images`` is (N, C, H, W) with H == W. Valid for blood-cell smears, which have no preferred orientation.
    """
    n = images.shape[0]
    choice = torch.randint(0, 8, (n,), generator=generator, device=images.device)
    out = torch.empty_like(images)
    for k in range(4):
        for flip in (0, 1):
            mask = choice == 2 * k + flip
            if mask.any():
                selected = images[mask]
                if flip:
                    selected = selected.flip(-1)
                out[mask] = torch.rot90(selected, k, dims=(-2, -1))
    return out

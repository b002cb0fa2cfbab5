"""Training and reference images from any source, as in-memory uint8 tensors: :func:`load_images`.

Sources (``--dataset``): a MedMNIST 2D flag (any set, sizes 28/64/128/224; the official file, MD5-verified), a folder
of images (one sub-folder per class, or none = unlabeled; optional ``train/``, ``val/``, ``test/`` split folders), a
MedMNIST-layout ``.npz`` of your own, or a Hugging Face ``datasets`` dataset (a ``save_to_disk`` folder or a Hub
name). All are decoded once into the same :class:`ImageData`.

For MedMNIST itself:

* :func:`load_medmnist` returns a ``datasets.Dataset`` with an ``Image`` and a ``ClassLabel`` column: the view
  for browsing, sharing and any ``datasets``-based code.
* :func:`load_medmnist_tensors` returns uint8 tensors held in memory: the training path, with
  :func:`augment_dihedral` doing flips and 90° rotations as batched tensor ops (cell images have no
  canonical orientation), so training is never data-bound.
"""

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple, Union

import medmnist
import numpy as np
import torch
from medmnist.info import DEFAULT_ROOT, INFO

from .arguments import AUGMENTATIONS

ROOT_ENV_VAR = "MEDMNIST_ROOT"
SPLITS = ("train", "val", "test")
SIZES = (28, 64, 128, 224)
_MD5_CACHE = {}


class DataError(ValueError):
    """A data source is missing, corrupt or not what was asked for (bad input: the CLI's exit code 2)."""


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
class ImageData:
    """One split held in memory: ``images`` uint8 (N, C, H, W) with C = 1 or 3; ``labels`` int64 (N,) or None
    (unlabeled or multi-label data); ``md5`` identifies the source's content (the official file's MD5 for MedMNIST,
    a checksum of the decoded pixels and labels otherwise) and keys every cache."""

    images: torch.Tensor
    labels: Optional[torch.Tensor]
    class_names: Optional[List[str]]
    flag: str
    split: str
    md5: str
    notice: Optional[str] = None  # something the user should know (e.g. multi-label data trained unconditionally)
    groups: Optional[np.ndarray] = None  # patient pseudonym per image (DICOM/NIfTI: medical.py), else None
    intensity: Optional[dict] = None  # how stored values became 8-bit (window / percentiles), for medical sources
    patient_rule: Optional[str] = None  # how each image's patient was found (medical_folders.PATIENT_RULES, a column, ...)
    # --bit_depth 16: the images as uint16 (N, C, H, W), the full range the model trains on; ``images`` is then their
    # 8-bit view (round(v / 257), what an 8-bit read gives), for everything that compares 8-bit images.
    images16: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return len(self.images)


MedMNISTTensors = ImageData  # the earlier name


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


def _labels_or_notice(labels: Optional[np.ndarray], names: Optional[List[str]], source: str):
    """(int64 labels or None, class names or None, notice): multi-label sets never lose labels silently."""
    if labels is None:
        return None, None, None
    if labels.shape[1] > 1:
        return None, None, (f"{source} has {labels.shape[1]} labels per image (multi-label): it is used unlabeled "
                            "(unconditional); class conditioning needs exactly one class per image.")
    labels = labels[:, 0].astype(np.int64)
    if names is None:
        names = [f"class_{i}" for i in range(int(labels.max()) + 1)]
    return labels, names, None


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


def class_counts(source: str = "bloodmnist", split: str = "train", size: Optional[int] = None,
                 root: Optional[Union[str, os.PathLike]] = None, **source_options) -> List[int]:
    """Images per class of a split (for generating in its class mix)."""
    data = load_images(source, split, size, root, **source_options)
    if data.labels is None:
        raise DataError(f"{source} ({split}) has no class labels, so it has no class mix: drop --like-split.")
    return torch.bincount(data.labels, minlength=len(data.class_names)).tolist()


# ----------------------------------------------------------------------------------------------------------------
# Any source: MedMNIST flag, image folder, .npz, datasets dataset

_LOADED = {}  # (source, split, size, options) -> ImageData: a split is decoded once per process


def load_images(source: str = "bloodmnist", split: str = "train", size: Optional[int] = None,
                root: Optional[Union[str, os.PathLike]] = None, download: bool = True,
                image_column: str = "image", label_column: Optional[str] = "label", window=None,
                slice_axis: str = "axial", slice_range: Optional[str] = None, split_by: Optional[str] = None,
                split_seed: int = 0, patient_column: Optional[str] = None,
                patient_regex: Optional[str] = None, crop: Optional[str] = None, prepare: bool = False,
                max_train_samples: Optional[int] = None, bit_depth: Optional[int] = None) -> ImageData:
    """One split of any source as :class:`ImageData` (see the module docstring for the sources).

    ``size``: resize to ``size`` x ``size`` (antialiased) when the data has another size; None keeps the data's
    size (MedMNIST: 28). ``root``: the MedMNIST data folder. ``image_column``/``label_column``: for ``datasets``
    sources (``label_column=None``: unlabeled). ``window``, ``slice_axis``, ``slice_range``, ``split_by``,
    ``split_seed``: for DICOM / NIfTI folders (:mod:`medgen_diffusers.medical`); ``patient_column`` (with
    ``split_by``) for ``datasets`` sources that name each image's patient; ``patient_regex`` finds the patient in
    a DICOM/NIfTI file's path instead of the kind's own rule. ``crop``: how non-square images of a folder or
    DICOM/NIfTI source become square (``center``, the default; ``pad``; ``resize``). ``max_train_samples``: the
    train split is a seeded random subset of that many images (:func:`kept_rows`), chosen before anything is
    decoded -- only those are decoded, stored and checksummed; the other splits are whole. ``bit_depth=16``
    (folders of 16-bit images, DICOM, NIfTI, ``datasets``): ``images16`` holds uint16 images, windowed or scaled to
    the full 0..65535 range, and the checksum is theirs; ``images`` is their 8-bit view. A local folder is read from its prepared store in the
    cache when one is there and its files have not changed (:mod:`medgen_diffusers.store`); ``prepare=True``
    (training) makes that store first.
    """
    source = str(source)
    from .store import source_signature

    # A local folder's files (names, sizes, mtimes) are part of the key: a folder changed on disk is read again.
    signature = source_signature(source) if Path(source).expanduser().is_dir() else None
    key = (source, split, size, str(root), image_column, label_column, str(window), slice_axis, slice_range,
           split_by, split_seed, patient_column, patient_regex, crop, signature, prepare, max_train_samples,
           bit_depth)
    if key in _LOADED:
        return _LOADED[key]
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}. Valid splits: {', '.join(SPLITS)}.")
    from . import sources  # folders, npz and datasets (sources.py); DICOM/NIfTI folders (medical_folders.py)

    path = Path(source).expanduser()
    from .store import cached_store, is_store, load_store

    store = path if path.is_dir() and is_store(path) else cached_store(
        source, size, root, image_column=image_column, label_column=label_column, window=window,
        slice_axis=slice_axis, slice_range=slice_range, split_by=split_by, split_seed=split_seed,
        patient_column=patient_column, patient_regex=patient_regex, crop=crop, create=prepare, signature=signature,
        max_train_samples=max_train_samples, bit_depth=None if bit_depth in (None, 8) else bit_depth)
    limit = max_train_samples if split == "train" else None
    if bit_depth not in (None, 8, 16):
        raise DataError(f"--bit_depth must be 8 or 16; got {bit_depth}.")
    sixteen = bit_depth == 16
    if sixteen and store is None and (source in INFO or path.suffix == ".npz"):
        raise DataError(f"--bit_depth 16: {source} holds 8-bit images (MedMNIST's layout is uint8), so 16 bits "
                        "would add nothing: drop --bit_depth.")
    if store is not None:  # a prepared store (given, or the cache's for this folder): memory-mapped, not decoded
        data = load_store(store, split, size)
    elif source in INFO:
        data = keep_subset(load_medmnist_tensors(source, split, size or 28, root, download), limit, rehash=False)
    elif path.suffix == ".npz":
        data = keep_subset(sources.load_npz(path, split), limit)
    elif path.is_dir() and any((path / name).is_file() for name in ("dataset_info.json", "dataset_dict.json",
                                                                      "state.json")):
        data = sources.load_datasets(str(path), split, image_column, label_column, True, patient_column, split_by,
                              split_seed, limit, bit_depth or 8)
    elif path.is_dir():
        from .medical_folders import load_medical, medical_kind

        kind = medical_kind(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))[:500])
        if kind is not None:
            data = load_medical(path, split, kind, window, slice_axis, slice_range, split_by, split_seed, size,
                                patient_regex, crop, max_train_samples, bit_depth or 8)
        elif split_by is not None:
            raise DataError(f"--split_by {split_by} needs a patient per image: DICOM (PatientID) or NIfTI (one "
                            f"volume per patient) files; {path} holds ordinary images.")
        elif window is not None or slice_range is not None or patient_regex is not None:
            raise DataError(f"--window / --slice_range / --patient_regex apply to DICOM and NIfTI folders; {path} "
                            "holds ordinary images (8/16-bit files are scaled by their bit depth): drop them.")
        else:
            data = sources.load_folder(path, split, size, crop, limit, bit_depth or 8)
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not source.startswith("."):  # a Hub name, owner/name
        data = sources.load_datasets(source, split, image_column, label_column, False, patient_column, split_by,
                              split_seed, limit, bit_depth or 8)
    elif source.startswith((".", "/", "~")) or "/" in source or os.sep in source or path.suffix:
        raise DataError(f"--dataset {source}: no such file or folder ({path.resolve()} does not exist). Check the "
                        "path; a MedMNIST data set is named by its flag, e.g. bloodmnist.")
    else:
        raise ValueError(f"Unknown dataset {source!r}: pass a MedMNIST 2D flag ({', '.join(available_flags())}), "
                         "a folder of images, a MedMNIST-layout .npz, or a datasets dataset (save_to_disk folder or "
                         "Hub name).")
    if size is not None and data.images.shape[-1] != size:
        data.images = resize_images(data.images, size)
    if sixteen and data.images16 is None and data.images.dtype != torch.uint16:
        raise DataError(f"{source} is a store of 8-bit images: prepare one with --bit_depth 16 (medgen prepare "
                        "SOURCE --bit-depth 16 --out NEW).")
    if sixteen and data.images16 is None:  # decoded at 16 bits: keep them, and their 8-bit view for comparisons
        if data.images.shape[1] != 1:
            raise DataError(f"--bit_depth 16 is for grayscale images; {source} has {data.images.shape[1]} channels "
                            "(16-bit colour PNGs cannot be written back): drop --bit_depth.")
        data.images16, data.images = data.images, eight_bit(data.images)
    _LOADED[key] = data
    return data


def kept_rows(count: int, max_train_samples: Optional[int]) -> Optional[np.ndarray]:
    """Which of a train split's ``count`` items (rows, files) ``--max_train_samples`` keeps: all (None), or a seeded
    random subset of that many, in the source's own order. Random, not the first N: a folder's files are sorted by
    class, so its first N would be its first classes only."""
    if max_train_samples is None or max_train_samples >= count:
        return None
    if max_train_samples < 1:
        raise DataError(f"--max_train_samples must be >= 1; got {max_train_samples}.")
    return np.sort(np.random.default_rng(0).choice(count, max_train_samples, replace=False))


def keep_subset(data: ImageData, max_train_samples: Optional[int], rehash: bool = True) -> ImageData:
    """An in-memory split cut to :func:`kept_rows` (sources read as whole arrays: MedMNIST, .npz). ``rehash``: the
    checksum of the kept pixels (an official MedMNIST file keeps its own MD5: it names the file the subset is of)."""
    rows = kept_rows(len(data), max_train_samples)
    if rows is None:
        return data
    index = torch.from_numpy(rows)
    labels = None if data.labels is None else data.labels[index]
    kept = ImageData(images=data.images[index], labels=labels, class_names=data.class_names, flag=data.flag,
                     split=data.split, md5=data.md5, notice=data.notice,
                     groups=None if data.groups is None else data.groups[rows], intensity=data.intensity,
                     patient_rule=data.patient_rule)
    if rehash:
        kept.md5 = _content_digest(kept.images.permute(0, 2, 3, 1).numpy(),
                                   None if labels is None else labels.numpy()[:, None], data.class_names)
    return kept


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 or uint16 (N, C, H, W) -> the same dtype (N, C, size, size), bilinear with antialiasing (clean for
    down-scaling)."""
    top = 65535 if images.dtype == torch.uint16 else 255
    out = []
    for start in range(0, len(images), 1024):
        batch = images[start:start + 1024].float()
        batch = torch.nn.functional.interpolate(batch, size=(size, size), mode="bilinear", antialias=True,
                                                align_corners=False)
        out.append(batch.round().clamp(0, top).to(images.dtype))
    return torch.cat(out)


def eight_bit(images16: torch.Tensor) -> torch.Tensor:
    """uint16 -> uint8 as an 8-bit read of the same source: round(v / 257) (v / 257 is never halfway)."""
    return images16.float().div_(257).round_().to(torch.uint8)


def _content_digest(images: np.ndarray, labels: Optional[np.ndarray], names=None) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    if labels is not None:
        digest.update(np.ascontiguousarray(labels).tobytes())
    if names:
        digest.update("\n".join(names).encode())
    return digest.hexdigest()[:32]


def _image_data(images_nhwc: np.ndarray, labels, names, source: str, split: str) -> ImageData:
    labels, names, notice = _labels_or_notice(labels, names, source)
    return ImageData(images=torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))),
                     labels=None if labels is None else torch.from_numpy(labels), class_names=names,
                     flag=Path(source).name or source, split=split,
                     md5=_content_digest(images_nhwc, labels, names), notice=notice)


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


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] (or uint16 [0, 65535], --bit_depth 16) -> float [-1, 1], the range diffusion models are
    trained in."""
    return images.float().div_(32767.5 if images.dtype == torch.uint16 else 127.5).sub_(1.0)


# Which flips/rotations keep each MedMNIST 2D set's labels true (train_unconditional.py --augment auto):
# "dihedral" = random flips and 90-degree rotations, for images with no canonical orientation (cells, tissue,
# skin lesions); "none" where orientation carries meaning: chest X-rays, OCT and breast ultrasound have a fixed
# up/down and left/right, fundus photographs show the left or right eye, and OrganA/C/SMNIST have left/right organ
# classes (a flip turns "kidney-left" into "kidney-right"). A user's own data: none unless asked for.
AUGMENTATION_POLICY = {
    "bloodmnist": "dihedral", "pathmnist": "dihedral", "dermamnist": "dihedral", "tissuemnist": "dihedral",
    "chestmnist": "none", "pneumoniamnist": "none", "octmnist": "none", "breastmnist": "none",
    "retinamnist": "none", "organamnist": "none", "organcmnist": "none", "organsmnist": "none",
}


def clean_batch(batch: torch.Tensor, augmentation: str, latent_scale: Optional[float] = None) -> torch.Tensor:
    """What a UNet learns to make from a training batch: images (uint8 -> [-1, 1], augmented), or -- latent
    diffusion -- the cached latents scaled to unit variance by ``latent_scale``."""
    if latent_scale is not None:
        return batch.float() * latent_scale
    return augment(to_model_range(batch), augmentation)


def resolve_augmentation(requested: Optional[str], dataset: str) -> Tuple[str, str]:
    """(augmentation, why) for ``--augment`` (auto/None: the data's documented policy, none for own data)."""
    if requested in (None, "auto"):
        if dataset in AUGMENTATION_POLICY:
            return AUGMENTATION_POLICY[dataset], f"MedMNIST policy for {dataset} (data.AUGMENTATION_POLICY)"
        return "none", "own data: no augmentation unless asked for (--augment dihedral)"
    if requested is True or requested == "true":  # run_config.json of older runs: a boolean
        return "dihedral", "recorded as augment=true"
    if requested is False or requested == "false":
        return "none", "recorded as augment=false"
    if requested not in AUGMENTATIONS:
        raise ValueError(f"--augment {requested!r}: choose auto, {', '.join(AUGMENTATIONS)}.")
    return requested, "asked for (--augment)"


def augment(images: torch.Tensor, augmentation: str, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    return augment_dihedral(images, generator) if augmentation == "dihedral" else images


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

"""The data every command shares, whatever the source: :class:`ImageData` (one split: uint8 images, labels, class
names, a content checksum, patients), its errors, and what is done to a batch of it -- the subset
``--max_train_samples`` keeps, resizing, the 16-bit view, the model's [-1, 1] range and augmentation.

The bottom layer of :mod:`medgen_diffusers.data`: the readers (``medmnist``, ``sources``, ``medical_folders``),
the store and :func:`~medgen_diffusers.data.load_images` build on it; it imports none of them.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..arguments import AUGMENTATIONS

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """A data source is missing, corrupt or not what was asked for (bad input: the CLI's exit code 2)."""


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


CROPS = ("center", "pad", "resize")  # --crop: how a non-square image becomes square (default center)


def square(array: np.ndarray, crop: Optional[str]) -> np.ndarray:
    """A non-square (H, W, C) image made square, keeping its aspect ratio: ``center`` keeps the central square (the
    default), ``pad`` adds zero (black) borders around the whole image; ``resize`` leaves it as it is, to be stretched
    to N x N by the resize that follows (what every non-square image got before --crop existed)."""
    crop = crop or "center"
    if crop not in CROPS:
        raise DataError(f"--crop {crop!r}: choose {', '.join(CROPS)}.")
    height, width = array.shape[:2]
    if height == width or crop == "resize":
        return array
    if crop == "center":
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        return array[top:top + side, left:left + side]
    side = max(height, width)
    out = np.zeros((side, side, array.shape[2]), dtype=array.dtype)
    top, left = (side - height) // 2, (side - width) // 2
    out[top:top + height, left:left + width] = array
    return out


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

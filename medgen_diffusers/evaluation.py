"""FID and KID for generated MedMNIST images, on two protocols, with the real-vs-real floor beside them.

* **standard** -- clean-fid's "clean" protocol: each image resized to 299x299 with clean-fid's own PIL bicubic
  resizer (``build_resizer("clean")``), the 2048-d pool3 features of the FID Inception network (NVIDIA's
  TorchScript port of the 2015-12-05 TF weights), FID with clean-fid's ``fid_from_feats`` and KID with clean-fid's
  estimator of ``kernel_distance`` on subsets of up to 1,000 (mean +- std over 100 subsets, sampled and spread as
  torchmetrics' ``KernelInceptionDistance`` does).
* **seed** -- the protocol of the reference notebook (torchmetrics ``FrechetInceptionDistance(feature=64)`` /
  ``KernelInceptionDistance(feature=64, subset_size=50)``): uint8 images resized to 299 with torch-fidelity's
  TF1-compatible bilinear resize, the same network's 64 channels after its first max-pool, averaged over space.
  KID64 is reported as torchmetrics returns it (no rescaling): the notebook's "4.141 +- 0.343" is on that scale
  (a model with FID64 ~4 scores KID64 ~2 here; x10^3 would put the real-vs-real floor's subset noise, +-0.03,
  far above the notebook's +-0.0003).
* **floor** -- the same metrics between an equally large random subset of the *train* split and the evaluated
  split: what a perfect generator would score at this N. Real statistics only ever come from the chosen split.

Real features are cached on disk per dataset / split / size / protocol / subset, keyed by the data's MD5 and the
network's checksum (``$MEDGEN_CACHE``, default ``~/.cache/medgen-diffusers``).
"""

import hashlib
import os
import re
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
from cleanfid.fid import fid_from_feats

from .data import DataError, DataSource
from .generation import generate_images, labels_like_split
from .inception import PROTOCOLS, EvaluationError, InceptionFeatures, check_images  # the network and its features

# The reference notebook's reported numbers (torchmetrics, 64-d features, contaminated real statistics).
SEED_REFERENCE = {"fid64": 5.039, "kid64": 4.141, "kid64_std": 0.343}


# ----------------------------------------------------------------------------------------------------------------
# Metrics (clean-fid's math)

def fid(real_features: np.ndarray, fake_features: np.ndarray) -> float:
    """Frechet distance of the two feature sets' Gaussians: clean-fid's ``fid_from_feats`` when both sets have at
    least as many images as feature dimensions; otherwise the same quantity computed exactly in the sets' own span.

    With N < d images a covariance has rank <= N - 1, and ``scipy.linalg.sqrtm`` of the d x d product is both slow
    (~3-12 s at d = 2048 on 2 CPU cores, whatever N) and ill-conditioned (a set scored against itself gives -3e-4,
    not 0). Writing each covariance as ``A.T @ A`` (A: centred features / sqrt(N - 1)), the nonzero eigenvalues of
    ``Sigma_1 Sigma_2`` are the squared singular values of the N1 x N2 matrix ``A @ B.T``, so
    ``Tr sqrt(Sigma_1 Sigma_2)`` is the sum of those singular values: the same FID (agreeing with clean-fid to ~1e-7
    relative, tests/test_evaluation.py), in milliseconds. This is what makes per-class FID affordable.
    """
    real = np.asarray(real_features, dtype=np.float64)
    fake = np.asarray(fake_features, dtype=np.float64)
    if min(len(real), len(fake)) < 2:
        raise EvaluationError(f"FID needs at least 2 images on each side; got {len(real)} real, {len(fake)} generated.")
    if min(len(real), len(fake)) >= real.shape[1]:
        return float(fid_from_feats(real_features, fake_features))
    a = (real - real.mean(0)) / np.sqrt(len(real) - 1)
    b = (fake - fake.mean(0)) / np.sqrt(len(fake) - 1)
    trace_sqrt = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    mean_term = np.sum((real.mean(0) - fake.mean(0)) ** 2)
    return float(mean_term + np.sum(a * a) + np.sum(b * b) - 2 * trace_sqrt)


def kid(real_features: np.ndarray, fake_features: np.ndarray, subset_size: int = 1000, num_subsets: int = 100,
        seed: int = 0) -> Dict[str, Optional[float]]:
    """KID mean and spread over ``num_subsets`` random subsets, the way torchmetrics' ``KernelInceptionDistance``
    computes it: each subset pairs ``subset_size`` real and ``subset_size`` generated features drawn with
    ``torch.randperm`` (torch generator seeded with ``seed``), scored with the unbiased polynomial-kernel MMD (the
    estimator of clean-fid's ``kernel_distance``); the spread is ``std(unbiased=False)``, torchmetrics' ``kid_std``.

    When a set is smaller than ``subset_size``, the subset is that whole set (as clean-fid does); when both are, every
    subset is the same and one is computed, with no spread (``std`` None): it would mean nothing.
    """
    real = torch.from_numpy(np.asarray(real_features, dtype=np.float64))
    fake = torch.from_numpy(np.asarray(fake_features, dtype=np.float64))
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise EvaluationError(f"KID needs at least 2 images on each side; got {len(real)} real, {len(fake)} generated.")
    whole = size == len(real) == len(fake)
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(1 if whole else num_subsets):
        x = real[torch.randperm(len(real), generator=generator)[:size]]
        y = fake[torch.randperm(len(fake), generator=generator)[:size]]
        values.append(_polynomial_mmd(x, y))
    values = torch.stack(values)
    return {"mean": float(values.mean()), "std": None if whole else float(values.std(unbiased=False))}


def _polynomial_mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 with the kernel k(a, b) = (a.b / d + 1)^3 (Binkowski et al. 2018; clean-fid, torchmetrics)."""
    d, m = x.shape[1], x.shape[0]
    k_xx, k_yy, k_xy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return within - 2 * k_xy.sum() / m**2


NEAREST_K = 5  # Naeem et al. 2020's k for density/coverage; the same k-NN balls give precision/recall
PRDC_CAP = 10_000  # images per side for precision/recall/density/coverage: 3 N x N float32 matrices, ~1.2 GB here


def fidelity_and_diversity(real_features: np.ndarray, fake_features: np.ndarray, k: int = NEAREST_K) -> Dict:
    """Precision and recall (Kynkaenniemi et al. 2019) and density and coverage (Naeem et al. 2020) on the same
    features, computed by the ``prdc`` package (the authors' code; its progress print is silenced). FID mixes
    fidelity and diversity into one number; these tell them apart: precision/density -- are generated images
    realistic; recall/coverage -- is all of the real data's variety generated. prdc's k-NN radii need k + 2 images
    on each side (it asks for the (k+1)-th smallest distance of each row, itself included): below that, the reason
    is recorded instead of the numbers."""
    import contextlib
    import io

    from prdc import compute_prdc

    notes = {}
    for name, features in (("real", real_features), ("generated", fake_features)):
        if len(features) > PRDC_CAP:  # prdc builds N x N distance matrices: a seeded subset, recorded
            keep = np.sort(np.random.default_rng(0).choice(len(features), PRDC_CAP, replace=False))
            notes[f"prdc_{name}_subset"] = f"{PRDC_CAP} of {len(features)} (seeded; prdc's N x N matrices)"
            if name == "real":
                real_features = real_features[keep]
            else:
                fake_features = fake_features[keep]
    if min(len(real_features), len(fake_features)) < k + 2:
        return {"prdc_skipped": f"precision/recall/density/coverage need at least {k + 2} images on each side (k = "
                                f"{k} nearest neighbours); here {len(fake_features)} generated vs {len(real_features)} "
                                "real"}
    with contextlib.redirect_stdout(io.StringIO()):
        values = compute_prdc(np.asarray(real_features, np.float32), np.asarray(fake_features, np.float32), k)
    return {**{name: float(value) for name, value in values.items()}, **notes}


def scores(real: Dict[str, np.ndarray], fake: Dict[str, np.ndarray], seed: int = 0) -> Dict[str, Dict[str, float]]:
    """Both protocols' numbers from per-protocol feature arrays. FID is biased upward at small N (compare it with
    the floor at the same N); KID is unbiased at any N."""
    out = {}
    if "standard" in real:
        k = kid(real["standard"], fake["standard"], subset_size=1000, seed=seed)
        out["standard"] = {"fid": fid(real["standard"], fake["standard"]), "kid": k["mean"], "kid_std": k["std"],
                           **fidelity_and_diversity(real["standard"], fake["standard"])}
    if "seed" in real:
        k = kid(real["seed"], fake["seed"], subset_size=50, seed=seed)
        out["seed"] = {"fid64": fid(real["seed"], fake["seed"]), "kid64": k["mean"], "kid64_std": k["std"]}
    return out


# ----------------------------------------------------------------------------------------------------------------
# Real features, cached

def cache_dir() -> Path:
    return Path(os.environ.get("MEDGEN_CACHE", Path.home() / ".cache" / "medgen-diffusers")) / "features"


class RealFeatures:
    """Features of a real split (or of a seeded random subset of it), cached on disk."""

    def __init__(self, extractor: InceptionFeatures, data: Union[DataSource, str] = "bloodmnist",
                 size: Optional[int] = None):
        self.extractor, self.source, self.size = extractor, DataSource.of(data), size

    def split(self, name: str):
        return self.source.load(name, self.size)

    def subset_indices(self, split: str, num: Optional[int], seed: int = 0) -> np.ndarray:
        n = len(self.split(split))
        if num is None or num == n:
            return np.arange(n)
        if num > n:
            raise EvaluationError(f"Asked for {num} real {split} images but the split has {n}; use --num-samples <= {n}.")
        return np.sort(np.random.default_rng(seed).choice(n, num, replace=False))

    def get(self, split: str, protocol: str, num: Optional[int] = None, seed: int = 0, progress: bool = False,
            indices: Optional[np.ndarray] = None):
        """(features, labels) for ``num`` images of ``split`` (all when None), drawn with ``seed`` -- or for exactly
        the images at ``indices``."""
        data = self.split(split)
        if indices is None:
            indices = self.subset_indices(split, num, seed)
            subset = "all" if len(indices) == len(data) else f"n{len(indices)}-seed{seed}"
        else:
            indices = np.asarray(indices)
            subset = ("all" if np.array_equal(indices, np.arange(len(data))) else
                      f"n{len(indices)}-idx{hashlib.sha256(indices.astype(np.int64).tobytes()).hexdigest()[:10]}")
        # Keyed by the source's own checksum (file MD5 / decoded content), so another folder or npz never hits it.
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", data.flag)[:40]
        key = (f"{name}_{data.images.shape[-1]}_{split}_{protocol}_{subset}_data-{data.md5[:10]}"
               f"_net-{self.extractor.sha256[:10]}")
        path = cache_dir() / f"{key}.npy"
        labels = None if data.labels is None else data.labels.numpy()[indices]
        if path.is_file():
            features = np.load(path)
            if len(features) == len(indices):
                return features, labels
        images = data.images.numpy()[indices].transpose(0, 2, 3, 1)
        features = self.extractor.features(images, protocol, progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, features)
        tmp.replace(path)  # atomic: a killed run never leaves a truncated cache entry
        return features, labels


# ----------------------------------------------------------------------------------------------------------------
# Evaluation of a set of generated images

def evaluate_images(
    images: np.ndarray,
    labels: Optional[np.ndarray] = None,
    split: str = "test",
    data: Union[DataSource, str] = "bloodmnist",
    size: Optional[int] = None,
    num_real: Optional[int] = None,
    protocols: Sequence[str] = PROTOCOLS,
    floor: bool = True,
    per_class: bool = True,
    extractor: Optional[InceptionFeatures] = None,
    seed: int = 0,
    progress: bool = False,
) -> Dict:
    """All numbers for generated ``images`` (uint8, N x H x W x 3) against the real ``split`` of ``data`` (a
    :class:`~medgen_diffusers.data.DataSource`, or a dataset name / path read with the default options).

    ``labels`` (class indices of the generated images) add class-wise numbers (both protocols, and the standard
    FID's floor per class: that class's images in the floor's train subset). The floor compares ``len(images)``
    random train images with the same real images. ``num_real`` uses a seeded random subset of the split (quick
    checks); leave it None for reportable numbers.
    """
    started = time.perf_counter()
    for protocol in protocols:
        if protocol not in PROTOCOLS:
            raise EvaluationError(f"Unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}.")
    extractor = extractor or InceptionFeatures()
    source = DataSource.of(data)
    dataset = source.dataset
    reals = RealFeatures(extractor, source, size)
    real_split = reals.split(split)
    size = real_split.images.shape[-1]
    images = check_images(images, size)
    n = len(images)
    if real_split.labels is None:
        labels = None  # unlabeled real data: no per-class numbers
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != n:
            raise EvaluationError(f"{n} images but {len(labels)} labels.")
        num_classes = len(real_split.class_names)
        if labels.min() < 0 or labels.max() >= num_classes:
            raise EvaluationError(f"Labels must be class indices 0..{num_classes - 1} of {dataset}; got "
                                  f"{labels.min()}..{labels.max()}. Is this the right --dataset?")

    if floor and n > len(reals.split("train")):  # checked before any feature is computed
        raise EvaluationError(f"The real-vs-real floor needs {n} train images (as many as generated); the train split "
                              f"has {len(reals.split('train'))}: evaluate at most that many (--num-samples) or pass "
                              "--no-floor.")
    real, fake = {}, {}
    for protocol in protocols:
        real[protocol], real_labels = reals.get(split, protocol, num=num_real, seed=seed, progress=progress)
        fake[protocol] = extractor.features(images, protocol, progress)
    result = {
        "dataset": dataset, "split": split, "size": size, "num_real": len(real[protocols[0]]), "num_generated": n,
        **scores(real, fake, seed),
    }
    train, train_labels = {}, None
    if floor:
        for protocol in protocols:
            train[protocol], train_labels = reals.get("train", protocol, num=n, seed=seed, progress=progress)
        result["floor"] = {"num_train": n, **scores(real, train, seed)}
    if labels is not None and per_class and real_labels is not None:
        result["per_class"] = {}
        for index, name in enumerate(real_split.class_names):
            mine, theirs = labels == index, real_labels == index
            if mine.sum() < 2 or theirs.sum() < 2:  # no covariance (or KID pair) from a single image
                continue
            real_class = {p: real[p][theirs] for p in protocols}
            result["per_class"][name] = {
                "num_generated": int(mine.sum()), "num_real": int(theirs.sum()),
                **scores(real_class, {p: fake[p][mine] for p in protocols}, seed),
            }
            # FID at a class's N is far above the whole set's: its floor is the same class's train images, as many
            # as the model side has (with --balanced a rare class has more generated images than the floor's
            # random train subset holds of it, and a floor at a smaller N would understate the gap).
            if train_labels is not None and "standard" in protocols:
                result["per_class"][name].update(class_floor(
                    reals, train["standard"], train_labels, index, int(mine.sum()), real_class["standard"], seed))
    if dataset == "bloodmnist" and size == 28:  # the notebook's numbers are BloodMNIST-28's: no other data's reference
        result["seed_reference"] = dict(SEED_REFERENCE)
    # The file's name and checksum identify the network; a local path would leak into committed/pushed results.
    result["inception"] = {"file": extractor.path.name, "sha256": extractor.sha256}
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    return result


def class_floor(reals: "RealFeatures", subset_features: np.ndarray, subset_labels: np.ndarray, index: int, k: int,
                real_features: np.ndarray, seed: int) -> Dict:
    """The standard FID of ``k`` train images of class ``index`` against that class's real images: the floor
    subset's own images of the class when it holds ``k``, else ``k`` seeded picks of the class from the train
    split (features not cached: a class-sized extra). No floor when the split has fewer than ``k``."""
    in_subset = np.flatnonzero(subset_labels == index)
    if len(in_subset) >= k:
        return {"floor_fid": fid(real_features, subset_features[in_subset[:k]]), "floor_num_train": k}
    train = reals.split("train")
    pool = np.flatnonzero(train.labels.numpy() == index)
    if len(pool) < k:
        return {"floor_note": f"the train split has {len(pool)} images of this class, fewer than the {k} generated: "
                              "no floor at the same N"}
    pick = np.sort(np.random.default_rng(seed + index).choice(pool, k, replace=False))
    features = reals.extractor.features(train.images.numpy()[pick].transpose(0, 2, 3, 1), "standard")
    return {"floor_fid": fid(real_features, features), "floor_num_train": k}


class TrainingEvaluator:
    """Standard-protocol FID/KID of a pipeline's samples during training, against a fixed train subset and the val
    split. Real features are computed once (and cached on disk); each call costs only sampling + fake features."""

    def __init__(self, data: Union[DataSource, str] = "bloodmnist", size: Optional[int] = None,
                 num_samples: int = 256, num_val: Optional[int] = None, num_inference_steps: int = 20, seed: int = 0,
                 device: Union[str, torch.device] = "cpu", conditional: bool = True):
        self.extractor = InceptionFeatures(device=device)  # on the training device
        source = DataSource.of(data)
        reals = RealFeatures(self.extractor, source, size)
        self.real = {"train": reals.get("train", "standard", num=num_samples, seed=seed)[0]}
        try:  # a folder or single datasets dataset may have no val split: then the train subset only
            self.real["val"] = reals.get("val", "standard", num=num_val, seed=seed)[0]
        except DataError:
            pass
        self.labels = labels_like_split(source.class_counts("train", size), num_samples) if conditional else None
        self.num_samples, self.num_inference_steps, self.seed = num_samples, num_inference_steps, seed

    def __call__(self, pipe) -> Dict[str, float]:
        from .models import fast_solver

        fast = type(pipe)(pipe.unet, fast_solver(pipe.scheduler), pipe.config.class_names,
                          vae=getattr(pipe, "vae", None))
        labels = self.labels if pipe.config.class_names and self.labels is not None else None
        images = generate_images(fast, self.num_samples, labels, self.num_inference_steps, seed=self.seed,
                                 progress=False)  # the same images `medgen sample` would write
        fake = self.extractor.standard(images)
        logs = {}
        for split, real in self.real.items():
            logs[f"eval/fid_{split}"] = fid(real, fake)
            logs[f"eval/kid_{split}"] = kid(real, fake, seed=self.seed)["mean"]
        return logs

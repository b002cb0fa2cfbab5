"""Privacy audit of a generative model: does it copy its training images? (``medgen audit``)

* **Nearest neighbours** -- for every synthetic image, the distance to its nearest and second-nearest *training*
  image, in pixel space and in the FID Inception network's pool features; the same for held-out real **test**
  images, which show what "not a copy" looks like. Reported: medians; the **copy rate** (share of synthetic images
  closer to train than the 1st percentile of test-to-train distances; the percentile is taken on one half of the
  test images and the baseline rate measured on the other half, so the baseline is not 1 % by construction); and the
  memorization criterion of Gu et al. 2023 (arXiv 2310.02664): nearest / second-nearest distance < 1/3.
* **Membership inference** -- a loss attack: the model's denoising loss on an image at a few fixed timesteps with
  fixed noise; members (training images) should have lower loss if the model memorized them. ROC AUC (0.5: the
  model reveals nothing about membership) and TPR at 1 % FPR, over all images and per class.
* **Figure** -- the k synthetic images closest to a training image, each beside that training image.
"""

import sys
import time
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from .data import DataSource
from .models import is_edm

MEMORIZATION_RATIO = 1 / 3  # Gu et al.: nearest / second-nearest distance below this = memorized
PIXEL_SIDE = 64  # the pixel space compares images at most this large (area-downsampled; recorded in the result)
COPY_PERCENTILE = 1.0
DEFAULT_NUM_MIA = 1000  # members and non-members each, at most (fewer when the data holds fewer)
DEFAULT_NUM_SAMPLES = 1000  # synthetic images, at most: fewer when the model saw fewer training images
SMALL_SPLIT = 200  # a held-out split below this many images gets a note on what its numbers can show


class AuditError(ValueError):
    """A bad audit request: says what is wrong and how to fix it."""


def nearest_two(queries: np.ndarray, references: np.ndarray, batch_size: int = 512, ref_batch: int = 8192):
    """(d1, d2, index of the nearest) Euclidean distances of each query row to its two nearest reference rows:
    exact, in query x reference blocks (memory: one block of distances, whatever the number of references)."""
    d1, d2, nearest = [], [], []
    for start in range(0, len(queries), batch_size):
        q = torch.from_numpy(np.ascontiguousarray(queries[start:start + batch_size], dtype=np.float32))
        best_values = torch.full((len(q), 2), float("inf"))
        best_indices = torch.zeros((len(q), 2), dtype=torch.long)
        for ref_start in range(0, len(references), ref_batch):
            refs = torch.from_numpy(np.ascontiguousarray(references[ref_start:ref_start + ref_batch],
                                                         dtype=np.float32))
            values, indices = torch.cdist(q, refs).topk(min(2, len(refs)), dim=1, largest=False)
            merged_values = torch.cat([best_values, values], dim=1)
            merged_indices = torch.cat([best_indices, indices + ref_start], dim=1)
            best_values, order = merged_values.topk(2, dim=1, largest=False)
            best_indices = merged_indices.gather(1, order)
        d1.append(best_values[:, 0]), d2.append(best_values[:, 1]), nearest.append(best_indices[:, 0])
    return torch.cat(d1).numpy(), torch.cat(d2).numpy(), torch.cat(nearest).numpy()


def pixel_vectors(images: torch.Tensor, indices: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """float32 pixel vectors in [0, 1] of uint8 (N, C, H, W) ``images[indices]``, read chunk by chunk; images larger
    than PIXEL_SIDE are area-downsampled to it first (the pixel space of a 512-px set would be 1 MB per image)."""
    size = images.shape[-1]
    side = min(size, PIXEL_SIDE)
    out = np.empty((len(indices), images.shape[1] * side * side), dtype=np.float32)
    for start in range(0, len(indices), chunk):
        batch = images[torch.as_tensor(indices[start:start + chunk])].float() / 255
        if side < size:
            batch = torch.nn.functional.interpolate(batch, size=(side, side), mode="area")
        out[start:start + len(batch)] = batch.reshape(len(batch), -1).numpy()
    return out


@torch.no_grad()
def latent_vectors(vae, images: torch.Tensor, indices: np.ndarray, chunk: int = 64) -> np.ndarray:
    """float32 latent vectors (the VAE's posterior means, flattened) of uint8 (N, C, H, W) ``images[indices]``, chunk
    by chunk: a latent model's own space, where a copy of a training image is as close as the VAE can tell."""
    from .data import to_model_range

    out = []
    for start in range(0, len(indices), chunk):
        batch = to_model_range(images[torch.as_tensor(indices[start:start + chunk])]).to(vae.device, vae.dtype)
        out.append(vae.encode(batch).latent_dist.mean.float().flatten(1).cpu().numpy())
    return np.concatenate(out)


def copy_statistics(synthetic: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int = 0) -> Dict:
    """Nearest-neighbour numbers of synthetic vs held-out test images, both measured against ``train`` (rows are
    feature vectors)."""
    if len(test) < 4:
        raise AuditError(f"The copy-rate baseline needs at least 4 real test images; got {len(test)}.")
    syn_d1, syn_d2, syn_nearest = nearest_two(synthetic, train)
    test_d1, test_d2, _ = nearest_two(test, train)
    order = np.random.default_rng(seed).permutation(len(test))
    calibration, held_out = order[: len(test) // 2], order[len(test) // 2:]
    threshold = float(np.percentile(test_d1[calibration], COPY_PERCENTILE))
    ratio = lambda d1, d2: d1 / np.maximum(d2, 1e-12)  # noqa: E731
    rate = lambda flags: (float(np.mean(flags)), proportion_ci(int(np.sum(flags)), len(flags)))  # noqa: E731
    (copy_syn, copy_syn_ci), (copy_test, copy_test_ci) = rate(syn_d1 < threshold), rate(test_d1[held_out] < threshold)
    return {
        "median_nn_distance": {"synthetic": float(np.median(syn_d1)), "test": float(np.median(test_d1))},
        "copy_threshold": threshold,
        "copy_rate": {"synthetic": copy_syn, "test": copy_test},
        "copy_rate_ci95": {"synthetic": copy_syn_ci, "test": copy_test_ci},
        "memorized_gu": {"synthetic": float(np.mean(ratio(syn_d1, syn_d2) < MEMORIZATION_RATIO)),
                         "test": float(np.mean(ratio(test_d1, test_d2) < MEMORIZATION_RATIO))},
        "_nearest": (syn_d1, syn_nearest),
    }


def proportion_ci(count: int, total: int) -> List[float]:
    """Exact (Clopper-Pearson) 95 % interval of a rate: count of total."""
    from scipy.stats import binomtest

    if total == 0:
        return [0.0, 1.0]
    interval = binomtest(int(count), int(total)).proportion_ci(confidence_level=0.95, method="exact")
    return [float(interval.low), float(interval.high)]


def auc_ci(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> List[float]:
    """DeLong's 95 % interval of the ROC AUC (DeLong et al. 1988, with midranks as in Sun & Xu 2014), clipped to
    [0, 1]: its variance from each member's and non-member's share of the pairs it wins."""
    from scipy.stats import norm, rankdata

    m, n = len(member_scores), len(nonmember_scores)
    if m < 2 or n < 2:
        return [0.0, 1.0]
    combined = rankdata(np.concatenate([member_scores, nonmember_scores]))
    v10 = (combined[:m] - rankdata(member_scores)) / n  # per member: the share of non-members it outscores
    v01 = 1 - (combined[m:] - rankdata(nonmember_scores)) / m  # per non-member: the share of members above it
    auc = v10.mean()
    se = np.sqrt(v10.var(ddof=1) / m + v01.var(ddof=1) / n)
    z = norm.ppf(0.975)
    return [float(max(auc - z * se, 0.0)), float(min(auc + z * se, 1.0))]


def roc_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> Dict[str, float]:
    """ROC AUC (Mann-Whitney, ties counted half) with its 95 % interval, and TPR at 1 % FPR; higher = "member"."""
    from scipy.stats import rankdata

    scores = np.concatenate([member_scores, nonmember_scores])
    ranks = rankdata(scores)
    m, n = len(member_scores), len(nonmember_scores)
    auc = (ranks[:m].sum() - m * (m + 1) / 2) / (m * n)
    threshold = np.quantile(nonmember_scores, 0.99)
    return {"auc": float(auc), "auc_ci95": auc_ci(member_scores, nonmember_scores),
            "tpr_at_1pct_fpr": float(np.mean(member_scores > threshold))}


@torch.no_grad()
def denoising_losses(pipe, images: np.ndarray, labels: Optional[np.ndarray], timesteps: Sequence[int] = (50, 200, 500),
                     seed: int = 0, batch_size: Optional[int] = None, precision: str = "fp32") -> np.ndarray:
    """Per-image denoising loss of the pipeline's UNet (its own prediction type), averaged over ``timesteps``, with
    noise drawn per image from a fixed seed: the same image always gets the same noise. An EDM pipeline is scored
    at the noise levels sigma = sqrt((1 - a_t) / a_t) these timesteps have on the cosine schedule (the default
    model's), with EDM's own loss (||F - F_target||^2, its lambda(sigma)-weighted denoising error). ``batch_size``
    None: 128 up to 64 px (the noise is drawn per batch, so the shipped models' numbers stay as they were), fewer
    for larger images -- generation's pixel budget (with 128 at 256 px, an audit against 100k images had
    reached 6.5 GiB RssAnon when stopped; 3.38 GiB with this, benchmarks/results/scale/commands.jsonl).
    ``precision``: the UNet's passes (:func:`~medgen_diffusers.generation.network_precision`); the losses are fp32."""
    from .generation import default_chunk_size, network_precision

    batch_size = batch_size or min(128, default_chunk_size(pipe))
    edm = is_edm(pipe.scheduler.config)
    alphas = torch.cumprod(1 - _betas({"beta_schedule": "squaredcos_cap_v2"} if edm else pipe.scheduler.config), dim=0)
    losses = []
    with network_precision(pipe, precision):
        for start in range(0, len(images), batch_size):
            losses.append(_batch_losses(pipe, images, labels, timesteps, seed, start, batch_size, alphas, edm).cpu())
    return torch.cat(losses).numpy()


def _batch_losses(pipe, images, labels, timesteps, seed, start, batch_size, alphas, edm) -> torch.Tensor:
    """The mean denoising loss over ``timesteps`` of the images ``start`` ... ``start + batch_size - 1``."""
    unet, scheduler = pipe.unet, pipe.scheduler
    device, config = unet.device, scheduler.config
    prediction = config.get("prediction_type", "epsilon")
    x0 = torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)
    if getattr(pipe, "vae", None) is not None:  # a latent model denoises the image's scaled latent
        x0 = pipe.vae.encode(x0.to(pipe.vae.dtype)).latent_dist.mean.float() * pipe.vae.config.scaling_factor
    generator = torch.Generator().manual_seed(seed * 1_000_003 + start)
    cond = None
    if labels is not None and unet.config.num_class_embeds is not None:
        cond = torch.from_numpy(labels[start:start + batch_size]).long().to(device)
    total = torch.zeros(len(x0), device=device)
    for t in timesteps:
        noise = torch.randn(x0.shape, generator=generator).to(device)
        a = alphas[t].to(device)
        if edm:
            sigma = ((1 - a) / a).sqrt()
            noisy = x0 + sigma * noise
            out = unet(scheduler.precondition_inputs(noisy, sigma),
                       scheduler.precondition_noise(sigma).expand(len(x0)), class_labels=cond).sample
            denoised = scheduler.precondition_outputs(noisy, out.float(), sigma)
            weight = (sigma ** 2 + config.sigma_data ** 2) / (sigma * config.sigma_data) ** 2
            total += (weight * (denoised - x0) ** 2).mean(dim=(1, 2, 3))
            continue
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = {"epsilon": noise, "sample": x0, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * x0}[prediction]
        out = unet(noisy, torch.full((len(x0),), t, device=device), class_labels=cond).sample
        total += ((out.float() - target) ** 2).mean(dim=(1, 2, 3))
    return total / len(timesteps)


def _betas(config) -> torch.Tensor:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(config).betas.float()


def membership_inference(pipe, members: np.ndarray, member_labels: Optional[np.ndarray], nonmembers: np.ndarray,
                         nonmember_labels: Optional[np.ndarray], class_names: Optional[Sequence[str]] = None,
                         seed: int = 0, member_groups=None, nonmember_groups=None, precision: str = "fp32") -> Dict:
    """Loss attack: members (training images) vs non-members (held-out test images), overall, per class and -- when
    the data knows its patients -- per patient (a patient's score: the mean over its images)."""
    member_loss = denoising_losses(pipe, members, member_labels, seed=seed, precision=precision)
    nonmember_loss = denoising_losses(pipe, nonmembers, nonmember_labels, seed=seed + 1, precision=precision)
    result = {"num_members": len(members), "num_nonmembers": len(nonmembers), "timesteps": [50, 200, 500],
              **roc_auc(-member_loss, -nonmember_loss),
              "median_loss": {"members": float(np.median(member_loss)), "nonmembers": float(np.median(nonmember_loss))}}
    if member_groups is not None and nonmember_groups is not None:
        per = lambda loss, groups: np.array([loss[groups == g].mean() for g in np.unique(groups)])  # noqa: E731
        a, b = per(member_loss, member_groups), per(nonmember_loss, nonmember_groups)
        result["per_patient"] = {"num_member_patients": len(a), "num_nonmember_patients": len(b),
                                 **(roc_auc(-a, -b) if len(a) >= 2 and len(b) >= 2 else {})}
    if member_labels is not None and nonmember_labels is not None and class_names:
        result["per_class"] = {}
        for index, name in enumerate(class_names):
            a, b = member_labels == index, nonmember_labels == index
            if a.sum() >= 10 and b.sum() >= 10:  # too few for a meaningful AUC otherwise
                result["per_class"][name] = roc_auc(-member_loss[a], -nonmember_loss[b])["auc"]
    return result


def closest_pairs_figure(synthetic: np.ndarray, train: np.ndarray, distances: np.ndarray, nearest: np.ndarray,
                         path, k: int = 8, space: str = "pixel") -> None:
    """The k synthetic images closest to a training image (top row) above that training image (bottom row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(distances)[:k]
    fig, axes = plt.subplots(2, len(order), figsize=(1.3 * len(order), 3.0), squeeze=False)
    gray = synthetic.shape[-1] == 1
    for column, i in enumerate(order):
        for row, image in enumerate((synthetic[i], train[nearest[i]])):
            ax = axes[row][column]
            ax.imshow(image[..., 0] if gray else image, cmap="gray" if gray else None, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
        axes[0][column].set_title(f"d={distances[i]:.2f}", fontsize=8)
    axes[0][0].set_ylabel("synthetic", fontsize=8)
    axes[1][0].set_ylabel("nearest train", fontsize=8)
    fig.suptitle(f"Closest synthetic-train pairs ({space} distance)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_audit(pipe, data: Union[DataSource, str] = "bloodmnist", num_samples: Optional[int] = None, num_train: Optional[int] = None,
              num_test: Optional[int] = None, num_mia: Optional[int] = None, spaces: Sequence[str] = ("pixel", "inception"),
              num_inference_steps: Optional[int] = None, guidance_scale: Optional[float] = None, seed: int = 0,
              extractor=None, figure=None, progress: bool = True, num_trained: Optional[int] = None,
              precision: str = "fp32") -> Dict:
    """The whole privacy audit of ``pipe`` against ``data`` (a :class:`~medgen_diffusers.data.DataSource`, or a
    dataset name / path read with the default options): synthetic images from the pipeline's own sampler (the
    one generation path), nearest neighbours in each space, membership inference, and the figure. ``num_trained``:
    the model saw only the first N training images (its run's --max_train_samples): only those are members and
    copy candidates -- images it never saw would pull the membership AUC toward chance."""
    from .generation import generate_images, labels_like_split

    source = DataSource.of(data)
    dataset = source.dataset
    train, test = source.load("train", pipe.image_size), source.load("test", pipe.image_size)
    if train.images.shape[1] != pipe.image_channels:
        raise AuditError(f"The model makes {pipe.image_channels}-channel images but {dataset} has "
                         f"{train.images.shape[1]} channels: audit it against the data it was trained on.")
    trained = len(train) if num_trained is None else min(int(num_trained), len(train))
    for name, wanted, available in (("--num-train", num_train, trained), ("--num-test", num_test, len(test)),
                                    ("--num-mia", num_mia, min(trained, len(test)))):
        if wanted is not None and wanted > available:
            raise AuditError(f"{name} {wanted} but only {available} images are available; use <= {available}.")
    notes = []
    if num_samples is None:  # sized to the data: a 12-image test split needs no 1,000 synthetic images
        num_samples = min(DEFAULT_NUM_SAMPLES, trained)
        notes.append(f"{num_samples} synthetic images: as many as the {trained} training images the model saw, at "
                     f"most {DEFAULT_NUM_SAMPLES:,} (--num-samples to change)")
    if len(test) < SMALL_SPLIT:
        notes.append(f"the held-out test split has {len(test)} images: the copy-rate baseline and the membership "
                     "AUC have wide 95 % intervals at this N, so read the verdicts -- they say what the numbers can "
                     "and cannot show")
    mia_n = min(DEFAULT_NUM_MIA if num_mia is None else num_mia, trained, len(test))
    if progress:
        from .generation import estimate_seconds, say_estimate

        for note in notes:
            print(f"medgen audit: {note}", file=sys.stderr)
        say_estimate(f"medgen audit: {num_samples} synthetic images, membership on {mia_n} + {mia_n} real images",
                     estimate_seconds(pipe, num_samples, num_inference_steps, guidance_scale)
                     + estimate_seconds(pipe, 2 * mia_n, 3))
    rng = np.random.default_rng(seed)
    pick = lambda n, total: np.sort(rng.choice(total, n, replace=False)) if n and n < total else np.arange(total)  # noqa: E731
    train_idx, test_idx = pick(num_train, trained), pick(num_test, len(test))
    to_nhwc = lambda data, idx: data.images[idx].permute(0, 2, 3, 1).numpy()  # noqa: E731

    conditional = bool(pipe.config.class_names) and train.labels is not None
    labels = None
    if conditional:  # the train split's class mix
        labels = labels_like_split(np.bincount(train.labels.numpy(), minlength=len(train.class_names)), num_samples)
    started = time.perf_counter()
    synthetic = generate_images(pipe, num_samples, labels, num_inference_steps, guidance_scale, seed,
                                progress=progress, precision=precision)
    # Wall seconds per stage: what grows with the training set (each space's nearest neighbours) apart from what the
    # model costs (generation, the membership attack's denoising passes).
    seconds = {"generation": round(time.perf_counter() - started, 1)}
    result = {"dataset": dataset, "notes": notes, "num_synthetic": num_samples, "num_train": len(train_idx), "num_trained": trained,
              "num_test": len(test_idx), "generation": {"steps": num_inference_steps or pipe.config.get(
                  "default_num_inference_steps"), "guidance_scale": guidance_scale, "seed": seed,
                  "scheduler": type(pipe.scheduler).__name__, "precision": precision}, "nearest_neighbours": {}}
    for space in spaces:
        started = time.perf_counter()
        if space == "pixel":  # chunk by chunk from the (memory-mapped) splits; large images at PIXEL_SIDE px
            synthetic_nchw = torch.from_numpy(synthetic).permute(0, 3, 1, 2)
            feats = [pixel_vectors(synthetic_nchw, np.arange(len(synthetic))), pixel_vectors(train.images, train_idx),
                     pixel_vectors(test.images, test_idx)]
            result["pixel_space_size"] = min(PIXEL_SIDE, synthetic.shape[1])
        elif space == "inception":
            from .evaluation import RealFeatures
            from .inception import InceptionFeatures

            extractor = extractor or InceptionFeatures()
            reals = RealFeatures(extractor, source, pipe.image_size)
            feats = [extractor.standard(synthetic, progress),
                     reals.get("train", "standard", progress=progress, indices=train_idx)[0],
                     reals.get("test", "standard", num_test, seed, progress)[0]]
        elif space == "latent":  # a latent model's autoencoder space
            if getattr(pipe, "vae", None) is None:
                raise AuditError("--spaces latent is the space of a latent model's VAE; this pipeline has none: use "
                                 "pixel, inception.")
            synthetic_nchw = torch.from_numpy(synthetic).permute(0, 3, 1, 2)
            feats = [latent_vectors(pipe.vae, synthetic_nchw, np.arange(len(synthetic))),
                     latent_vectors(pipe.vae, train.images, train_idx), latent_vectors(pipe.vae, test.images, test_idx)]
        else:
            raise AuditError(f"Unknown feature space {space!r}: use pixel, inception (and latent for a latent model).")
        stats = copy_statistics(*feats, seed=seed)
        d1, nearest = stats.pop("_nearest")
        if train.groups is not None:  # per patient: whose training images the flagged copies are nearest to
            copied = d1 < stats["copy_threshold"]
            stats["patients_copied"] = len(set(train.groups[train_idx][nearest[copied]].tolist()))
        result["nearest_neighbours"][space] = stats
        seconds[f"nearest_neighbours_{space}"] = round(time.perf_counter() - started, 1)
        if figure is not None and space == "pixel":
            shown = np.argsort(d1)[:8]  # only the training images the figure shows are read
            nearest_shown = np.zeros_like(nearest)
            nearest_shown[shown] = np.arange(len(shown))
            closest_pairs_figure(synthetic, to_nhwc(train, train_idx[nearest[shown]]), d1, nearest_shown, figure,
                                 space=space)

    labels_of = lambda data, idx: None if data.labels is None else data.labels.numpy()[idx]  # noqa: E731
    members, nonmembers = membership_sets(labels_of(train, train_idx), labels_of(test, test_idx),
                                          DEFAULT_NUM_MIA if num_mia is None else num_mia, seed,
                                          len(train_idx), len(test_idx))
    members, nonmembers = train_idx[members], test_idx[nonmembers]
    groups_of = lambda data, idx: None if data.groups is None else data.groups[idx]  # noqa: E731
    started = time.perf_counter()
    result["membership_inference"] = membership_inference(
        pipe, to_nhwc(train, members), labels_of(train, members), to_nhwc(test, nonmembers),
        labels_of(test, nonmembers), train.class_names, seed, groups_of(train, members), groups_of(test, nonmembers),
        precision)
    if train.groups is not None:  # the held-out baseline is other patients: a patient-level split guarantees it
        shared = set(train.groups.tolist()) & set(test.groups.tolist())
        result["patients"] = {"train": len(set(train.groups.tolist())), "test": len(set(test.groups.tolist())),
                              "in_both": len(shared)}
    if train.labels is not None:  # equal by construction: the attack cannot tell members by their class
        result["membership_inference"]["class_counts"] = {
            "members": np.bincount(labels_of(train, members), minlength=len(train.class_names)).tolist(),
            "nonmembers": np.bincount(labels_of(test, nonmembers), minlength=len(train.class_names)).tolist()}
    seconds["membership_inference"] = round(time.perf_counter() - started, 1)
    result["seconds"] = seconds
    result["verdict"] = verdicts(result)
    return result


# "No evidence" needs the 95 % interval to rule out more than this excess over the held-out baseline (copy rate) or
# over chance (membership AUC); an interval wider than that is "cannot tell at this N".
NO_EVIDENCE_MARGIN = 0.05


def verdicts(result: Dict) -> Dict[str, str]:
    """What the audit's numbers can and cannot show, from their 95 % intervals: evidence, no evidence, or cannot
    tell at this N -- one sentence each for copying (per space) and membership."""
    said = {}
    for space, stats in result.get("nearest_neighbours", {}).items():
        rate, (low, high) = stats["copy_rate"]["synthetic"], stats["copy_rate_ci95"]["synthetic"]
        base, (_, base_high) = stats["copy_rate"]["test"], stats["copy_rate_ci95"]["test"]
        numbers = (f"copy rate {rate:.3f} (95 % CI {low:.3f}-{high:.3f}) vs held-out real images {base:.3f} "
                   f"(CI up to {base_high:.3f})")
        if low > base_high:
            said[f"copying_{space}"] = f"evidence of copying: {numbers}"
        elif high <= base + NO_EVIDENCE_MARGIN:
            said[f"copying_{space}"] = f"no evidence of copying: {numbers}"
        else:
            said[f"copying_{space}"] = (f"cannot tell at this N: {numbers}; the interval allows up to "
                                        f"{high - base:+.3f} over held-out images (more synthetic images narrow it)")
    mia = result.get("membership_inference")
    if mia and "auc_ci95" in mia:
        low, high = mia["auc_ci95"]
        numbers = f"membership AUC {mia['auc']:.3f} (95 % CI {low:.3f}-{high:.3f}; 0.5 = nothing learned)"
        if low > 0.5:
            said["membership"] = f"evidence of membership leakage: {numbers}"
        elif high <= 0.5 + NO_EVIDENCE_MARGIN:
            said["membership"] = f"no evidence of membership leakage: {numbers}"
        else:
            said["membership"] = (f"cannot tell at this N: {numbers}, {mia['num_members']} members vs "
                                  f"{mia['num_nonmembers']} held-out images")
    return said


def membership_sets(member_labels: Optional[np.ndarray], nonmember_labels: Optional[np.ndarray], num: int,
                    seed: int = 0, num_members: int = 0, num_nonmembers: int = 0):
    """(member positions, non-member positions): random, and with the same number of each class on both sides
    (for labeled data), so a loss attack measures membership, not class mix -- folders sorted by class would
    otherwise give members of one class and non-members of another. At most ``num`` of each."""
    rng = np.random.default_rng(seed + 7)
    if member_labels is None or nonmember_labels is None:  # unlabeled: equal-size random draws
        n = min(num, num_members, num_nonmembers)
        return np.sort(rng.choice(num_members, n, replace=False)), np.sort(rng.choice(num_nonmembers, n, replace=False))
    classes = np.union1d(member_labels, nonmember_labels)
    avail = np.array([min(np.sum(member_labels == c), np.sum(nonmember_labels == c)) for c in classes])
    from .generation import labels_like_split

    target = np.bincount(labels_like_split(avail, min(num, int(avail.sum()))), minlength=len(classes))
    members, nonmembers = [], []
    for c, k in zip(classes, target):
        members.append(rng.choice(np.flatnonzero(member_labels == c), k, replace=False))
        nonmembers.append(rng.choice(np.flatnonzero(nonmember_labels == c), k, replace=False))
    return np.sort(np.concatenate(members)), np.sort(np.concatenate(nonmembers))

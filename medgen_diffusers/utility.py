"""Utility of synthetic images: does a classifier trained on them work on real ones? (``medgen utility``)

Classifier: MedMNIST v2's ResNet-18 for 28 px -- torchvision's ResNet-18 with a 3x3 stride-1 first convolution and
no max-pool, as in MedMNIST's experiments code -- trained from scratch with cross-entropy, Adam (lr 1e-3), batch 128,
the learning rate divided by 10 at 50 % and 75 % of the steps (MedMNIST's schedule), no augmentation and no model
selection (the last step is scored). Every arm trains for the same number of optimizer steps, ``epochs`` epochs of N
images (10 x 94 = 940 steps for BloodMNIST's 11,959; MedMNIST used 100 epochs), cycling through its own images: arms
then differ in their data, not in how long the classifier trained (with epochs of their own, 1 % of the real data
would get 10 steps). Scored with ``medmnist.Evaluator`` (ACC and AUC) on the real **test** split (``split="val"`` to
choose settings; for other sources: medmnist's ``getACC``/``getAUC``).

Arms (each for several classifier seeds -> mean +- std):

* ``trtr`` -- train on N real training images; ``tstr`` -- train on N synthetic images in the train split's class
  mix (the pipeline's own sampler). The ratios tstr / trtr of ACC and AUC are the headline.
* ``real_{f}`` / ``real_{f}+syn`` -- a stratified fraction f of the real train split, without and with added
  synthetic images (as many as the whole real train split, in its class mix): does synthetic data help when real
  data is scarce?
"""

from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
import torchvision

from .data import DataSource

# The protocol's N at most, by default: a larger train split is subsampled (seeded, recorded as num_train of
# num_train_available), so the synthetic images generated and held for TSTR stay bounded (20k at 256 px: 1.3 GB uint8
# per channel) and the classifier budget stays the protocol's. BloodMNIST's 11,959 are all used, as before.
MAX_TRAIN = 20_000


class UtilityError(ValueError):
    """A bad utility request: says what is wrong and how to fix it."""


def medmnist_resnet18(in_channels: int, num_classes: int) -> torch.nn.Module:
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = torch.nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = torch.nn.Identity()
    return model


def _as_input(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW normalised as MedMNIST does (mean 0.5, std 0.5)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)


def train_classifier(images: np.ndarray, labels: np.ndarray, num_classes: int, steps: int, batch_size: int = 128,
                     seed: int = 0, device="cpu") -> torch.nn.Module:
    """``steps`` Adam steps over shuffled passes through the images (a pass smaller than a batch is one batch)."""
    torch.manual_seed(seed)
    model = medmnist_resnet18(images.shape[-1], num_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [int(0.5 * steps), int(0.75 * steps)], gamma=0.1)
    # The images stay uint8 where they are (a memory-mapped store, or this process): each batch is converted and
    # moved to the device on its own, so memory is a batch, not the arm's images as float32 on the device.
    y = torch.from_numpy(labels.astype(np.int64))
    generator = torch.Generator().manual_seed(seed)
    model.train()
    batches = iter(())
    for _ in range(steps):
        batch = next(batches, None)
        if batch is None:  # a new shuffled pass
            batches = iter(torch.randperm(len(images), generator=generator).split(batch_size))
            batch = next(batches)
        optimizer.zero_grad()
        x = _as_input(np.ascontiguousarray(images[batch.numpy()])).to(device)
        torch.nn.functional.cross_entropy(model(x), y[batch].to(device)).backward()
        optimizer.step()
        scheduler.step()
    return model.eval()


def classifier_step_seconds(in_channels: int, num_classes: int, size: int, device="cpu", batch_size: int = 128) -> float:
    """One timed Adam step of the protocol's ResNet-18 on a batch of this size (the second of two)."""
    import time

    model = medmnist_resnet18(in_channels, num_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.zeros(batch_size, in_channels, size, size, device=device)
    y = torch.zeros(batch_size, dtype=torch.long, device=device)
    for _ in range(2):
        start = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return elapsed


@torch.no_grad()
def score_classifier(model, images: np.ndarray, labels: np.ndarray, device="cpu", evaluator=None) -> Dict[str, float]:
    """ACC and AUC on real images: with ``medmnist.Evaluator`` (its labels from the official file; MedMNIST sets), else
    with the same metric functions it uses."""
    scores = torch.cat([model(_as_input(np.ascontiguousarray(images[start:start + 512])).to(device)).softmax(1).cpu()
                        for start in range(0, len(images), 512)]).numpy()
    return metrics_from_scores(scores, labels, evaluator)


def metrics_from_scores(scores: np.ndarray, labels: np.ndarray, evaluator=None) -> Dict[str, float]:
    from medmnist.evaluator import getACC, getAUC

    if evaluator is not None:
        auc, acc = evaluator.evaluate(scores)
        return {"acc": float(acc), "auc": float(auc)}
    return {"acc": float(getACC(labels, scores, "multi-class")), "auc": float(getAUC(labels, scores, "multi-class"))}


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of ``fraction`` of every class (at least one image each)."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(labels == c), max(1, round(fraction * np.sum(labels == c))), replace=False)
             for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def run_utility(pipe, data: Union[DataSource, str] = "bloodmnist", num_train: Optional[int] = None,
                fractions: Sequence[float] = (0.01, 0.1, 1.0), seeds: Sequence[int] = (0, 1, 2), epochs: int = 10,
                num_inference_steps: Optional[int] = None, guidance_scale: Optional[float] = None,
                device="cpu", generation_seed: int = 0, progress: bool = True, num_added: Optional[int] = None,
                num_test: Optional[int] = None, split: str = "test", arms: Optional[Sequence[str]] = None,
                max_train: int = MAX_TRAIN, precision: str = "fp32") -> Dict:
    """Every arm (or those named in ``arms``) for every seed, trained on ``data`` (a
    :class:`~medgen_diffusers.data.DataSource`, or a dataset name / path read with the default options) and its
    synthetic counterpart, scored on ``split`` ("test" to report, "val" to choose
    settings such as the guidance scale); returns per-arm mean/std, the TSTR ratios and the augmentation gains.
    ``num_train`` None: the train split, a seeded subset of ``max_train`` when it is larger."""
    from medmnist.info import INFO

    from .generation import generate_images, labels_like_split

    source = DataSource.of(data)
    dataset = source.dataset
    train = source.load("train", pipe.image_size)
    arms_wanted = arms  # `arms` becomes the table of arm name -> training data below
    if split not in ("val", "test"):
        raise UtilityError(f"split={split!r}: score on 'test' (to report) or 'val' (to choose settings).")
    names = ["trtr", "tstr"] + [f"real_{f:g}{syn}" for f in fractions for syn in ("", "+syn")]
    if arms_wanted and (set(arms_wanted) - set(names) or not {"trtr", "tstr"} <= set(arms_wanted)):
        raise UtilityError(f"arms={list(arms_wanted)}: choose among {names}, always with trtr and tstr (the ratio "
                           "needs both); the real_* arms follow --fractions.")
    test = source.load(split, pipe.image_size)
    if train.labels is None or not pipe.config.class_names:
        raise UtilityError("The utility protocol trains a classifier: it needs class labels in the data and a "
                           "class-conditional pipeline.")
    if len(pipe.config.class_names) != len(train.class_names):
        raise UtilityError(f"The pipeline has {len(pipe.config.class_names)} classes but {dataset} has "
                           f"{len(train.class_names)}: use the data it was trained on.")
    real_x, real_y = train.images.permute(0, 2, 3, 1).numpy(), train.labels.numpy()
    test_x, test_y = test.images.permute(0, 2, 3, 1).numpy(), test.labels.numpy()
    if num_test is not None:  # quick checks only: a seeded subset, scored with the Evaluator's metric functions
        keep = _first(num_test, len(test_x), 0)
        test_x, test_y = test_x[keep], test_y[keep]
    n = num_train or min(len(real_x), max_train)
    if n > len(real_x):
        raise UtilityError(f"--num-train {n} but the train split has {len(real_x)} images.")
    if progress and n < len(real_x) and num_train is None:
        import sys

        print(f"medgen utility: the train split has {len(real_x)} images; the protocol uses a seeded subset of {n} "
              f"(utility.MAX_TRAIN; --num-train N to choose), recorded in the result.", file=sys.stderr)
    counts = np.bincount(real_y, minlength=len(train.class_names))
    # Synthetic images added in the augmentation arms (default: as many as a whole train split, at most MAX_TRAIN).
    added = num_added or min(len(real_x), max_train)
    num_synthetic = max(n, added) if fractions else n
    syn_y = labels_like_split(counts, num_synthetic)
    steps = epochs * -(-n // 128)  # the same optimizer steps for every arm: `epochs` epochs of N images
    if progress:
        from .generation import estimate_seconds, say_estimate

        num_arms = len(arms_wanted) if arms_wanted else 2 + 2 * len(fractions)
        say_estimate(f"medgen utility: {num_synthetic} synthetic images, then {num_arms} arms x {len(seeds)} seeds x "
                     f"{steps} classifier steps",
                     estimate_seconds(pipe, num_synthetic, num_inference_steps, guidance_scale)
                     + num_arms * len(seeds) * steps * classifier_step_seconds(real_x.shape[-1], len(train.class_names),
                                                                               real_x.shape[1], device))
    syn_x = generate_images(pipe, num_synthetic, syn_y, num_inference_steps, guidance_scale, generation_seed,
                            progress=progress, precision=precision)  # the classifiers train in fp32
    # TSTR uses n synthetic images spread over the classes like the real ones (every k-th of the sorted labels).
    tstr_idx = np.linspace(0, num_synthetic - 1, n).round().astype(int)
    arms = {"trtr": lambda seed: (real_x[_first(n, len(real_x), seed)], real_y[_first(n, len(real_x), seed)]),
            "tstr": lambda seed: (syn_x[tstr_idx], syn_y[tstr_idx])}
    for fraction in fractions:
        def real_part(seed, fraction=fraction):
            idx = stratified_subset(real_y, fraction, seed)
            return real_x[idx], real_y[idx]
        arms[f"real_{fraction:g}"] = real_part
        added_idx = np.linspace(0, num_synthetic - 1, added).round().astype(int)
        arms[f"real_{fraction:g}+syn"] = lambda seed, part=real_part, idx=added_idx: tuple(
            np.concatenate([a, b]) for a, b in zip(part(seed), (syn_x[idx], syn_y[idx])))
    if arms_wanted:
        arms = {name: make for name, make in arms.items() if name in arms_wanted}
    evaluator = None
    if dataset in INFO and num_test is None:  # the official scorer, on the official test labels
        from medmnist import Evaluator

        from .data import medmnist_path

        evaluator = Evaluator(dataset, split, size=pipe.image_size,
                              root=str(medmnist_path(dataset, pipe.image_size, source.root).parent))
    runs = {}
    for name, make in arms.items():
        if name == "real_1" and n == len(real_x) and "trtr" in runs:
            runs[name] = runs["trtr"]  # the same images, steps and seeds: the same classifiers
            continue
        runs[name] = []
        for seed in seeds:
            x, y = make(seed)
            model = train_classifier(x, y, len(train.class_names), steps, seed=seed, device=device)
            runs[name].append({"seed": seed, "num_images": len(x),
                               **score_classifier(model, test_x, test_y, device, evaluator)})
    return _summarize({"dataset": dataset, "split": split, "num_train": n, "num_train_available": len(real_x),
                       "num_synthetic_added": added,
                       "epochs": epochs, "classifier_steps": steps, "fractions": [float(f) for f in fractions],
                       "generation": {"steps": num_inference_steps or pipe.config.get("default_num_inference_steps"),
                                      "guidance_scale": guidance_scale, "seed": generation_seed,
                                      "scheduler": type(pipe.scheduler).__name__,
                                      # not recorded at fp32: seeds run before the option merge with new ones
                                      **({} if precision == "fp32" else {"precision": precision})}}, runs)


def _summarize(protocol: Dict, runs: Dict[str, list]) -> Dict:
    """The result file: the protocol, every classifier run per arm, per-arm mean/std, TSTR ratios, augmentation gains."""
    arms = {name: {"runs": arm_runs, **{f"{m}_{s}": float(getattr(np, s)([r[m] for r in arm_runs]))
                                        for m in ("acc", "auc") for s in ("mean", "std")}}
            for name, arm_runs in runs.items()}
    ratio = {m: arms["tstr"][f"{m}_mean"] / arms["trtr"][f"{m}_mean"] for m in ("acc", "auc")}
    gains = {f"{f:g}": {m: arms[f"real_{f:g}+syn"][f"{m}_mean"] - arms[f"real_{f:g}"][f"{m}_mean"]
                        for m in ("acc", "auc")}
             for f in protocol.get("fractions", []) if {f"real_{f:g}", f"real_{f:g}+syn"} <= set(arms)}
    seeds = sorted({r["seed"] for arm_runs in runs.values() for r in arm_runs})
    return {**protocol, "seeds": seeds, "tstr_ratio": ratio, "augmentation_gain": gains, "arms": arms}


# What two result files must share to be one experiment: the same data, classifier budget and synthetic images.
_PROTOCOL_KEYS = ("dataset", "split", "num_train", "num_synthetic_added", "epochs", "classifier_steps", "generation")


def merge_utility(results: Sequence[Dict]) -> Dict:
    """One result from several runs of the same protocol with different classifier seeds (e.g. seeds run in
    parallel, or seeds added to an earlier run): every run is kept, means, ratios and gains are recomputed."""
    if len(results) < 2:
        raise UtilityError("Merging needs at least two utility result files.")
    first = results[0]
    weights = {(r.get("provenance") or {}).get("weights_sha256") for r in results}
    if len(weights) > 1:
        raise UtilityError(f"These utility results score different models (weights sha256 "
                           f"{sorted(str(w)[:12] for w in weights)}): merge only runs of one pipeline.")
    for other in results[1:]:
        differ = [k for k in _PROTOCOL_KEYS if other.get(k) != first.get(k)]
        if differ:
            raise UtilityError(f"These utility results are not one experiment: they differ in {differ}. Merge only "
                               "runs of the same pipeline, data, --epochs, --num-train and sampler that differ in "
                               "--seeds.")
    runs: Dict[str, list] = {}
    for result in results:
        for name, arm in result["arms"].items():
            runs.setdefault(name, []).extend(arm["runs"])
    for name, arm_runs in runs.items():
        seeds = [r["seed"] for r in arm_runs]
        if len(seeds) != len(set(seeds)):
            raise UtilityError(f"Arm {name!r} has classifier seed(s) {sorted({s for s in seeds if seeds.count(s) > 1})} "
                               "in more than one file: run the extra files with other --seeds.")
        arm_runs.sort(key=lambda r: r["seed"])
    if len({len(arm_runs) for arm_runs in runs.values()}) > 1 or not {"trtr", "tstr"} <= set(runs):
        raise UtilityError("Every file must score the same arms (trtr and tstr at least): "
                           + ", ".join(f"{k}: {len(v)} runs" for k, v in runs.items()))
    protocol = {k: v for k, v in first.items()
                if k not in ("seeds", "tstr_ratio", "augmentation_gain", "arms", "provenance")}
    if first.get("provenance"):
        protocol["provenance"] = {**first["provenance"], "command": "medgen utility --merge"}
    protocol.setdefault("fractions", sorted({float(name.split("_")[1].removesuffix("+syn"))
                                             for name in runs if name.startswith("real_")}))
    protocol["merged_from"] = [{"seeds": r["seeds"], "device": r.get("device")} for r in results]
    return _summarize(protocol, runs)


def _first(n: int, total: int, seed: int) -> np.ndarray:
    """A seeded random subset of n of total indices (all when n == total)."""
    if n >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, n, replace=False))

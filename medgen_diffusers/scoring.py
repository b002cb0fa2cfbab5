"""What ``medgen evaluate`` scores and how it reports it: generated images read from an npz or a folder (with the
provenance ``medgen sample`` recorded), or generated here by a pipeline, scored with evaluation.py's metrics against
the real split of the data they came from; the result file and its printed summary. evaluation.py keeps the
metrics; this module owns the files and the choices between them."""

import hashlib
import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np

from .generation import labels_like_split
from .inception import EvaluationError


def evaluate_command(args):
    """`medgen evaluate`: generated images (a file or folder from `medgen sample`, or made here by a pipeline) scored
    against the real split of the data they came from; evaluation.json with provenance and, for a DP model, its
    guarantee."""
    from . import DEFAULT_MODEL, evaluation
    from .inception import InceptionFeatures
    from .privacy import privacy_guarantee
    from .provenance import check_new_result, provenance, redact_paths, weights_sha256, write_json_atomic
    from .runtime import (data_record, default_result_path, is_shipped, load_pipeline, resolve_data, resolve_device,
                          resolve_steps, source_name, split_counts, writable)

    shipped = is_shipped(args.source)
    args.source = args.source or DEFAULT_MODEL
    source = Path(args.source)
    images_given = source.is_file() or (source.is_dir() and not (source / "model_index.json").is_file())
    # Default: next to a pipeline folder the user named (the card reads it there); otherwise -- generated images,
    # a Hub id, the shipped model -- ./evaluation.json. Checked before any work is done.
    out = check_new_result(writable(args.out or default_result_path(None if shipped else args.source,
                                                                    "evaluation.json")), args.overwrite)
    # No absolute path of this machine in a result that may be committed or pushed.
    generation = {"source": source_name(args.source)}
    device = resolve_device(args.device)
    if images_given:
        images, labels = read_images(source, None, args.images_key)  # a bad file is refused first
        made_by = read_provenance(source) or {}
        pipeline = made_by.get("pipeline")
        if args.dataset is None and pipeline and Path(pipeline).exists():
            data = resolve_data(args, pipeline)  # the images' own model, as medgen sample recorded it
        else:
            if not made_by and args.dataset is None:
                raise ValueError(f"{source} does not record the model or data it came from (medgen sample's npz "
                                 "and folders do): name the real data to compare with, --dataset NAME_OR_PATH.")
            recorded = made_by.get("data") or {}
            data = resolve_data(args, None, run_config={"dataset": recorded.get("source"),
                                                         "data_md5": recorded.get("checksum")})
        real = data.load(args.split, args.size)
        if source.is_dir():  # class sub-folders named like the real classes give labels
            images, labels = read_images(source, real.class_names, args.images_key)
        if args.num_samples is not None:
            if args.num_samples > len(images):
                raise ValueError(f"--num-samples {args.num_samples} but {source} holds {len(images)} images.")
            # A seeded subset in the file's class mix: `medgen sample` writes images sorted by class, so the first
            # N would be a few classes only.
            keep = stratified_subset(args.num_samples, labels, len(images), args.seed)
            images, labels = images[keep], None if labels is None else labels[keep]
        weights = made_by.get("weights_sha256")
    else:
        from .generation import default_chunk_size, estimate_seconds, generate_images, plan_labels, say_estimate

        pipe = load_pipeline(args.source, args.scheduler).to(device)
        data = resolve_data(args, args.source)
        args.size = args.size or pipe.image_size  # real images at the model's size
        real = data.load(args.split, args.size)
        counts = split_counts(args.split, args, args.size) if real.labels is not None else None
        num = args.num_samples or len(real)
        train_size = len(data.load("train", args.size))
        if not args.no_floor and num > train_size:  # before any image is generated
            raise ValueError(f"The real-vs-real floor needs {num} train images (as many as generated); the train "
                             f"split has {train_size}: pass --num-samples <= {train_size} or --no-floor.")
        # Same class mix as the real split, so class frequencies do not bias FID; exactly the images of
        # `medgen sample --like-split SPLIT --num-images N --seed S` (generation.py is the one generation path).
        labels = plan_labels(pipe.config.class_names, num,
                             split_counts=counts if pipe.config.class_names and counts is not None else None)
        steps = resolve_steps(pipe, args.steps)
        if len(real) < SMALL_EVALUATION:
            print(f"medgen evaluate: the {args.split} split has {len(real)} images: FID is biased upward at small N "
                  "(compare it with the real-vs-real floor at the same N, not with published numbers) and per-class "
                  "numbers need more images than small classes have (skipped with the reason).", file=sys.stderr)
        say_estimate(f"medgen evaluate: generating {num} images with {steps} steps",
                     estimate_seconds(pipe, num, steps, args.guidance_scale))
        chunk_size = args.chunk_size or default_chunk_size(pipe)  # memory: one chunk
        images = generate_images(pipe, num, labels, steps, args.guidance_scale, args.seed, chunk_size,
                                 precision=args.precision)
        guided = labels is not None and (args.guidance_scale or 1.0) > 1.0  # the pipeline guides only above 1
        generation.update(scheduler=type(pipe.scheduler).__name__, steps=steps, guidance_scale=args.guidance_scale,
                          seed=args.seed, nfe_per_image=steps * (2 if guided else 1), chunk_size=chunk_size,
                          precision=args.precision,
                          timestep_spacing=pipe.scheduler.config.get("timestep_spacing"))
        weights = weights_sha256(pipe.unet)
    generation["images_sha256"] = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()
    extractor = InceptionFeatures(args.inception_weights, device=device)
    result = evaluation.evaluate_images(images, labels, args.split, data, args.size, args.num_real,
                                        protocols=args.protocols.split(","), floor=not args.no_floor,
                                        extractor=extractor, seed=args.seed, progress=True)
    result["generation"] = generation
    result["provenance"] = provenance(data=data_record(data, args, args.size), weights_sha256=weights)
    # A model trained with --dp_epsilon: its guarantee beside its quality (the card shows both).
    guarantee = privacy_guarantee(made_by.get("pipeline") if images_given else None if shipped else args.source)
    if guarantee:
        result["trust"] = {"differential_privacy": guarantee}
    result = redact_paths(result)  # no absolute path of this machine in a result that may be pushed
    write_json_atomic(result, out)
    print(summary(result))
    print(f"wrote {out}")


def read_images(path: Union[str, os.PathLike], class_names: Optional[List[str]] = None,
                images_key: Optional[str] = None):
    """(images uint8 NHWC, labels or None) of generated images: an npz's generated array -- ``images_key``, else
    ``images``, else ``train_images`` (what ``medgen sample`` writes), else its only ``*_images`` array; never real
    ``val``/``test`` arrays beside it -- or a folder of images (sub-folders named after classes give labels)."""
    from .data.sources import pil_to_array

    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        if not zipfile.is_zipfile(path):
            raise EvaluationError(f"{path} is not an .npz archive (a zip of .npy arrays, as numpy.savez writes): pass "
                                  "a MedMNIST-style npz with '*_images' arrays, a folder of PNGs, or a pipeline.")
        with np.load(path) as data:
            candidates = [k for k in data.files if k.endswith("images")]
            if images_key is not None:
                if images_key not in data.files:
                    raise EvaluationError(f"{path} has no array {images_key!r} (arrays: {', '.join(data.files)}).")
                key = images_key
            elif "images" in data.files or "train_images" in data.files:
                key = "images" if "images" in data.files else "train_images"
            elif len(candidates) == 1:
                key = candidates[0]
            else:
                raise EvaluationError(f"{path} has {len(candidates)} image arrays ({', '.join(candidates) or 'none'}): "
                                      "name the generated one with --images-key.")
            images = data[key]
            label_key = key.replace("images", "labels")
            labels = data[label_key].reshape(-1).astype(np.int64) if label_key in data.files else None
        if images.ndim == 3:
            images = images[..., None]
        return images, labels
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff"))
        if not files:
            raise EvaluationError(f"{path} holds no PNG/JPEG/TIFF images.")
        from PIL import Image

        images = []
        for f in files:
            with Image.open(f) as image:
                images.append(pil_to_array(image, str(f)))
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise EvaluationError(f"Images in {path} have different sizes {sorted(shapes)}; all must match the split.")
        labels = None
        if class_names is not None and all(f.parent.name in class_names for f in files):
            labels = np.array([class_names.index(f.parent.name) for f in files])
        return np.stack(images), labels
    raise EvaluationError(f"{path} is neither an .npz file nor a folder of images: pass generated images as a "
                          "MedMNIST-style .npz or a folder of PNGs, or a pipeline folder / Hub repo id.")


def read_provenance(path: Union[str, os.PathLike]) -> Optional[Dict]:
    """The provenance ``medgen sample`` wrote with generated images (npz member or folder file), else None."""
    path = Path(path)
    if path.is_file() and path.suffix == ".npz" and zipfile.is_zipfile(path):
        with np.load(path) as data:  # allow_pickle stays False: the member is a plain unicode array
            return json.loads(str(data["provenance"])) if "provenance" in data.files else None
    if path.is_dir() and (path / "provenance.json").is_file():
        return json.loads((path / "provenance.json").read_text())
    return None


def stratified_subset(num: int, labels: Optional[np.ndarray], total: int, seed: int = 0) -> np.ndarray:
    """``num`` of ``total`` indices drawn at random with ``seed``; with labels, each class in proportion to its share
    (largest remainder), so a class-sorted file keeps its class mix. Sorted."""
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(total, num, replace=False))
    classes, counts = np.unique(labels, return_counts=True)
    per_class = labels_like_split(counts, num)
    picks = [rng.choice(np.flatnonzero(labels == c), int(np.sum(per_class == i)), replace=False)
             for i, c in enumerate(classes)]
    return np.sort(np.concatenate(picks))


def _spread(std: Optional[float], digits: int) -> str:
    return "" if std is None else f" +- {std:.{digits}f}"


SMALL_EVALUATION = 2048  # FID's customary minimum N; below it, evaluate says what the numbers can show


def summary(result: Dict) -> str:
    """A few human-readable lines: model numbers, the floor beside them, and the seed's reference."""
    lines = [f"{result['dataset']} {result['split']}: {result['num_generated']} generated vs {result['num_real']} real"]
    for name, block in (("model", result), ("floor (train vs real)", result.get("floor", {}))):
        parts = []
        if "standard" in block:
            s = block["standard"]
            parts.append(f"FID {s['fid']:.3f}  KID {s['kid']:.5f}{_spread(s['kid_std'], 5)}")
            if "precision" in s:
                parts.append(f"P {s['precision']:.3f} R {s['recall']:.3f} D {s['density']:.3f} C {s['coverage']:.3f}")
        if "seed" in block:
            s = block["seed"]
            parts.append(f"FID64 {s['fid64']:.3f}  KID64 {s['kid64']:.3f}{_spread(s['kid64_std'], 3)}")
        if parts:
            lines.append(f"  {name:<22} " + " | ".join(parts))
    ref = result.get("seed_reference")  # BloodMNIST-28 only: the notebook's numbers describe no other data
    if ref:
        lines.append(f"  {'seed notebook':<22} FID64 {ref['fid64']:.3f}  KID64 {ref['kid64']:.3f} +- "
                     f"{ref['kid64_std']:.3f} (its real statistics leaked training images)")
    return "\n".join(lines)

"""Synthetic datasets from a pipeline: MedMNIST-layout npz, a folder per class, or a saved ``datasets.Dataset``.

Images are generated in chunks that are written as they finish (``OUT.parts/``), so memory stays at one chunk and
a killed run continues where it stopped when rerun with the same arguments. Every chunk has its own generator
seeded from (seed, chunk index): the result is byte-identical however often the run was interrupted.
"""

import hashlib
import json
import shutil
import zipfile
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

FORMATS = ("npz", "folder", "datasets", "grid")
# Fixed zip timestamps: the same images give the same npz bytes.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class ExportError(ValueError):
    """A bad export request: says what is wrong and how to fix it."""


def infer_format(out: str, fmt: Optional[str]) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise ExportError(f"Unknown --format {fmt!r}; valid: {', '.join(FORMATS)}.")
        return fmt
    suffix = Path(out).suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix == ".png":
        return "grid"
    raise ExportError(f"Cannot tell the format from --out {out!r}: use a .npz or .png name, or pass "
                      f"--format ({', '.join(FORMATS)}).")


def plan_labels(class_names: Optional[Sequence[str]], num_images: int, class_name=None, balanced: bool = False,
                like_split: Optional[str] = None, dataset: str = "bloodmnist", data_root=None,
                seed: int = 0) -> Optional[np.ndarray]:
    """The class index of every image to generate (None for an unconditional pipeline)."""
    chosen = sum(x is not None and x is not False for x in (class_name, balanced or None, like_split))
    if chosen > 1:
        raise ExportError("Pass at most one of --class, --balanced and --like-split.")
    if not class_names:
        if chosen:
            raise ExportError("This pipeline is unconditional: --class, --balanced and --like-split need a "
                              "class-conditional one.")
        return None
    num_classes = len(class_names)
    if class_name is not None:
        if isinstance(class_name, str) and not class_name.isdigit():
            matches = [i for i, name in enumerate(class_names) if name.lower().startswith(class_name.lower())]
            if len(matches) != 1:
                raise ExportError(f"--class {class_name!r} matches {len(matches)} classes; valid: "
                                  f"{'; '.join(class_names)}.")
            index = matches[0]
        else:
            index = int(class_name)
            if not 0 <= index < num_classes:
                raise ExportError(f"--class {index} is out of range 0..{num_classes - 1}.")
        return np.full(num_images, index, dtype=np.int64)
    if like_split is not None:
        from .evaluation import labels_like_split

        return np.sort(labels_like_split(dataset, like_split, num_images, seed, data_root))
    # --balanced, and the default for conditional pipelines: equal counts, the remainder to the first classes.
    if balanced and num_images % num_classes:
        raise ExportError(f"--balanced needs a multiple of {num_classes} images; got {num_images}.")
    return np.arange(num_images, dtype=np.int64) * num_classes // num_images


def chunk_ranges(num_images: int, chunk_size: int) -> List[Tuple[int, int]]:
    return [(start, min(start + chunk_size, num_images)) for start in range(0, num_images, chunk_size)]


def generate_chunks(pipe, labels: Optional[np.ndarray], num_images: int, parts_dir: Path, run_key: dict,
                    num_inference_steps: int, guidance_scale: Optional[float], seed: int,
                    chunk_size: int = 256) -> Iterator[Tuple[np.ndarray, Optional[np.ndarray]]]:
    """Yield (uint8 images NHWC, labels) per chunk, generating only chunks not already on disk."""
    from tqdm.auto import tqdm

    from .evaluation import to_uint8

    parts_dir.mkdir(parents=True, exist_ok=True)
    manifest = parts_dir / "run.json"
    if manifest.is_file() and json.loads(manifest.read_text()) != run_key:
        raise ExportError(f"{parts_dir} holds chunks of a run with other arguments; delete it or rerun with the "
                          f"same arguments ({json.loads(manifest.read_text())}).")
    manifest.write_text(json.dumps(run_key, indent=2, sort_keys=True))
    pipe.set_progress_bar_config(disable=True)
    ranges = chunk_ranges(num_images, chunk_size)
    done = sum((parts_dir / f"chunk-{i:05d}.npz").is_file() for i in range(len(ranges)))
    bar = tqdm(total=num_images, initial=sum(b - a for i, (a, b) in enumerate(ranges)
                                             if (parts_dir / f"chunk-{i:05d}.npz").is_file()),
               desc="generating", unit="img", disable=done == len(ranges))
    for index, (start, stop) in enumerate(ranges):
        path = parts_dir / f"chunk-{index:05d}.npz"
        if not path.is_file():
            generator = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + index)
            kwargs = {}
            if labels is not None:
                kwargs["class_labels"] = [int(x) for x in labels[start:stop]]
                if guidance_scale is not None:
                    kwargs["guidance_scale"] = guidance_scale
            images = pipe(batch_size=stop - start, num_inference_steps=num_inference_steps, generator=generator,
                          output_type="np", **kwargs).images
            tmp = path.with_name(path.stem + ".tmp.npz")
            np.savez(tmp, images=to_uint8(images))
            tmp.replace(path)  # atomic: an interrupted chunk is regenerated, never half-read
            bar.update(stop - start)
        with np.load(path) as chunk:
            yield chunk["images"], None if labels is None else labels[start:stop]
    bar.close()


def _write_streamed_npy(archive: zipfile.ZipFile, name: str, shape, dtype, blocks) -> None:
    """One .npy member of an npz written block by block (never the whole array in memory)."""
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.compress_type = zipfile.ZIP_STORED
    with archive.open(info, "w", force_zip64=True) as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                                      "shape": tuple(shape)})
        for block in blocks:
            handle.write(np.ascontiguousarray(block, dtype=dtype).tobytes())


def export(pipe, out: str, fmt: str, num_images: int, labels: Optional[np.ndarray], num_inference_steps: int,
           guidance_scale: Optional[float], seed: int, run_key: dict, chunk_size: int = 256) -> str:
    """Generate and write; returns a one-line summary."""
    out_path = Path(out)
    parts = out_path.with_name(out_path.name + ".parts")
    if out_path.exists() and not parts.exists():  # an unfinished run of ours keeps OUT.parts/ next to it
        raise ExportError(f"{out_path} already exists; choose another --out or delete it first (nothing was written).")
    chunks = lambda: generate_chunks(pipe, labels, num_images, parts, run_key, num_inference_steps,  # noqa: E731
                                     guidance_scale, seed, chunk_size)
    class_names = list(pipe.config.class_names or [])
    size = pipe.unet.config.sample_size
    channels = pipe.unet.config.out_channels
    out_path.parent.mkdir(parents=True, exist_ok=True)

    if fmt == "npz":
        # MedMNIST's layout, so MedMNIST-style code reads it unchanged: train_images (N, H, W, C) uint8 and
        # train_labels (N, 1) uint8. Written under a temporary name, then renamed.
        tmp = out_path.with_name(out_path.name + ".tmp")
        with zipfile.ZipFile(tmp, "w") as archive:
            _write_streamed_npy(archive, "train_images.npy", (num_images, size, size, channels), np.uint8,
                                (images for images, _ in chunks()))
            if labels is not None:
                _write_streamed_npy(archive, "train_labels.npy", (num_images, 1), np.uint8,
                                    [labels.reshape(-1, 1)])
        tmp.replace(out_path)
    elif fmt == "folder":
        from PIL import Image

        out_path.mkdir(parents=True, exist_ok=True)
        index = 0
        for images, chunk_labels in chunks():
            for i, image in enumerate(images):
                sub = out_path / (class_names[chunk_labels[i]] if chunk_labels is not None else "images")
                sub.mkdir(exist_ok=True)
                Image.fromarray(image).save(sub / f"{index:06d}.png")
                index += 1
    elif fmt == "datasets":
        import datasets
        from PIL import Image

        features = {"image": datasets.Image()}
        if labels is not None:
            features["label"] = datasets.ClassLabel(names=class_names)

        def rows():
            for images, chunk_labels in chunks():
                for i, image in enumerate(images):
                    row = {"image": Image.fromarray(image)}
                    if chunk_labels is not None:
                        row["label"] = int(chunk_labels[i])
                    yield row

        cache = out_path.with_name(out_path.name + ".cache")
        dataset = datasets.Dataset.from_generator(rows, features=datasets.Features(features),
                                                  cache_dir=str(cache))
        dataset.save_to_disk(str(out_path))
        shutil.rmtree(cache, ignore_errors=True)
    elif fmt == "grid":
        from PIL import Image

        from .figures import square_grid

        tiles = [Image.fromarray(image) for images, _ in chunks() for image in images]
        square_grid(tiles).save(out_path)
    else:
        raise ExportError(f"Unknown format {fmt!r}; valid: {', '.join(FORMATS)}.")
    shutil.rmtree(parts, ignore_errors=True)
    per_class = ""
    if labels is not None:
        counts = np.bincount(labels, minlength=len(class_names))
        per_class = " (" + ", ".join(f"{name}: {n}" for name, n in zip(class_names, counts) if n) + ")"
    return f"wrote {num_images} images as {fmt} to {out_path}{per_class}"


def run_key(args: dict) -> dict:
    """What identifies a generation run for resuming: every argument that changes the images."""
    key = {k: v for k, v in sorted(args.items()) if k not in ("out", "func", "command")}
    key["sha"] = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return key

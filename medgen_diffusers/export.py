"""Synthetic datasets from a pipeline: MedMNIST-layout npz, a folder per class, or a saved ``datasets.Dataset``.

Images are generated in chunks that are written as they finish (``OUT.parts/``), so memory stays at one chunk and
a killed run continues where it stopped when rerun with the same arguments. Images come from
:mod:`medgen_diffusers.generation` (one generator per image): the result is byte-identical however often the run
was interrupted.
"""

import hashlib
import json
import shutil
import zipfile
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np

from .generation import DEFAULT_CHUNK_SIZE, chunk_ranges, default_chunk_size, iter_chunks

FORMATS = ("npz", "folder", "datasets", "grid", "dicom")
PROVENANCE_KEY = "provenance"  # the npz member that says which weights made the images and on which data
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


def write_missing_chunks(pipe, labels: Optional[np.ndarray], num_images: int, parts_dir: Path, run_key: dict,
                         num_inference_steps: int, guidance_scale: Optional[float], seed: int,
                         chunk_size: int = DEFAULT_CHUNK_SIZE, state=None, bit_depth: int = 8,
                         precision: str = "fp32") -> None:
    """Generate (with :mod:`.generation`) and write every chunk not already in ``parts_dir``. With an Accelerate
    ``state`` of several processes, the missing chunks are split between them (``split_between_processes``); each
    rank writes its own chunks. Chunk boundaries and per-image seeds do not depend on the split, so the output is
    byte-identical to a one-process run."""
    main = state is None or state.is_main_process
    manifest = parts_dir / "run.json"
    # Listed before any rank writes a chunk (the barriers below), so every rank splits the same list.
    missing = [index for index in range(len(chunk_ranges(num_images, chunk_size)))
               if not chunk_path(parts_dir, index).is_file()]
    # Every rank checks (read-only) before anyone writes, so a refusal stops all of them, not just the main one.
    if manifest.is_file() and json.loads(manifest.read_text()) != run_key:
        raise ExportError(f"{parts_dir} holds chunks of a run with other arguments; delete it or rerun with the "
                          f"same arguments ({json.loads(manifest.read_text())}).")
    if state is not None:
        state.wait_for_everyone()
    if main:
        parts_dir.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps(run_key, indent=2, sort_keys=True))
    if state is not None:
        state.wait_for_everyone()
    if state is None:
        mine = missing
    else:
        with state.split_between_processes(missing) as share:
            mine = list(share)
    for index, images in iter_chunks(pipe, num_images, labels, num_inference_steps, guidance_scale, seed, chunk_size,
                                     progress=bool(mine) and main, chunks=mine, bit_depth=bit_depth,
                                     precision=precision):
        tmp = chunk_path(parts_dir, index).with_name(f"chunk-{index:05d}.tmp.npz")
        np.savez(tmp, images=images)
        tmp.replace(chunk_path(parts_dir, index))  # atomic: an interrupted chunk is regenerated, never half-read
    if state is not None:
        state.wait_for_everyone()


def chunk_path(parts_dir: Path, index: int) -> Path:
    return parts_dir / f"chunk-{index:05d}.npz"


def read_chunks(parts_dir: Path, labels: Optional[np.ndarray], num_images: int,
                chunk_size: int) -> Iterator[Tuple[np.ndarray, Optional[np.ndarray]]]:
    """(uint8 images NHWC, labels) per chunk, in order, from ``parts_dir``."""
    for index, (start, stop) in enumerate(chunk_ranges(num_images, chunk_size)):
        with np.load(chunk_path(parts_dir, index)) as chunk:
            yield chunk["images"], None if labels is None else labels[start:stop]


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
           guidance_scale: Optional[float], seed: int, run_key: dict, chunk_size: Optional[int] = None,
           state=None, provenance: Optional[dict] = None, intensity: Optional[dict] = None,
           bit_depth: int = 8, precision: str = "fp32") -> Optional[str]:
    """Generate and write; returns a one-line summary (None on the other ranks of a multi-process run, where only
    the main process assembles the output). ``provenance`` (which weights, which training data) goes into an npz
    as the JSON string array ``provenance`` (read without unpickling), into a folder as ``provenance.json``.
    ``bit_depth=16`` (a model trained on 16-bit data): PNG folders, DICOM and datasets at 16 bits; the npz keeps
    MedMNIST's uint8 layout and a grid is 8-bit."""
    out_path = Path(out)
    chunk_size = chunk_size or default_chunk_size(pipe)
    parts = out_path.with_name(out_path.name + ".parts")
    if out_path.exists() and not parts.exists():  # an unfinished run of ours keeps OUT.parts/ next to it
        raise ExportError(f"{out_path} already exists; choose another --out or delete it first (nothing was written).")
    write_missing_chunks(pipe, labels, num_images, parts, run_key, num_inference_steps, guidance_scale, seed,
                         chunk_size, state, bit_depth, precision)
    if state is not None and not state.is_main_process:
        return None
    chunks = lambda: read_chunks(parts, labels, num_images, chunk_size)  # noqa: E731
    # MedMNIST's npz layout and a PNG grid are 8-bit: a 16-bit run's chunks are read as round(v / 257) there.
    chunks8 = lambda: ((images if images.dtype == np.uint8 else np.round(images / 257).astype(np.uint8), part)  # noqa: E731
                       for images, part in chunks())
    two_d = lambda image: image.squeeze(-1) if image.shape[-1] == 1 else image  # noqa: E731 - PIL's grayscale
    class_names = list(pipe.config.class_names or [])
    size = pipe.image_size
    channels = pipe.image_channels
    out_path.parent.mkdir(parents=True, exist_ok=True)

    if fmt == "npz":
        # MedMNIST's layout, so MedMNIST-style code reads it unchanged: train_images (N, H, W, C) uint8 and
        # train_labels (N, 1) uint8. Written under a temporary name, then renamed.
        tmp = out_path.with_name(out_path.name + ".tmp")
        with zipfile.ZipFile(tmp, "w") as archive:
            _write_streamed_npy(archive, "train_images.npy", (num_images, size, size, channels), np.uint8,
                                (images for images, _ in chunks8()))
            if labels is not None:
                _write_streamed_npy(archive, "train_labels.npy", (num_images, 1), np.uint8,
                                    [labels.reshape(-1, 1)])
            if provenance is not None:
                text = np.array(json.dumps(provenance, sort_keys=True))
                _write_streamed_npy(archive, f"{PROVENANCE_KEY}.npy", (), text.dtype, [text])
        tmp.replace(out_path)
    elif fmt == "folder":
        from PIL import Image

        out_path.mkdir(parents=True, exist_ok=True)
        index = 0
        for images, chunk_labels in chunks():
            for i, image in enumerate(images):
                sub = out_path / (class_names[chunk_labels[i]] if chunk_labels is not None else "images")
                sub.mkdir(exist_ok=True)
                Image.fromarray(two_d(image)).save(sub / f"{index:06d}.png")  # uint16: a 16-bit PNG
                index += 1
        if provenance is not None:
            (out_path / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    elif fmt == "dicom":  # one file per image, class sub-folders, back through the run's window (data/medical.py)
        from .data.medical import write_dicom

        out_path.mkdir(parents=True, exist_ok=True)
        index = 0
        for images, chunk_labels in chunks():
            for i, image in enumerate(images):
                name = class_names[chunk_labels[i]] if chunk_labels is not None else None
                sub = out_path / (name or "images")
                sub.mkdir(exist_ok=True)
                write_dicom(image, sub / f"{index:06d}.dcm", intensity, name, index + 1)
                index += 1
        if provenance is not None:
            (out_path / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    elif fmt == "datasets":
        import datasets
        from PIL import Image

        features = {"image": datasets.Image()}
        if labels is not None:
            features["label"] = datasets.ClassLabel(names=class_names)

        def rows():
            for images, chunk_labels in chunks():
                for i, image in enumerate(images):
                    row = {"image": Image.fromarray(two_d(image))}
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

        tiles = [Image.fromarray(two_d(image)) for images, _ in chunks8() for image in images]
        square_grid(tiles).save(out_path)
    else:
        raise ExportError(f"Unknown format {fmt!r}; valid: {', '.join(FORMATS)}.")
    shutil.rmtree(parts, ignore_errors=True)
    per_class = ""
    if labels is not None:
        counts = np.bincount(labels, minlength=len(class_names))
        per_class = " (" + ", ".join(f"{name}: {n}" for name, n in zip(class_names, counts) if n) + ")"
    return f"wrote {num_images} images as {fmt} to {out_path}{per_class}"


def sample_provenance(pipeline, weights_sha256: str, precision: str = "fp32") -> dict:
    """What an exported file records about its making: the weights, the pipeline, the training data's name and
    checksum (from the run). No command line: the same images give the same bytes, whatever the output is called."""
    from .provenance import provenance, read_run_config, redact_paths
    from .runtime import is_shipped, source_name

    run = read_run_config(pipeline) or {}
    record = provenance(data={"source": run.get("dataset"), "checksum": run.get("data_md5")},
                        weights_sha256=weights_sha256, pipeline=source_name(pipeline))
    record.pop("command")
    if precision != "fp32":  # the images differ from fp32 ones (slightly): said where they are shared
        record["precision"] = precision
    # The data source is cut to a name (the npz is what gets shared); the pipeline path stays, so that
    # `medgen evaluate FILE.npz` finds the run, and through it the data, on this machine.
    record["data"] = redact_paths(record["data"])
    if pipeline is not None and Path(pipeline).exists() and not is_shipped(pipeline):  # shipped: by name
        record["pipeline"] = str(Path(pipeline).resolve())
    return record


def run_key(args: dict) -> dict:
    """What identifies a generation run for resuming: every argument that changes the images."""
    key = {k: v for k, v in sorted(args.items()) if k not in ("out", "func", "command")}
    key["sha"] = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return key

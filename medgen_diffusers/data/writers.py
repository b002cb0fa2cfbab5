"""Writing a prepared store's splits (store.py says what a store is): image folders decoded by worker processes,
each writing its own rows; DICOM/NIfTI folders file by file; any other source through the in-memory reader."""

import hashlib
import multiprocessing
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from .images import SPLITS, DataError, kept_rows, resize_images, square
from .medical_folders import (class_names_of, intensity_rule, iter_images, kept_files, patient_rule,
                              split_files)
from .readers import read_split
from .sources import _decode, _folder_classes, _folder_files

CHUNK = 64  # images a worker decodes per task; memory: 2 tasks per worker in flight
PROCESSES_FROM = 2000  # default: worker processes for a split of at least this many files (one costs ~2 s to start)


class RowWriter:
    """An .npy array written block by block when its number of rows is known only at the end (a NIfTI volume's
    empty slices are dropped as it is decoded): a fixed 128-byte header, rewritten with the final shape on close."""

    HEADER_BYTES = 128

    def __init__(self, path: Path, dtype=np.uint8):
        self.path, self.dtype, self.rows, self.row_shape = path, np.dtype(dtype), 0, None
        self.file = open(path, "wb")
        self.file.write(b"\0" * self.HEADER_BYTES)

    def add(self, block: np.ndarray) -> None:
        if self.row_shape is None:
            self.row_shape = block.shape[1:]
        if block.shape[1:] != self.row_shape:
            raise DataError(f"{self.path.parent}: images of {block.shape[1:]} among images of {self.row_shape}: pass "
                            "--resolution N so that every image is N x N.")
        self.file.write(np.ascontiguousarray(block, dtype=self.dtype).data)
        self.rows += len(block)

    def close(self) -> None:
        header = repr({"descr": self.dtype.str, "fortran_order": False, "shape": (self.rows, *self.row_shape)})
        header = header.ljust(self.HEADER_BYTES - 11) + "\n"  # magic 6 + version 2 + length 2, then the dict
        self.file.seek(0)
        self.file.write(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin1"))
        self.file.close()


def write_medical_split(path: Path, kind: str, split: str, size: Optional[int], out: Path,
                         unit_index: Dict[str, int], options) -> Dict:
    """One split of a DICOM/NIfTI folder, decoded and written one file at a time (medical_folders.iter_images):
    memory is one file's values, whatever the number of files. The same images, labels, classes, patients and
    checksum as the in-memory loader."""
    split_by, seed, regex = options.get("split_by"), options.get("split_seed") or 0, options.get("patient_regex")
    axis, slices, window = options.get("slice_axis") or "axial", options.get("slice_range"), options.get("window")
    files, train = (split_files(path, name, kind, split_by, seed, regex) for name in (split, "train"))
    classes = class_names_of(train)  # of every train file: a subset keeps the class numbering
    limit = options.get("max_train_samples")
    train = kept_files(train, limit)  # --max_train_samples: only these train files are read, for pixels and window
    files = train if split == "train" else files
    room = limit if split == "train" else None
    rule = dict(intensity_rule(tuple(window) if isinstance(window, list) else window, train, kind, axis, slices))
    if classes is not None and {f.label for f in files} - set(classes):
        raise DataError(f"{path} ({split}) has class folder(s) {sorted({f.label for f in files} - set(classes))} "
                        "that the train split lacks.")
    out.mkdir(parents=True)
    bit_depth = options.get("bit_depth") or 8
    writer, digest, labels, units = RowWriter(out / "images.npy"), hashlib.sha256(), [], []
    writer16 = RowWriter(out / "images16.npy", np.uint16) if bit_depth == 16 else None
    for block, file in iter_images(files, kind, rule, size, options.get("crop"), axis, slices, bit_depth):
        block = block if room is None else block[:room - writer.rows]
        if writer16 is not None:  # the 16-bit images, and their 8-bit view beside them
            if block.shape[-1] != 1:
                raise DataError(f"--bit_depth 16 is for grayscale images; {file.path} is colour: drop --bit_depth.")
            writer16.add(block)
            writer.add(np.round(block / 257).astype(np.uint8))
        else:
            writer.add(block)
        digest.update(np.ascontiguousarray(block).tobytes())
        if classes is not None:
            labels.extend([classes.index(file.label)] * len(block))
        if file.patient is not None:
            units.extend([unit_index.setdefault(file.patient, len(unit_index))] * len(block))
        if room is not None and writer.rows >= room:
            break
    writer.close()
    if writer16 is not None:
        writer16.close()
    if not writer.rows:
        raise DataError(f"{path}: the {split} split holds no images (too few patients for --split_by patient?).")
    rule_text, notice = patient_rule(regex, kind, (*files, *(train if split != "train" else ())))
    info = {"count": writer.rows, "resolution": writer.row_shape[0], "channels": writer.row_shape[-1],
            "class_names": classes, "intensity": rule, "patient_rule": rule_text}
    if classes is not None:
        labels = np.array(labels, dtype=np.int64)
        np.save(out / "labels.npy", labels)
        digest.update(labels[:, None].tobytes())  # the loader's (N, 1) labels
        digest.update("\n".join(classes).encode())
        info["class_counts"] = np.bincount(labels, minlength=len(classes)).tolist()
    info["md5"] = digest.hexdigest()[:32]  # images._content_digest of the same pixels, labels and names
    if notice:
        info["notice"] = f"{path}: {notice}"
    else:
        np.save(out / "units.npy", np.array(units, dtype=np.int32))
        info["patients"] = len(set(units))
    return info


def _probes(paths):
    """(mode, size) of each image: its header only, no pixels decoded."""
    from PIL import Image, UnidentifiedImageError

    probes = []
    for path in paths:
        try:
            with Image.open(path) as image:
                probes.append((image.mode, image.size))
        except (UnidentifiedImageError, OSError) as error:
            raise DataError(f"Cannot read image {path} ({error}); fix or remove it.") from None
    return probes


def _decode_at(args):
    """(the image as the in-memory loader checksums it, the image as stored): the loader resizes mixed sizes per
    image before its checksum and uniform ones after it, so a store and a folder of the same data share one."""
    path, size, channels, uniform, crop, bit_depth = args
    array = square(_decode(path, bit_depth), crop)  # non-square: cropped or padded (--crop), as the loader does
    if channels == 3 and array.shape[-1] == 1:  # some grayscale, some colour: colour wins (as the loader does)
        array = np.repeat(array, 3, axis=-1)
    stored = array
    if size is not None and array.shape[:2] != (size, size):
        stored = resize_images(torch.from_numpy(array.copy()).permute(2, 0, 1)[None].contiguous(),
                               size)[0].permute(1, 2, 0).numpy()
    return (array if uniform else stored), stored


def _decode_chunk(task):
    """Decode a chunk of files and write it at its rows of the split's arrays (each worker writes its own rows:
    no pixels travel back). Returns (the bytes the loader's checksum reads when they are not the stored rows --
    uniform images resized after the checksum --, else None; the number of rows)."""
    paths, resolution, channels, uniform, crop, bit_depth, targets = task
    decoded = [_decode_at((p, resolution, channels, uniform, crop, bit_depth)) for p in paths]
    block = np.stack([stored for _, stored in decoded])
    views = [block] if bit_depth != 16 else [np.round(block / 257).astype(np.uint8), block]  # images.npy, images16
    for (path, offset), view in zip(targets, views):
        with open(path, "r+b") as file:
            os.pwrite(file.fileno(), np.ascontiguousarray(view).data, offset)
    if all(checksummed is stored for checksummed, stored in decoded):
        return None, len(block)
    return b"".join(np.ascontiguousarray(checksummed).tobytes() for checksummed, _ in decoded), len(block)


def _one_thread():
    torch.set_num_threads(1)  # one decoding process per core: torch's resize must not spread over the others


class Decoders:
    """The worker processes of one preparation, started by the first split that needs them and shared by the
    others (each costs ~2 s to start: it imports torch). Spawned, not forked: a fork of a process whose torch already
    ran OpenMP threads can hang. Processes, not threads: Pillow's PNG reader is Python code under the GIL (measured:
    2 threads decode 1.25x one). ``workers`` None: the CPU count for a split of ``PROCESSES_FROM`` files or more,
    this process below; 1: this process."""

    def __init__(self, workers: Optional[int]):
        self.workers, self.pool = workers, None

    def in_order(self, function, tasks, files: int):
        """``function(task)`` for every task, in task order, at most two tasks per worker in flight."""
        workers = self.workers or (os.cpu_count() if files >= PROCESSES_FROM or self.pool else 1)
        if workers <= 1:
            yield from map(function, tasks)
            return
        try:
            if self.pool is None:
                self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_one_thread)
            pending = deque()
            for task in tasks:
                pending.append(self.pool.submit(function, task))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            raise DataError("A decoding worker process died (out of memory, or a script that calls prepare() "
                            "without `if __name__ == '__main__':`): pass --workers 1 (workers=1) to decode in "
                            "this process.") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def _probe_folder(path: Path, images, size: Optional[int], crop: Optional[str], bit_depth: int,
                  decoders: Decoders):
    """(resolution, channels, whether every image has one square size) from the images' headers, or the error."""
    probes = [probe for chunk in decoders.in_order(_probes, [images[i:i + 1024] for i in range(0, len(images), 1024)],
                                                   len(images)) for probe in chunk]
    modes = {m for m, _ in probes}
    # Sizes after --crop (a header's width and height, cropped or padded as the pixels will be).
    sizes = {square(np.empty((h, w, 0), np.uint8), crop).shape[1::-1] for _, (w, h) in probes}
    channels = 1 if modes <= {"L", "LA", "1", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"} else 3
    width, height = next(iter(sizes)) if len(sizes) == 1 else (None, None)
    if size is None and (width is None or width != height):
        raise DataError(f"{path}: images differ in size or are not square: pass --resolution N to resize "
                        "every image to N x N (non-square images are cropped to their central square first; "
                        "--crop pad or resize to change that).")
    if bit_depth == 16 and channels == 3:
        raise DataError(f"--bit_depth 16 is for grayscale images; {path} holds colour images (16-bit colour "
                        "PNGs cannot be written back): drop --bit_depth.")
    return size or width, channels, len(sizes) == 1 and width == height


def _write_images(out: Path, images, resolution: int, channels: int, uniform: bool, crop: Optional[str],
                  bit_depth: int, decoders: Decoders):
    """Decode ``images`` into ``out``/images.npy (and images16.npy): the arrays are made at full size here and every
    chunk's worker writes its own rows (pwrite: no pixels travel back to this process, no page fault per 4 KiB as
    through a memory map). Returns the sha256 of the rows in order (as the loader checksums them), read back from
    the page cache and hashed in a thread (hashlib releases the GIL on large buffers)."""
    out.mkdir(parents=True)
    shape = (len(images), resolution, resolution, channels)
    arrays = [(out / "images.npy", np.uint8)] + ([(out / "images16.npy", np.uint16)] if bit_depth == 16 else [])
    offsets = []
    for file, dtype in arrays:
        array = np.lib.format.open_memmap(file, mode="w+", dtype=dtype, shape=shape)
        offsets.append(array.offset)
        del array
    row_bytes = [int(np.prod(shape[1:])) * np.dtype(dtype).itemsize for _, dtype in arrays]
    tasks = [(images[start:start + CHUNK], resolution, channels, uniform, crop, bit_depth,
              [(str(file), offset + start * size) for (file, _), offset, size in zip(arrays, offsets, row_bytes)])
             for start in range(0, len(images), CHUNK)]
    digest, hashing, start = hashlib.sha256(), None, 0
    checksummed_file = arrays[-1][0]  # the 16-bit pixels with --bit_depth 16, as the loader checksums them
    with open(checksummed_file, "rb") as stored, ThreadPoolExecutor(1) as hasher:
        for checksummed, rows in decoders.in_order(_decode_chunk, tasks, len(images)):  # in order: row i is file i
            if checksummed is None:
                checksummed = os.pread(stored.fileno(), rows * row_bytes[-1], offsets[-1] + start * row_bytes[-1])
            if hashing is not None:
                hashing.result()
            hashing = hasher.submit(digest.update, checksummed)
            start += rows
        hashing.result()
    return digest


def write_folder_split(path: Path, split: str, size: Optional[int], out: Path, decoders: Decoders,
                        crop: Optional[str] = None, limit: Optional[int] = None, bit_depth: int = 8,
                        train_classes=None) -> Dict:
    """``train_classes``: the train split's class names, once it is written (val and test are labeled by them)."""
    split_dirs = [name for name in SPLITS if (path / name).is_dir()]
    if split_dirs:
        if split not in split_dirs:
            raise DataError(f"{path} has no '{split}/'")
        if train_classes is None and split != "train" and "train" in split_dirs:
            train_classes = _folder_classes(path / "train")
        path = path / split
    elif split != "train":
        raise DataError(f"{path} has no train/val/test sub-folders")
    else:
        train_classes = None
    images = _folder_files(path)[1]
    if not images:
        raise DataError(f"{path} holds no images: put them in one sub-folder per class.")
    classes = _folder_classes(path, images)
    labeled = "." not in classes
    classes = train_classes if train_classes is not None and labeled else classes
    rows = kept_rows(len(images), limit)  # --max_train_samples: only these files are probed and decoded
    if rows is not None:
        images = [images[i] for i in rows]
    resolution, channels, uniform = _probe_folder(path, images, size, crop, bit_depth, decoders)
    digest = _write_images(out, images, resolution, channels, uniform, crop, bit_depth, decoders)
    info = {"count": len(images), "resolution": resolution, "channels": channels,
            "class_names": classes if labeled else None}
    if labeled:
        labels = np.array([classes.index(p.parent.relative_to(path).as_posix()) for p in images], dtype=np.int64)
        np.save(out / "labels.npy", labels)
        digest.update(labels.tobytes())
        digest.update("\n".join(classes).encode())
        info["class_counts"] = np.bincount(labels, minlength=len(classes)).tolist()
    info["md5"] = digest.hexdigest()[:32]  # images._content_digest of the same pixels, labels and names
    return info


def write_loaded_split(source, split, size, root, out: Path, unit_index: Dict[str, int], options) -> Dict:
    """One split of any other source through load_images (the whole split in memory once, as the loader holds it)."""
    data = read_split(str(source), split, size, root, **options)
    out.mkdir(parents=True)
    nhwc = data.images.permute(0, 2, 3, 1).numpy()
    np.save(out / "images.npy", np.ascontiguousarray(nhwc))
    if data.images16 is not None:
        np.save(out / "images16.npy", np.ascontiguousarray(data.images16.permute(0, 2, 3, 1).numpy()))
    info = {"count": len(data), "resolution": nhwc.shape[1], "channels": nhwc.shape[-1], "md5": data.md5,
            "class_names": data.class_names, "intensity": data.intensity, "patient_rule": data.patient_rule}
    if data.labels is not None:
        np.save(out / "labels.npy", data.labels.numpy().astype(np.int64))
        info["class_counts"] = np.bincount(data.labels.numpy(), minlength=len(data.class_names)).tolist()
    if data.groups is not None:
        units = np.array([unit_index.setdefault(g, len(unit_index)) for g in data.groups.tolist()], dtype=np.int32)
        np.save(out / "units.npy", units)
        info["patients"] = len(set(units.tolist()))
    if data.notice:
        info["notice"] = data.notice
    return info

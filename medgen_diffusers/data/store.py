"""A prepared store: a data source decoded once, at the training resolution, into memory-mappable arrays on disk
(``medgen prepare SOURCE --out STORE``; ``train --dataset FOLDER`` prepares into a cache and reuses it).

Why fixed-shape ``.npy`` files (numpy's ``open_memmap``), one per split, rather than Arrow (``datasets``) or
webdataset shards: every image of a split has one shape after preparation, so an image is a slice of one array --
a batch is a fancy index into a memory map (page cache, not process memory), any rank reads any index without a
shard layout, and there is no per-image decode at training time (Arrow stores encoded PNG bytes or nested lists;
webdataset is sequential tar streams, made for object stores and shuffling buffers, not random access on a local
disk). Measured in ``benchmarks/scale/``.

Layout::

    STORE/manifest.json            what every command needs without touching pixels (below)
    STORE/<split>/images.npy       uint8 (N, H, W, C): one image a row, in the source's order
    STORE/<split>/labels.npy       int64 (N,), when the source has one class per image
    STORE/<split>/units.npy        int32 (N,), when it names patients: a patient index, the same in every split
                                   (no identifier: indices into nothing that is stored)

The manifest holds the source (recorded path and options), a signature of its files (names, sizes, mtimes: a
changed source is noticed), per-split counts, class names and class counts, patients per split, the intensity
rule, the content checksum of each split -- the same checksum the in-memory loader gives the same data, so a run
trained from the store and one trained from the folder record the same ``data_md5``.
"""

import hashlib
import json
import os
import shutil
import time
import warnings
import multiprocessing
from collections import deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from .files import visible_files, walk
from .images import SPLITS, DataError, ImageData, kept_rows, resize_images, square
from .medical_folders import (class_names_of, intensity_rule, iter_images, kept_files, medical_kind, patient_rule,
                              split_files)
from .readers import read_split
from .sources import _decode, _folder_classes, _folder_files

FORMAT = "medgen-store/1"
MANIFEST = "manifest.json"
CHUNK = 64  # images a worker decodes per task; memory: 2 tasks per worker in flight
PROCESSES_FROM = 2000  # default: worker processes for a split of at least this many files (one costs ~2 s to start)


def is_store(path) -> bool:
    manifest = Path(path) / MANIFEST
    return manifest.is_file() and json.loads(manifest.read_text()).get("format") == FORMAT


def read_manifest(store) -> Dict:
    return json.loads((Path(store) / MANIFEST).read_text())


def source_signature(source: str) -> Optional[str]:
    """sha256 of every file's relative path, size and mtime under a local source (None: not a local path). One
    stat per file (files.walk), none read."""
    path = Path(source).expanduser()
    if not path.exists():
        return None
    files = [((path.name,), path.stat())] if path.is_file() else walk(path, stat=True)
    digest = hashlib.sha256()
    for parts, stat in files:
        digest.update(f"{'/'.join(parts)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def prepare(source: str, out, size: Optional[int] = None, root=None, workers: Optional[int] = None,
            **source_options) -> Path:
    """Decode ``source`` (anything :func:`~medgen_diffusers.data.load_images` reads) into a store at ``out``.
    Image folders are decoded file by file in ``workers`` processes (default: the CPU count from
    ``PROCESSES_FROM`` files on, in this process below) and written chunk by chunk, in order (memory: the chunks in
    flight); other sources are read one split at a time. Written to ``out``.tmp and renamed, so a
    killed preparation never leaves a store that looks whole."""
    from ..provenance import recorded_source

    out = Path(out)
    if out.exists():
        raise DataError(f"{out} exists: a store is never overwritten; choose a new --out (or delete it yourself).")
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")  # one per process: two nodes may prepare one cache entry
    tmp.mkdir(parents=True)
    started = time.perf_counter()
    manifest = {"format": FORMAT, "source": recorded_source(str(source)), "signature": source_signature(str(source)),
                "options": {k: v for k, v in source_options.items() if v is not None}, "size": size, "splits": {}}
    try:
        folder = _image_folder(Path(str(source)).expanduser(), source_options)
        kind = None if folder else _medical_kind(Path(str(source)).expanduser())
        unit_index: Dict[str, int] = {}
        with _Decoders(workers) as decoders:
            for split in SPLITS:
                try:
                    if folder:
                        limit = source_options.get("max_train_samples") if split == "train" else None
                        train = manifest["splits"].get("train", {})
                        info = _write_folder_split(Path(str(source)).expanduser(), split, size, tmp / split, decoders,
                                                   source_options.get("crop"), limit,
                                                   source_options.get("bit_depth") or 8, train.get("class_names"))
                    elif kind:
                        info = _write_medical_split(Path(str(source)).expanduser(), kind, split, size, tmp / split,
                                                    unit_index, source_options)
                    else:
                        info = _write_loaded_split(source, split, size, root, tmp / split, unit_index, source_options)
                except DataError as error:
                    if split == "train" or "no '" not in str(error) and "no train/val/test" not in str(error):
                        raise
                    continue  # the source has no such split
                manifest["splits"][split] = info
        train = manifest["splits"]["train"]
        manifest.update(resolution=train.pop("resolution"), channels=train.pop("channels"),
                        class_names=train.pop("class_names"), intensity=train.pop("intensity", None),
                        patient_rule=train.pop("patient_rule", None))
        for info in manifest["splits"].values():
            for key in ("resolution", "channels", "class_names", "intensity", "patient_rule"):
                info.pop(key, None)
        manifest["checksum"] = train["md5"]
        manifest["bit_depth"] = source_options.get("bit_depth") or 8
        manifest["prepare_seconds"] = round(time.perf_counter() - started, 1)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            tmp.rename(out)
        except OSError:
            if not is_store(out):
                raise
            shutil.rmtree(tmp)  # another process finished the same store first: it is the same data
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _image_folder(path: Path, options) -> bool:
    """A plain image folder (the streamed path); DICOM/NIfTI, npz and datasets go through load_images."""
    if not path.is_dir() or any((path / n).is_file() for n in ("dataset_info.json", "dataset_dict.json", "state.json")):
        return False
    return medical_kind(_folder_files(path)[0][:500]) is None


def _medical_kind(path: Path) -> Optional[str]:
    """"dicom" / "nifti" for a folder of such files (decoded file by file), else None."""
    if not path.is_dir() or any((path / n).is_file() for n in ("dataset_info.json", "dataset_dict.json", "state.json")):
        return None
    return medical_kind(visible_files(path)[:500])


class _RowWriter:
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


def _write_medical_split(path: Path, kind: str, split: str, size: Optional[int], out: Path,
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
    writer, digest, labels, units = _RowWriter(out / "images.npy"), hashlib.sha256(), [], []
    writer16 = _RowWriter(out / "images16.npy", np.uint16) if bit_depth == 16 else None
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


class _Decoders:
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


def _write_folder_split(path: Path, split: str, size: Optional[int], out: Path, decoders: _Decoders,
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
    resolution = size or width
    if bit_depth == 16 and channels == 3:
        raise DataError(f"--bit_depth 16 is for grayscale images; {path} holds colour images (16-bit colour "
                        "PNGs cannot be written back): drop --bit_depth.")
    out.mkdir(parents=True)
    # The arrays are made at full size here; every chunk's worker writes its own rows (pwrite: no pixels travel
    # back to this process, no page fault per 4 KiB as through a memory map). This process hashes the rows in order,
    # read back from the page cache, in a thread (hashlib releases the GIL on large buffers).
    shape = (len(images), resolution, resolution, channels)
    arrays = [(out / "images.npy", np.uint8)] + ([(out / "images16.npy", np.uint16)] if bit_depth == 16 else [])
    offsets = []
    for file, dtype in arrays:
        array = np.lib.format.open_memmap(file, mode="w+", dtype=dtype, shape=shape)
        offsets.append(array.offset)
        del array
    row_bytes = [int(np.prod(shape[1:])) * np.dtype(dtype).itemsize for _, dtype in arrays]
    uniform = len(sizes) == 1 and width == height
    tasks = [(images[start:start + CHUNK], resolution, channels, uniform, crop, bit_depth,
              [(str(file), offset + start * size_) for (file, _), offset, size_ in zip(arrays, offsets, row_bytes)])
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


def _write_loaded_split(source, split, size, root, out: Path, unit_index: Dict[str, int], options) -> Dict:
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


def load_store(store, split: str, size: Optional[int] = None) -> ImageData:
    """One split of a store as ImageData whose images are a memory map (N, C, H, W) view: indexing a batch reads
    that batch from disk (page cache), nothing else is held in the process."""
    store = Path(store)
    manifest = read_manifest(store)
    if split not in manifest["splits"]:
        raise DataError(f"The store {store} has no '{split}' split (it has {sorted(manifest['splits'])}): its "
                        "source had none.")
    if size is not None and size != manifest["resolution"]:
        raise DataError(f"The store {store} holds {manifest['resolution']}-px images, not {size}: prepare a store "
                        f"at {size} px (medgen prepare SOURCE --resolution {size} --out NEW).")
    info, folder = manifest["splits"][split], store / split
    nhwc = np.load(folder / "images.npy", mmap_mode="r")
    with warnings.catch_warnings():  # read-only memory map: torch warns that it cannot be written to
        warnings.simplefilter("ignore", UserWarning)
        images = torch.from_numpy(nhwc).permute(0, 3, 1, 2)
    labels = torch.from_numpy(np.load(folder / "labels.npy")) if (folder / "labels.npy").is_file() else None
    data = ImageData(images=images, labels=labels, class_names=manifest["class_names"] if labels is not None else None,
                     flag=Path(str(manifest["source"])).name, split=split, md5=info["md5"], notice=info.get("notice"))
    if (folder / "units.npy").is_file():
        data.groups = np.load(folder / "units.npy").astype(str)
    if (folder / "images16.npy").is_file():  # --bit_depth 16: the full-range images, memory-mapped too
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            data.images16 = torch.from_numpy(np.load(folder / "images16.npy", mmap_mode="r")).permute(0, 3, 1, 2)
    data.intensity, data.patient_rule = manifest.get("intensity"), manifest.get("patient_rule")
    return data


def cache_root() -> Path:
    return Path(os.environ.get("MEDGEN_CACHE", Path.home() / ".cache" / "medgen-diffusers")) / "stores"


def cached_store(source: str, size: Optional[int], root=None, create: bool = False, say=None,
                 signature: Optional[str] = None, **source_options) -> Optional[Path]:
    """The store of a local folder source in the cache (``$MEDGEN_CACHE/stores``), keyed by the source and how it is
    read; prepared when ``create`` (training) and missing, or when the source's files changed since (said, and the
    stale store replaced). None: not a local folder, or no valid store and not ``create``. ``signature``: the
    source's, when the caller has just computed it (one walk over a large folder, not two)."""
    import sys

    from ..provenance import recorded_source

    say = say or (lambda message: print(f"medgen: {message}", file=sys.stderr, flush=True))
    path = Path(str(source)).expanduser()
    if not path.is_dir() or is_store(path):
        return None
    options = {k: v for k, v in source_options.items() if v is not None}

    def entry(resolution):
        key = hashlib.sha256(json.dumps([FORMAT, recorded_source(str(source)), resolution, options], sort_keys=True,
                                        default=str).encode()).hexdigest()[:16]
        return cache_root() / f"{path.name[:40]}-{key}"

    store = entry(size)
    if size is not None and not is_store(store) and is_store(entry(None)) and \
            read_manifest(entry(None))["resolution"] == size:
        store = entry(None)  # trained at the data's own size, asked for by size (a model's sample_size): the same
    if is_store(store):
        if read_manifest(store).get("signature") == (signature or source_signature(str(source))):
            return store
        if not create:
            return None
        say(f"{source} changed since it was prepared (files added, removed or modified): preparing it again")
        shutil.rmtree(store)
    elif not create:
        return None
    say(f"preparing {source} once into {store} (memory-mapped; later runs and commands reuse it)")
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        prepare(source, store, size, root, **options)
    except DataError:
        if not is_store(store):  # unless another process (another node's rank 0) was first
            raise
    except OSError as error:  # a read-only or full cache disk: the run still works, from memory, and says so
        say(f"could not prepare a store in {cache_root()} ({error}): reading {source} into memory instead; set "
            "MEDGEN_CACHE to a writable folder with room for the decoded images")
        return None
    return store

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
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from .files import recorded_source, visible_files, walk
from .images import SPLITS, DataError, ImageData
from .medical_folders import medical_kind
from .writers import Decoders, write_folder_split, write_loaded_split, write_medical_split

FORMAT = "medgen-store/1"
MANIFEST = "manifest.json"


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
        with Decoders(workers) as decoders:
            for split in SPLITS:
                try:
                    if folder:
                        limit = source_options.get("max_train_samples") if split == "train" else None
                        train = manifest["splits"].get("train", {})
                        info = write_folder_split(Path(str(source)).expanduser(), split, size, tmp / split, decoders,
                                                   source_options.get("crop"), limit,
                                                   source_options.get("bit_depth") or 8, train.get("class_names"))
                    elif kind:
                        info = write_medical_split(Path(str(source)).expanduser(), kind, split, size, tmp / split,
                                                    unit_index, source_options)
                    else:
                        info = write_loaded_split(source, split, size, root, tmp / split, unit_index, source_options)
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
    return medical_kind(visible_files(path)[:500]) is None


def _medical_kind(path: Path) -> Optional[str]:
    """"dicom" / "nifti" for a folder of such files (decoded file by file), else None."""
    if not path.is_dir() or any((path / n).is_file() for n in ("dataset_info.json", "dataset_dict.json", "state.json")):
        return None
    return medical_kind(visible_files(path)[:500])


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

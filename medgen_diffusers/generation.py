"""The one way images are generated from a pipeline: ``medgen sample``, ``medgen evaluate``, training-time
evaluation, figures and the audit all call :func:`generate_chunk` (directly or through :func:`generate_images`).

* **Labels** come from :func:`plan_labels` (one class, balanced, or a real split's class mix, sorted by class).
* **Seeding** is per image: image ``i`` of a run with seed ``s`` draws all its noise from its own generator, seeded
  from ``numpy.random.SeedSequence([s, i])`` (torch's CPU generator keeps only 32 bits of a seed, so a plain
  ``s * 2**32 + i`` would give every seed the same images). An image therefore does not depend on which other images are generated with it, on
  resuming, or on how the work is split between processes.
* **Chunking** is fixed by ``chunk_size`` (images ``[k * chunk_size, (k + 1) * chunk_size)`` form chunk ``k``), so
  batches -- and hence every floating-point operation -- are the same however the chunks are scheduled. The default
  (:func:`default_chunk_size`) follows the image size: memory is one chunk's activations.
* **Device**: the pipeline's own (move it first); noise is drawn on the CPU, so a seed gives the same starting noise
  on every device.
* **Precision** (:func:`network_precision`): ``"fp32"`` (the default) is bit-reproducible -- the shipped models'
  published numbers were made with it; ``"bf16"`` runs the network passes ~2-3x faster on CPUs with bf16 units
  (AMX, AVX512-BF16) and on GPUs, at ~0.7 % (relative) of the network's prediction.
"""

import contextlib
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .pipelines import class_index, default_steps

DEFAULT_CHUNK_SIZE = 256  # images per chunk up to 48 px (the shipped 28-px models' numbers were made with it)
# ... and above, at most this many pixels per chunk: with 64 images of a tiny 256-px UNet in one chunk
# `medgen evaluate` peaked at 7.77 GiB RssAnon, 1.93 GiB with this budget (benchmarks/results/scale/commands.jsonl).
# 256 px: 9 images, 512 px: 2.
CHUNK_PIXELS = DEFAULT_CHUNK_SIZE * 48 * 48


def default_chunk_size(pipe) -> int:
    """Images per chunk for ``pipe``'s image size: 256 up to 48 px, then a fixed pixel budget (CHUNK_PIXELS)."""
    size = pipe.image_size
    size = size if isinstance(size, int) else size[0] * size[1] // max(size)
    return max(1, min(DEFAULT_CHUNK_SIZE, CHUNK_PIXELS // (size * size)))


class GenerationError(ValueError):
    """A bad generation request: says what is wrong and how to fix it."""


PRECISIONS = ("fp32", "bf16")
CHANNELS_LAST_FROM = 64  # px: networks at least this large run bf16 in channels-last memory


@contextlib.contextmanager
def network_precision(pipe, precision: str = "fp32"):
    """The network passes inside run at ``precision``. ``"fp32"``: as trained, nothing changes. ``"bf16"``:
    ``torch.autocast`` to bfloat16, networks of 64 px and more in channels-last memory (oneDNN's fast layout) --
    the weights, the sampler's arithmetic and everything measured on the images (Inception features, distances)
    stay fp32. A UNet pass on a 2-core Xeon with AMX: 2.8x faster at 28 px, 3.1-3.7x at 64-256 px, at 0.4-1 %
    (relative L2) of the fp32 prediction (benchmarks/scale/bench_precision.py); the layout is restored on exit."""
    if precision not in PRECISIONS:
        raise GenerationError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}.")
    if precision == "fp32":
        yield
        return
    # channels-last helps with bf16 from 64 px on (3.1-3.7x in all, bf16 alone 1.7-2.5x) and hurts at 28 px (2.1x
    # against bf16 alone's 2.8x): benchmarks/results/scale/precision.json.
    side = lambda m: m.config.sample_size if isinstance(m.config.sample_size, int) else max(m.config.sample_size)  # noqa: E731
    modules = [m for m in (pipe.unet, getattr(pipe, "vae", None)) if m is not None and side(m) >= CHANNELS_LAST_FROM]
    for module in modules:
        module.to(memory_format=torch.channels_last)
    try:
        with torch.autocast(pipe.unet.device.type, dtype=torch.bfloat16):
            yield
    finally:
        for module in modules:
            module.to(memory_format=torch.contiguous_format)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint8 exactly as diffusers' ``numpy_to_pil`` (so saved PNGs and evaluated arrays agree)."""
    return (np.asarray(images) * 255).round().astype(np.uint8)


def to_uint16(images: np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint16 (--bit_depth 16 models: 16-bit PNG and DICOM)."""
    return (np.asarray(images, dtype=np.float64) * 65535).round().astype(np.uint16)


def image_generators(seed: int, start: int, stop: int) -> List[torch.Generator]:
    """One CPU generator per image index in ``[start, stop)``."""
    if seed < 0:
        raise GenerationError(f"seed must be >= 0; got {seed}.")
    return [torch.Generator(device="cpu").manual_seed(int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))
            for index in range(start, stop)]


def chunk_ranges(num_images: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> List[Tuple[int, int]]:
    if chunk_size < 1:
        raise GenerationError(f"chunk size must be >= 1; got {chunk_size}.")
    return [(start, min(start + chunk_size, num_images)) for start in range(0, num_images, chunk_size)]


def generate_chunk(pipe, start: int, stop: int, labels: Optional[np.ndarray] = None,
                   num_inference_steps: Optional[int] = None, guidance_scale: Optional[float] = None,
                   seed: int = 0, bit_depth: int = 8, precision: str = "fp32") -> np.ndarray:
    """uint8 (stop - start, H, W, C) images number ``start`` ... ``stop - 1`` of the run (uint16 at
    ``bit_depth=16``), the network run at ``precision`` (:func:`network_precision`)."""
    kwargs = {}
    if labels is not None:
        kwargs["class_labels"] = [int(label) for label in labels[start:stop]]
        if guidance_scale is not None:
            kwargs["guidance_scale"] = guidance_scale
    elif guidance_scale not in (None, 1.0):
        raise GenerationError("guidance needs class labels (a class-conditional pipeline).")
    steps = default_steps(pipe.config, num_inference_steps)
    with network_precision(pipe, precision):
        images = pipe(batch_size=stop - start, num_inference_steps=steps,
                      generator=image_generators(seed, start, stop), output_type="np", **kwargs).images
    return to_uint16(images) if bit_depth == 16 else to_uint8(images)


def generate_images(pipe, num_images: int, labels: Optional[np.ndarray] = None,
                    num_inference_steps: Optional[int] = None, guidance_scale: Optional[float] = None, seed: int = 0,
                    chunk_size: Optional[int] = None, progress: bool = True, precision: str = "fp32") -> np.ndarray:
    """All ``num_images`` images in memory, uint8 (N, H, W, C); the same images ``medgen sample`` writes.
    ``chunk_size`` None: :func:`default_chunk_size`."""
    return np.concatenate([images for _, images in iter_chunks(pipe, num_images, labels, num_inference_steps,
                                                                guidance_scale, seed, chunk_size, progress,
                                                                precision=precision)])


def iter_chunks(pipe, num_images: int, labels: Optional[np.ndarray] = None, num_inference_steps: Optional[int] = None,
                guidance_scale: Optional[float] = None, seed: int = 0, chunk_size: Optional[int] = None,
                progress: bool = True, chunks: Optional[Sequence[int]] = None,
                bit_depth: int = 8, precision: str = "fp32") -> Iterator[Tuple[int, np.ndarray]]:
    """(chunk index, uint8 images -- uint16 at ``bit_depth=16``) for every chunk, or only the indices in ``chunks``."""
    from tqdm.auto import tqdm

    if num_images < 1:
        raise GenerationError(f"number of images must be >= 1; got {num_images}.")
    if labels is not None and len(labels) != num_images:
        raise GenerationError(f"{len(labels)} labels for {num_images} images.")
    ranges = chunk_ranges(num_images, chunk_size or default_chunk_size(pipe))
    wanted = range(len(ranges)) if chunks is None else chunks
    pipe.set_progress_bar_config(disable=True)
    todo = sum(ranges[i][1] - ranges[i][0] for i in wanted)
    bar = tqdm(total=num_images, initial=num_images - todo, desc="generating", unit="img", disable=not progress)
    for index in wanted:
        start, stop = ranges[index]
        yield index, generate_chunk(pipe, start, stop, labels, num_inference_steps, guidance_scale, seed, bit_depth,
                                    precision)
        bar.update(stop - start)
    bar.close()


@torch.no_grad()
def estimate_seconds(pipe, num_images: int, num_inference_steps: Optional[int] = None,
                     guidance_scale: Optional[float] = None, probe: int = 8) -> float:
    """Seconds to generate ``num_images``, from one timed network evaluation of ``probe`` images on this device
    (the second of two: the first pays one-off costs): evaluations per image x images x that time."""
    import time

    unet = pipe.unet
    steps = num_inference_steps or pipe.config.get("default_num_inference_steps") or 1000
    size, channels = unet.config.sample_size, unet.config.in_channels
    x = torch.zeros(probe, channels, size, size, device=unet.device, dtype=unet.dtype)
    t = torch.full((probe,), 500, device=unet.device)
    labels = None if unet.config.num_class_embeds is None else torch.zeros(probe, dtype=torch.long, device=unet.device)
    for _ in range(2):
        start = time.perf_counter()
        unet(x, t, class_labels=labels)
        if unet.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    per_image = elapsed / probe * steps * (2 if guidance_scale not in (None, 1.0) else 1)
    return per_image * num_images


def say_estimate(what: str, seconds: float) -> None:
    """One line before a long command starts: what it will do and about how long it takes here."""
    import sys

    print(f"{what}: about {format_seconds(seconds)} on this machine", file=sys.stderr, flush=True)


def format_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def labels_like_split(counts: Sequence[int], num: int) -> np.ndarray:
    """``num`` class indices in proportion to ``counts`` (largest remainder), sorted by class."""
    counts = np.asarray(counts, dtype=np.float64)
    exact = counts / counts.sum() * num
    per_class = np.floor(exact).astype(int)
    per_class[np.argsort(per_class - exact, kind="stable")[: num - per_class.sum()]] += 1
    return np.repeat(np.arange(len(counts)), per_class).astype(np.int64)


def plan_labels(class_names: Optional[Sequence[str]], num_images: int, class_name=None, balanced: bool = False,
                split_counts: Optional[Sequence[int]] = None) -> Optional[np.ndarray]:
    """The class index of every image to generate, sorted by class (None for an unconditional pipeline).

    ``class_name``: one class (name, unique prefix or index); ``balanced``: equal counts (N a multiple of the class
    count); ``split_counts``: a real split's per-class counts; none of them: equal counts, the remainder to the
    first classes.
    """
    chosen = sum(x is not None and x is not False for x in (class_name, balanced or None, split_counts))
    if chosen > 1:
        raise GenerationError("Pass at most one of --class, --balanced and --like-split.")
    if not class_names:
        if chosen:
            raise GenerationError("This pipeline is unconditional: --class, --balanced and --like-split need a "
                                  "class-conditional one.")
        return None
    num_classes = len(class_names)
    if class_name is not None:
        label = int(class_name) if isinstance(class_name, str) and class_name.isdigit() else class_name
        try:
            index = class_index(class_names, label)  # the pipeline's own matcher: index, name or unique prefix
        except ValueError as error:
            raise GenerationError(f"--class: {error}") from None
        return np.full(num_images, index, dtype=np.int64)
    if split_counts is not None:
        if len(split_counts) != num_classes:
            raise GenerationError(f"The real split has {len(split_counts)} classes but the pipeline {num_classes}: "
                                  "is this the right --dataset?")
        return labels_like_split(split_counts, num_images)
    if balanced and num_images % num_classes:
        raise GenerationError(f"--balanced needs a multiple of {num_classes} images; got {num_images}.")
    return np.arange(num_images, dtype=np.int64) * num_classes // num_images

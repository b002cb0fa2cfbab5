"""UNet2DModel presets per image size: ``tiny``, ``small`` and ``base`` for 28, 64, 128 and 224 pixels (and other
sizes that halve down to 7-8 pixels).

At 28 px: three resolution levels (28 -> 14 -> 7); 64: four (-> 8); 128: five (-> 8); 224: six (-> 7); 256: six
(-> 8); 512: seven (-> 8), with attention at 16 px (small) and 32 px (base) from 256 px on. Parameter counts are for a
class-conditional RGB model (8 classes + the null class); CPU step times (batch 128, fp32, forward + backward
+ AdamW, 2 cores) are measured by ``benchmarks/bench_presets.py`` and recorded in ``benchmarks/results/``.
"""

import contextlib
import json
import math
from pathlib import Path
from typing import Optional

UNET_PRESETS = {
    # 1.06M parameters, ~0.84 s/step on 2 CPU cores: tests, CPU training, quick experiments.
    "tiny": dict(
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ),
    # 6.5M parameters, ~3.3 s/step on 2 CPU cores: self-attention at 7x7; long CPU runs or a small GPU.
    "small": dict(
        block_out_channels=(64, 128, 128),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=16,
    ),
    # 27.2M parameters, ~18.4 s/step on 2 CPU cores: attention at 14x14 and 7x7; meant for a GPU.
    "base": dict(
        block_out_channels=(128, 256, 256),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
    ),
}
# Larger images get more resolution levels, down to 7-8 pixels, with self-attention only at the low resolutions
# (where it is cheap and where global shape is decided). Widths per level and the attention threshold per preset.
LEVEL_WIDTHS = {"tiny": (32, 64, 64, 128, 128, 128, 128), "small": (64, 128, 128, 256, 256, 256, 256),
                "base": (128, 256, 256, 512, 512, 512, 512)}
ATTENTION_AT_MOST = {"tiny": 8, "small": 8, "base": 16}  # attention at levels of at most this many pixels
# From 256 px on, attention also reaches the 16-px (small) and 32-px (base) levels: a 512-px image's 8-px level
# sees 1/64 of its width per position, too coarse to place structures alone (a UNet at these sizes -- ADM,
# Stable Diffusion's -- attends at 16-32 px). Cost: 256 tokens at 16 px, 1,024 at 32 px per image.
ATTENTION_AT_MOST_LARGE = {"tiny": 8, "small": 16, "base": 32}
LARGE = 256
NORM_GROUPS = {"tiny": 8, "small": 16, "base": 32}
PRESET_SIZES = (28, 64, 128, 224)  # documented and measured (benchmarks/results/presets.json)


def num_levels(size: int, min_side: int = 7) -> int:
    """Resolution levels for ``size``: halve while the size stays even and the lowest level keeps >= ``min_side``
    pixels (7 for images; 4 for latents, which are already 4-8x smaller than the image)."""
    levels = 1
    while levels < 7 and size % (2 ** levels) == 0 and size // (2 ** levels) >= min_side:
        levels += 1
    return levels


def preset_config(preset: str, size: int, latent: bool = False) -> dict:
    """The preset's UNet2DModel config for ``size`` x ``size`` images (28 px: the original three presets), or for
    ``size`` x ``size`` latents (``latent``: levels down to 4 px, at least two)."""
    if preset not in UNET_PRESETS:
        raise ValueError(f"Unknown model preset {preset!r}. Valid presets: {', '.join(UNET_PRESETS)}.")
    if size == 28 and not latent:
        return dict(UNET_PRESETS[preset])
    levels = num_levels(size, min_side=4 if latent else 7)
    if latent and levels < 2:
        raise ValueError(f"{size}x{size} latents do not halve to >= 4 pixels: train at a --resolution whose "
                         "latents are 8, 16, 32 or 64 pixels across (e.g. 32, 64, 128, 256 px with --downsample 4).")
    if levels < (2 if latent else 3):
        raise ValueError(f"Size {size} halves fewer than twice down to >= 7 pixels: use a --resolution such as "
                         f"{', '.join(map(str, PRESET_SIZES))} (or 32, 48, 96, ...).")
    most = (ATTENTION_AT_MOST_LARGE if size >= LARGE and not latent else ATTENTION_AT_MOST)[preset]
    attention = [size // 2 ** i <= most for i in range(levels)]
    if preset == "tiny":
        attention = [False] * (levels - 1) + [True]  # only the lowest level
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    return dict(block_out_channels=LEVEL_WIDTHS[preset][:levels], layers_per_block=1 if preset == "tiny" else 2,
                down_block_types=down, up_block_types=tuple(b.replace("Down", "Up") for b in reversed(down)),
                norm_num_groups=NORM_GROUPS[preset])


def build_unet(
    preset: Optional[str] = "tiny",
    config_path: Optional[str] = None,
    sample_size: int = 28,
    channels: int = 3,
    num_classes: Optional[int] = None,
    latent: bool = False,
) -> "UNet2DModel":
    """A fresh UNet2DModel from a preset name or a UNet config JSON (``config_path`` wins).

    ``num_classes`` makes it class-conditional with ``num_classes + 1`` embeddings; the last one is the null
    class used for label dropout and classifier-free guidance.
    """
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise FileNotFoundError(f"UNet config {path} does not exist; pass a UNet2DModel config.json.")
        config = json.loads(path.read_text())
    else:
        config = preset_config(preset, sample_size, latent)
    config.update(sample_size=sample_size, in_channels=channels, out_channels=channels)
    config["num_class_embeds"] = None if num_classes is None else num_classes + 1
    from diffusers import UNet2DModel  # here, not at import: the presets are read by `medgen train --help`

    return UNet2DModel(**{k: v for k, v in config.items() if not k.startswith("_")})


def native_cpu_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX). Without them oneDNN emulates bf16 and a step
    gets slower, not faster. Asked through torch.cpu's probes; where a PyTorch build lacks them: False (fp32)."""
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


def auto_mixed_precision(on_cpu: bool, private: bool = False) -> str:
    """What ``--mixed_precision auto`` trains in: bf16 autocast (fp32 master weights) on a CPU with bf16
    instructions and on GPUs with bf16, else fp32 ("no"); always fp32 under DP-SGD (Opacus' per-sample gradients).
    On 2 AVX512-BF16 cores bf16 makes the tiny UNet's step ~1.9x faster at the same FID (benchmarks/results/
    train_step.json, ablation arm H) and trained the shipped model."""
    import torch

    if private:
        return "no"
    if on_cpu:
        return "bf16" if native_cpu_bf16() else "no"
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def attention_kernels(device_type: str, mixed_precision: str, math_on_cpu_bf16: bool = True):
    """The SDPA kernels for the UNet's attention: PyTorch's math kernel for bf16 on the CPU, whose flash kernel is
    slow there at these token counts (49 tokens at 7x7: bf16 step 0.55 s with flash, 0.41 s with math, tiny UNet,
    batch 128, 2 cores; benchmarks/bench_train_step.py); PyTorch's own choice everywhere else (in fp32 its CPU
    flash kernel is the faster one)."""
    if not (math_on_cpu_bf16 and device_type == "cpu" and mixed_precision == "bf16"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


# glibc's mallopt parameters (malloc.h) and the thresholds keep_freed_memory sets.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_MMAP_THRESHOLD, KEEP_TRIM_THRESHOLD, FALLBACK_MMAP_THRESHOLD = 1 << 30, 1 << 30, 32 << 20


def keep_freed_memory() -> bool:
    """Keep the memory a training step frees inside the process instead of handing it back to the OS, so the next
    step does not page-fault it back in, zero-filled. glibc's malloc serves blocks above its mmap threshold (at most
    32 MiB by default) with fresh mmaps and trims the heap top above its trim threshold after every free: the tiny
    UNet's bf16 step at batch 128 took ~19,000 minor page faults, 2 with these thresholds, and ran faster
    (benchmarks/results/train_step.json). The peak memory is the same (the step needs it anyway); it is just not
    returned between steps. Returns whether it was applied: Linux with glibc only (mallopt), a no-op elsewhere."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # glibc, not musl: musl has no such thresholds
    except (OSError, AttributeError):
        return False
    # glibc builds that cap the mmap threshold at 32 MiB refuse 1 GiB (mallopt returns 0): then the cap.
    mmap_set = libc.mallopt(M_MMAP_THRESHOLD, KEEP_MMAP_THRESHOLD) or libc.mallopt(M_MMAP_THRESHOLD,
                                                                                    FALLBACK_MMAP_THRESHOLD)
    return bool(mmap_set) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD))


# EDM (Karras et al. 2022, arXiv 2206.00364), `--formulation edm`: the training noise levels are log-normal,
# ln(sigma) ~ N(P_MEAN, P_STD^2) (the paper's table 1); the preconditioning (c_skip, c_out, c_in, c_noise) is the
# saved scheduler's own `precondition_*`, so plain diffusers samples exactly what was trained.
EDM_P_MEAN, EDM_P_STD = -1.2, 1.2


def edm_scheduler():
    """The scheduler an EDM run trains with and saves: diffusers' EDM DPM-Solver++ (2nd order, Karras sigmas
    0.002..80, sigma_data 0.5), its x0 estimate clamped to the image range like the DDPM-family configs."""
    from diffusers import EDMDPMSolverMultistepScheduler

    return EDMDPMSolverMultistepScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, thresholding=True,
                                          sample_max_value=1.0)


def is_edm(scheduler_or_config) -> bool:
    """Whether a scheduler (or its config) is of the EDM family: its timesteps are c_noise(sigma), not 0..999."""
    config = getattr(scheduler_or_config, "config", scheduler_or_config)
    return "sigma_data" in config


def fast_solver(scheduler):
    """A 2nd-order multistep solver with the scheduler's own settings: DPM-Solver++ (EDM's variant for EDM runs)."""
    from diffusers import DPMSolverMultistepScheduler, EDMDPMSolverMultistepScheduler

    solver = EDMDPMSolverMultistepScheduler if is_edm(scheduler) else DPMSolverMultistepScheduler
    return solver.from_config(scheduler.config)


# Resolution-aware noise (Hoogeboom et al. 2023, "simple diffusion", sec. 3.1): at d x d pixels neighbouring pixels
# average the noise away, so a schedule tuned for 64 px leaves large images nearly clean at mid t. Shifting the
# cosine schedule's log-SNR by 2 log(64 / d) gives a d-px image the noise level a 64-px one has. Applied to pixel
# runs above 64 px only (`--noise_shift auto`): 28-64 px and latents keep the schedule they were tuned with.
NOISE_SHIFT_BASE = 64


def auto_noise_shift(resolution: int, latent: bool = False) -> float:
    """The log-SNR shift `--noise_shift auto` resolves to: 2 log(64 / d) for pixel images above 64 px, else 0."""
    return 0.0 if latent or resolution <= NOISE_SHIFT_BASE else 2 * math.log(NOISE_SHIFT_BASE / resolution)


def shifted_cosine_betas(num_steps: int, shift: float) -> "list":
    """Betas of the cosine schedule whose log-SNR is shifted by ``shift``: alpha_bar(t) = sigmoid(logSNR(t) + shift),
    logSNR(t) = -2 log tan(pi t / 2) at t = (i + 1) / T, each beta clipped to 0.999 as diffusers' cosine schedule."""
    import torch

    t = torch.arange(0, num_steps + 1, dtype=torch.float64) / num_steps
    logsnr = -2 * torch.log(torch.tan(math.pi * t.clamp(1e-6, 1 - 1e-6) / 2)) + shift
    alpha_bar = torch.sigmoid(logsnr)
    alpha_bar[0] = 1.0
    betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    return betas.tolist()

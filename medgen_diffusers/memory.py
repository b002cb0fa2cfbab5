"""What a training setting needs in memory, known before training: a default batch per resolution, an estimate of a
step's peak from the UNet's shapes alone, and a refusal (with the estimate and what would fit) when it cannot fit.

The estimate runs the UNet once on PyTorch's ``meta`` device (shapes only: no memory, no arithmetic, well under a
second at 512 px) and adds up what a training step holds:

* per parameter: fp32 weights, gradients and AdamW's two moments (16 bytes), the EMA copy (4), bf16 weight copies
  under autocast (2);
* per image of the batch: the activations kept for the backward pass -- every layer's output (bf16 autocast: the
  convolutions' and linear layers' in 2 bytes, normalisations in 4) times ``ACTIVATION_FACTOR``, which covers what
  the layer outputs miss (residual sums, concatenations, attention's intermediates, the backward's own buffers). With
  gradient checkpointing the ResNet and attention blocks keep only their outputs and recompute one block at a time
  (times ``CHECKPOINTED_FACTOR``).

The factors are measured, not guessed: ``benchmarks/latent/bench_memory.py`` compares the estimate with
the peak anonymous memory of real steps (results/latent/memory.json).
"""

import os
from pathlib import Path
from typing import Dict, Optional

# Measured peak activations / summed layer outputs (bench_memory.py, 9 settings of the tiny and small presets at
# 32-256 px, results/latent/memory.json): 1.02-1.44 in fp32, 0.73-0.99 in bf16 (its outputs counted as below), and
# 1.8 with gradient checkpointing in fp32 (a recomputed block's backward holds more than its forward's outputs).
ACTIVATION_FACTOR = {"no": 1.25, "bf16": 0.9, "fp16": 0.9}
CHECKPOINTED_FACTOR = 1.45  # times the above: 1.8 / 1.25, measured in fp32
BYTES_PER_PARAMETER = {"no": 20, "fp16": 22, "bf16": 22}  # weights + grads + AdamW (16), EMA (4), autocast copy (2)
DEFAULT_BATCH_PIXELS = 128 * 64 * 64  # the default batch holds as many pixels as 128 images of 64 px
GIB = 2 ** 30


def default_batch_size(side: int) -> int:
    """The per-process batch ``--train_batch_size`` defaults to for ``side`` x ``side`` UNet inputs (pixels, or
    latents with ``--vae``): 128 up to 64 px (what every MedMNIST result was trained with), then as many pixels
    as that -- 32 at 128 px, 8 at 256, 2 at 512 -- so activation memory stays that of a 64-px batch."""
    return max(1, min(128, DEFAULT_BATCH_PIXELS // (side * side)))


def training_memory(unet, batch_size: int, gradient_checkpointing: bool = False, mixed_precision: str = "no",
                    use_ema: bool = True, per_sample_gradients: bool = False) -> Dict[str, float]:
    """Bytes (GiB) a training step of ``unet`` needs at ``batch_size``, estimated from its shapes (module docstring):
    {"parameters", "per_image", "total"}. ``per_sample_gradients`` (DP-SGD): each image also holds a gradient of
    every trainable parameter (4 bytes each)."""
    import torch
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    with torch.device("meta"):
        shadow = type(unet).from_config(unet.config)  # the same architecture, on the meta device
    half = mixed_precision in ("bf16", "fp16")
    recomputed = (ResnetBlock2D, Attention) if gradient_checkpointing else ()
    kept, inside, block_of = [0], {}, {}
    for name, module in shadow.named_modules():  # each layer inside a checkpointed block is counted with the block
        if recomputed and isinstance(module, recomputed):
            for child_name, _ in module.named_modules():
                block_of.setdefault(f"{name}.{child_name}".rstrip("."), name)

    def count(name, leaf):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                return
            size = 2 if half and isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) else 4
            nbytes = output.numel() * size
            block = block_of.get(name)
            if block is None:
                kept[0] += nbytes if leaf else 0
            elif block == name:  # a checkpointed block keeps its output
                kept[0] += nbytes
            elif leaf:  # recomputed during the backward, one block at a time
                inside[block] = inside.get(block, 0) + nbytes
        return hook

    handles = [module.register_forward_hook(count(name, not list(module.children())))
               for name, module in shadow.named_modules() if name]
    try:
        sample = torch.empty(1, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size,
                             device="meta")
        labels = None if unet.config.num_class_embeds is None else torch.zeros(1, dtype=torch.long, device="meta")
        with torch.no_grad():
            shadow(sample, torch.zeros(1, dtype=torch.long, device="meta"), class_labels=labels)
    finally:
        for handle in handles:
            handle.remove()
    factor = ACTIVATION_FACTOR.get(mixed_precision, 1.25) * (CHECKPOINTED_FACTOR if gradient_checkpointing else 1)
    per_image = factor * (kept[0] + max(inside.values(), default=0))
    if per_sample_gradients:
        per_image += 4 * sum(p.numel() for p in unet.parameters() if p.requires_grad)
    parameters = sum(p.numel() for p in unet.parameters())
    static = parameters * (BYTES_PER_PARAMETER.get(mixed_precision, 22) - (0 if use_ema else 4))
    return {"parameters": static / GIB, "per_image": per_image / GIB, "total": (static + batch_size * per_image) / GIB}


def available_memory(device) -> Optional[float]:
    """GiB free for this process: a GPU's free memory, or on a CPU MemAvailable shared by this node's processes
    (None where it cannot be read)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / GIB
    meminfo = Path("/proc/meminfo")
    if device.type != "cpu" or not meminfo.is_file():
        return None
    kib = next((int(line.split()[1]) for line in meminfo.read_text().splitlines()
                if line.startswith("MemAvailable:")), None)
    return None if kib is None else kib / 2 ** 20 / max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def check_training_memory(unet, batch_size: int, budget_gib: Optional[float], gradient_checkpointing: bool = False,
                          mixed_precision: str = "no", use_ema: bool = True, per_sample_gradients: bool = False,
                          where: str = "this device") -> Dict:
    """The estimate, or -- when it exceeds ``budget_gib`` -- a ValueError before training that gives it and what
    would fit: a smaller batch, gradient checkpointing, latent diffusion."""
    estimate = training_memory(unet, batch_size, gradient_checkpointing, mixed_precision, use_ema,
                               per_sample_gradients)
    estimate["budget"] = budget_gib
    if budget_gib is None or estimate["total"] <= budget_gib:
        return estimate
    fits = int((budget_gib - estimate["parameters"]) // estimate["per_image"])
    fixes = [f"--train_batch_size {fits}" if fits >= 1 else None]
    if not gradient_checkpointing:
        saved = training_memory(unet, batch_size, True, mixed_precision, use_ema, per_sample_gradients)
        fixes.append(f"--gradient_checkpointing (~{saved['total']:.1f} GiB at this batch)")
    side = unet.config.sample_size
    fixes.append(f"latent diffusion (--vae: a {side // 4}-px latent needs ~1/16 of the activations)"
                 if side >= 128 else "a smaller --model_preset")
    raise ValueError(
        f"This setting needs ~{estimate['total']:.1f} GiB ({estimate['parameters']:.2f} GiB for the weights, "
        f"gradients and optimizer + {batch_size} x {estimate['per_image']:.2f} GiB of activations per "
        f"{side}-px image), but {where} has {budget_gib:.1f} GiB free: it would run out of memory. Use "
        + "; or ".join(f for f in fixes if f) + ". The estimate is from the UNet's shapes (medgen_diffusers/"
        "memory.py); --memory_budget_gb sets the budget, --memory_budget_gb 0 skips the check.")

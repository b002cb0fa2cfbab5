"""Training throughput: our training step versus a plain diffusers-example-style loop, same UNet, batch and
precision, timed in one run (alternating, so both see the same machine load).

    python benchmarks/bench_train_step.py          # writes benchmarks/results/train_step.json

* **example** -- as diffusers' examples/unconditional_image_generation/train_unconditional.py does it: a
  `datasets.Dataset` with torchvision transforms (RandomHorizontalFlip, ToTensor, Normalize) applied per image in
  `set_transform`, a DataLoader, then noise / add_noise / UNet / MSE / backward / clip / AdamW / EMA.
* **ours** -- as train_unconditional.py does it: the whole split as uint8 tensors in memory, a TensorDataset
  DataLoader, augmentation (flips + 90-degree rotations) as one tensor op per batch, then the same step; in fp32,
  channels-last, bf16 autocast with PyTorch's attention kernel choice (its CPU flash kernel), and **ours_default**:
  what `--mixed_precision auto` does on a CPU (bf16 autocast, attention on the math kernel); each also with fused
  AdamW + foreach EMA, and with torch.compile (inductor, default mode; compile time reported, amortised over 2,000
  steps). The example runs at its own default precision (fp32), as a user would run it.

Each arm runs in its own worker process (the main process only hands out blocks of steps, round-robin, so every arm
sees the same machine load): what train_unconditional.py does to the process's allocator (`--keep_freed_memory`,
on by default: glibc keeps freed memory instead of returning it to the OS after every step) is process-wide, and
the example arm must run with glibc's defaults, as a user's would. Every "ours" arm keeps freed memory, as the
training script does; **ours_default_no_keep_freed** is ours_default with glibc's defaults.
"""

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms

from medgen_diffusers.data import augment_dihedral, load_medmnist, load_medmnist_tensors, to_model_range
from medgen_diffusers.models import attention_kernels, build_unet, keep_freed_memory


def make_step(unet, scheduler, channels_last=False, bf16=False, fused=False, compiled=False, math_attention=False):
    """One training step. ``fused``: AdamW(fused=True) and EMAModel(foreach=True) -- one kernel per step for all
    parameters instead of a Python loop over ~150 tensors; ``compiled``: the UNet through torch.compile (inductor)."""
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, fused=fused or None)
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, power=0.75, foreach=fused)
    model = torch.compile(unet) if compiled else unet

    def step(clean, labels):
        if channels_last:
            clean = clean.contiguous(memory_format=torch.channels_last)
        noise = torch.randn_like(clean)
        timesteps = torch.randint(0, 1000, (clean.shape[0],))
        noisy = scheduler.add_noise(clean, noise, timesteps)
        # bf16: what `--mixed_precision bf16` does on CPU (Accelerate's torch.autocast), fp32 master weights.
        # math_attention: what train_unconditional.py does in bf16 on the CPU (models.attention_kernels).
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), \
                attention_kernels("cpu", "bf16" if bf16 else "no", math_attention):
            prediction = model(noisy, timesteps, class_labels=labels).sample
        loss = F.mse_loss(prediction.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        ema.step(unet.parameters())

    return step


def example_batches(batch_size):
    """diffusers' example data path: PIL images through torchvision transforms, one image at a time."""
    dataset = load_medmnist("bloodmnist", "train")
    augment = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                  transforms.Normalize([0.5], [0.5])])
    dataset.set_transform(lambda rows: {"input": [augment(im.convert("RGB")) for im in rows["image"]],
                                        "label": rows["label"]})
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                        collate_fn=lambda rows: (torch.stack([r["input"] for r in rows]),
                                                 torch.tensor([r["label"] for r in rows])))
    return itertools.cycle(loader)


def our_batches(batch_size):
    data = load_medmnist_tensors("bloodmnist", "train")
    loader = DataLoader(TensorDataset(data.images, data.labels), batch_size=batch_size, shuffle=True, drop_last=True)
    for images, labels in itertools.cycle(loader):
        yield augment_dihedral(to_model_range(images)), labels


# name: (data path, channels_last, bf16 autocast, fused AdamW + foreach EMA, torch.compile, math attention,
#        keep freed memory)
RECIPES = {"example": ("example", False, False, False, False, False, False),
           "ours_fp32": ("ours", False, False, False, False, False, True),
           "ours_channels_last": ("ours", True, False, False, False, False, True),
           "ours_bf16_flash_attention": ("ours", False, True, False, False, False, True),
           "ours_default": ("ours", False, True, False, False, True, True),  # train_unconditional.py's CPU default
           "ours_default_no_keep_freed": ("ours", False, True, False, False, True, False),
           "ours_default_channels_last": ("ours", True, True, False, False, True, True),
           "ours_default_channels_last_fused": ("ours", True, True, True, False, True, True),
           "ours_fp32_fused": ("ours", False, False, True, False, False, True),
           "ours_default_fused": ("ours", False, True, True, False, True, True),
           "ours_fp32_compiled": ("ours", False, False, True, True, False, True),
           "ours_default_compiled": ("ours", False, True, True, True, True, True)}


def cpu_model():
    """The processor's name (Linux); the step's speed-ups differ between machines of the same core count."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def worker(name, preset, batch_size):
    """One arm in this process: build it, take the first step (which compiles, if compiled), then run the blocks of
    steps the main process asks for on stdin and answer each with its step times on stdout (one JSON line each)."""
    data, channels_last, bf16, fused, compiled, math_attention, keep_freed = RECIPES[name]
    kept = keep_freed and keep_freed_memory()
    if keep_freed and not kept:
        raise SystemExit(f"{name}: keep_freed_memory() did not apply here (Linux with glibc only)")
    torch.manual_seed(0)
    unet = build_unet(preset, num_classes=8)
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    batches = example_batches(batch_size) if data == "example" else our_batches(batch_size)
    step = make_step(unet, DDPMScheduler(), channels_last, bf16, fused, compiled, math_attention)
    started = time.perf_counter()
    step(*next(batches))
    print(json.dumps({"first_step_seconds": time.perf_counter() - started}), flush=True)
    for line in sys.stdin:
        times = []
        for _ in range(int(line)):
            started = time.perf_counter()
            step(*next(batches))
            times.append(time.perf_counter() - started)
        print(json.dumps(times), flush=True)


def start_worker(name, args):
    process = subprocess.Popen([sys.executable, __file__, "--worker", name, "--preset", args.preset,
                                "--batch_size", str(args.batch_size)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    line = process.stdout.readline()
    if not line:  # the worker died before its first step; its own error is printed above
        raise SystemExit(f"bench_train_step.py: the {name} arm's worker failed (exit code {process.wait()}); "
                         "see its error above (no data: set $MEDMNIST_ROOT to the folder holding bloodmnist.npz).")
    return process, json.loads(line)["first_step_seconds"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="Timed steps per arm (after 2 warm-up rounds).")
    parser.add_argument("--block", type=int, default=4, help="Consecutive steps per arm and round; the first untimed.")
    parser.add_argument("--arms", default="example,ours_fp32,ours_channels_last,ours_bf16_flash_attention,"
                                          "ours_default,ours_default_no_keep_freed,ours_default_channels_last,"
                                          "ours_fp32_fused,ours_default_fused,ours_fp32_compiled,ours_default_compiled")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_step.json"))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run one arm (see worker())
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.preset, args.batch_size)
    if args.block < 2 or args.steps < 1:
        parser.error(f"--block must be >= 2 (its first step is untimed) and --steps >= 1; got {args.block}, {args.steps}")
    names = args.arms.split(",")
    unknown = [name for name in names if name not in RECIPES]
    if unknown:
        parser.error(f"unknown --arms {unknown}; known: {', '.join(RECIPES)}")

    workers, compile_seconds = {}, {}
    for name in names:  # one at a time: a compiling arm's first step is timed without the others' load
        workers[name], first_step = start_worker(name, args)
        if RECIPES[name][4]:  # the first step compiles forward and backward: timed here, amortised below
            compile_seconds[name] = round(first_step, 1)
    times = {name: [] for name in names}
    rounds = 2 + -(-args.steps // (args.block - 1))
    try:
        for i in range(rounds):  # round-robin: every arm sees the same machine load
            # In blocks of --block consecutive steps, the first one untimed: a training run repeats one step, so its
            # weights and activations stay in cache, while a step timed right after another arm's starts cold.
            # Rotated each round: no arm always follows the example (its per-image data path).
            for name in names[i % len(names):] + names[:i % len(names)]:
                process = workers[name]
                process.stdin.write(f"{args.block}\n")
                process.stdin.flush()
                block = json.loads(process.stdout.readline())
                if i >= 2:
                    times[name].extend(block[1:])
    finally:
        for process in workers.values():
            process.stdin.close()
            process.wait()
    seconds = {name: statistics.median(t[:args.steps]) for name, t in times.items()}
    # A run of R steps pays the compile once: per step over a 2,000-step CPU run (the README's) it is small.
    amortised = {name: round(seconds[name] + compile_seconds[name] / 2000, 4) for name in compile_seconds}
    result = {
        "preset": args.preset, "batch_size": args.batch_size, "timed_steps": args.steps, "block": args.block,
        "seconds_per_step": {k: round(v, 4) for k, v in seconds.items()},
        "speedup_vs_example": {k: round(seconds["example"] / v, 3) for k, v in seconds.items()},
        "compile_seconds": compile_seconds, "seconds_per_step_with_compile_over_2000_steps": amortised,
        "compile": {"mode": "default", "backend": "inductor"},
        "process_per_arm": True,
        "machine": {"cpu": platform.processor() or platform.machine(), "cpu_model": cpu_model(),
                    # which bf16 hardware oneDNN's convolutions can use: the step's bf16 speed-up depends on it
                    **{key: getattr(torch.cpu, probe, lambda: None)()  # private probes: None where torch lacks one
                       for key, probe in (("avx512_bf16", "_is_avx512_bf16_supported"),
                                          ("amx_bf16", "_is_amx_tile_supported"))},
                    "cores": os.cpu_count(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "gpu": torch.cuda.is_available()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

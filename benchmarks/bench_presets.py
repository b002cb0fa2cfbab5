"""Parameter count and CPU/GPU training-step time of each UNet preset at every preset size (fp32, RGB,
class-conditional with 8 classes). Batch 128 at 28 px, 32 at 64 px, 8 at 128 px, 4 at 224 px (compare images/s).

    python benchmarks/bench_presets.py            # writes benchmarks/results/presets.json

One step = forward + MSE loss + backward + AdamW step, as in train_unconditional.py. Median of --repeats timed
steps after --warmup untimed ones.
"""

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from medgen_diffusers.models import PRESET_SIZES, UNET_PRESETS, build_unet

BATCH_SIZES = {28: 128, 64: 32, 128: 8, 224: 4}


def machine():
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def step_time(preset, size, batch_size, warmup, repeats, device):
    torch.manual_seed(0)
    unet = build_unet(preset, sample_size=size, num_classes=8).to(device)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    x = torch.randn(batch_size, 3, size, size, device=device)
    t = torch.randint(0, 1000, (batch_size,), device=device)
    y = torch.randint(0, 9, (batch_size,), device=device)
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        loss = torch.nn.functional.mse_loss(unet(x, t, class_labels=y).sample, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return sum(p.numel() for p in unet.parameters()), statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default=",".join(map(str, PRESET_SIZES)))
    parser.add_argument("--presets", default=",".join(UNET_PRESETS))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "presets.json"))
    args = parser.parse_args()
    rows = []
    for size in map(int, args.sizes.split(",")):
        for preset in args.presets.split(","):
            batch = BATCH_SIZES.get(size, 8)
            params, seconds = step_time(preset, size, batch, args.warmup, args.repeats, args.device)
            rows.append({"size": size, "preset": preset, "batch_size": batch, "parameters": params,
                         "seconds_per_step": round(seconds, 3), "images_per_second": round(batch / seconds, 2)})
            print(f"{size:4d}px {preset:6s} {params / 1e6:7.2f}M params  batch {batch:3d}  {seconds:7.3f} s/step  "
                  f"({batch / seconds:.1f} img/s)", flush=True)
    result = {"benchmark": "preset training step", "device": args.device,
              "machine": machine(), "date": time.strftime("%Y-%m-%d"), "results": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

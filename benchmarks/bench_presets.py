"""Parameter count and CPU/GPU training-step time of each UNet preset (batch 128, fp32, 28x28, conditional).

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

from medgen_diffusers.models import UNET_PRESETS, build_unet


def machine():
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def step_time(preset, batch_size, warmup, repeats, device):
    torch.manual_seed(0)
    unet = build_unet(preset, num_classes=8).to(device)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    x = torch.randn(batch_size, 3, 28, 28, device=device)
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
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "presets.json"))
    args = parser.parse_args()
    rows = []
    for preset in UNET_PRESETS:
        params, seconds = step_time(preset, args.batch_size, args.warmup, args.repeats, args.device)
        rows.append({"preset": preset, "parameters": params, "seconds_per_step": round(seconds, 3),
                     "images_per_second": round(args.batch_size / seconds, 1)})
        print(f"{preset:6s} {params / 1e6:6.2f}M params  {seconds:7.3f} s/step  ({args.batch_size / seconds:.0f} img/s)")
    result = {"benchmark": "preset training step", "batch_size": args.batch_size, "device": args.device,
              "machine": machine(), "date": time.strftime("%Y-%m-%d"), "results": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

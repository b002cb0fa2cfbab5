"""The network pass at each ``--precision`` (generation.network_precision): fp32 as trained, channels-last alone,
bf16 autocast alone, and both (what ``--precision bf16`` does), on one UNet at one batch, best of ROUNDS, the arms
interleaved in one process; with each arm's deviation from fp32 (relative L2 of the prediction).

    python benchmarks/scale/bench_precision.py --unet ../scale-data/run256/unet --batch 16 \
        --out benchmarks/results/scale/precision.json
    python benchmarks/scale/bench_precision.py --unet medgen_diffusers/pretrained/bloodmnist/unet --batch 256 ...
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from diffusers import UNet2DModel

sys.path.insert(0, str(Path(__file__).parent))
from bench_scale import machine  # noqa: E402

ARMS = {"fp32": (False, False), "channels_last": (True, False), "bf16": (False, True), "bf16 + channels_last": (True, True)}


def bf16_units():
    """The CPU's bf16 instructions (the speed-up depends on them): AMX tiles, AVX512-BF16."""
    flags = set(" ".join(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("flags")).split())
    return sorted(flags & {"amx_bf16", "amx_tile", "avx512_bf16"})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--unet", action="append", required=True, help="A UNet2DModel folder (repeatable).")
    p.add_argument("--batch", type=int, action="append", required=True, help="Its batch (one per --unet).")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    rows = []
    for folder, batch in zip(args.unet, args.batch):
        unet = UNet2DModel.from_pretrained(folder).eval()
        size, channels = unet.config.sample_size, unet.config.in_channels
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(batch, channels, size, size, generator=generator)
        t = torch.full((batch,), 500)
        labels = None if unet.config.num_class_embeds is None else torch.arange(batch) % (unet.config.num_class_embeds - 1)
        seconds, outputs = {name: [] for name in ARMS}, {}
        for _ in range(args.rounds + 1):  # the first round pays one-off costs and is not counted
            for name, (channels_last, bf16) in ARMS.items():
                unet.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    start = time.perf_counter()
                    outputs[name] = unet(x, t, class_labels=labels).sample.float()
                    seconds[name].append(time.perf_counter() - start)
        best = {name: min(values[1:]) for name, values in seconds.items()}
        reference = outputs["fp32"]
        row = {"unet": Path(folder).parent.name + "/" + Path(folder).name, "resolution": size, "batch": batch,
               "seconds_per_pass": {k: round(v, 4) for k, v in best.items()},
               "speed_up_vs_fp32": {k: round(best["fp32"] / v, 2) for k, v in best.items()},
               "relative_l2_vs_fp32": {k: float((outputs[k] - reference).norm() / reference.norm()) for k in ARMS},
               "threads": torch.get_num_threads(), "machine": machine(), "cpu_bf16_units": bf16_units()}
        print(json.dumps(row), flush=True)
        rows.append(row)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

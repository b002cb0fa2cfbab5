#!/usr/bin/env python
"""Training-step cost, pixel vs latent diffusion, at 64/128/256/512 px on this machine (issue 39).

One training step = forward + backward + AdamW step of the `tiny` preset UNet at batch B, fp32, one thread;
pixel: the UNet on B x 3 x R x R images; latent: the UNet (the latent preset) on B x 4 x R/4 x R/4 latents of a
4x-downsampling AutoencoderKL (train-vae's default), whose encoding is paid once per image (the cache) and is
reported separately as ms per image. Arms are timed interleaved (pixel, latent, pixel, ...) so that a busy machine
slows both alike; the ratio is what to read. Sampling: images/s of 20 DDIM steps (+ the VAE decode for latent).

    .venv/bin/python benchmarks/latent/bench_cost.py --out benchmarks/results/latent/cost.json
"""

import argparse
import json
import platform
import resource
import statistics
import time

import torch

from medgen_diffusers.models import build_unet
from medgen_diffusers.vae import build_vae


def step_seconds(unet, x, repeats):
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    t = torch.randint(0, 1000, (x.shape[0],))

    def step():
        loss = torch.nn.functional.mse_loss(unet(x, t).sample, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()  # warm-up (allocations, kernels)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", default="64,128,256,512")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for resolution in map(int, args.resolutions.split(",")):
        batch = args.batch if resolution <= 256 else 1  # 512 px: batch 1 (the "starts on this CPU" check)
        pixel = build_unet("tiny", None, resolution, 3)
        latent = build_unet("tiny", None, resolution // 4, 4, latent=True)
        vae = build_vae(3, resolution).eval()
        x_pixel = torch.randn(batch, 3, resolution, resolution)
        x_latent = torch.randn(batch, 4, resolution // 4, resolution // 4)
        pixel_times, latent_times = [], []
        for _ in range(2):  # interleaved
            pixel_times += step_seconds(pixel, x_pixel, args.repeats // 2)
            latent_times += step_seconds(latent, x_latent, args.repeats // 2)
        with torch.no_grad():
            start = time.perf_counter()
            vae.encode(x_pixel.clamp(-1, 1)).latent_dist.mean
            encode = (time.perf_counter() - start) / batch
            start = time.perf_counter()
            vae.decode(x_latent)
            decode = (time.perf_counter() - start) / batch
            start = time.perf_counter()
            for _ in range(2):
                pixel(x_pixel, torch.tensor([500])).sample
            pixel_eval = (time.perf_counter() - start) / 2
            start = time.perf_counter()
            for _ in range(2):
                latent(x_latent, torch.tensor([500])).sample
            latent_eval = (time.perf_counter() - start) / 2
        row = {"resolution": resolution, "batch": batch,
               "pixel_step_s": statistics.median(pixel_times), "latent_step_s": statistics.median(latent_times),
               "latent_speedup": statistics.median(pixel_times) / statistics.median(latent_times),
               "vae_encode_ms_per_image": 1000 * encode,
               "pixel_params_M": sum(p.numel() for p in pixel.parameters()) / 1e6,
               "latent_params_M": sum(p.numel() for p in latent.parameters()) / 1e6,
               "vae_params_M": sum(p.numel() for p in vae.parameters()) / 1e6,
               "pixel_sampling_images_per_s_20_steps": batch / (20 * pixel_eval),
               "latent_sampling_images_per_s_20_steps": batch / (20 * latent_eval + decode * batch),
               "peak_rss_gib_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}
        rows.append(row)
        print(json.dumps(row), flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    result = {"machine": {"cpu": cpu, "threads": args.threads, "torch": torch.__version__,
                          "platform": platform.platform()},
              "command": "benchmarks/latent/bench_cost.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()
                                                                      if k != "out"),
              "note": "random inputs: cost only (a step's cost does not depend on the pixels); fp32, tiny preset",
              "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()

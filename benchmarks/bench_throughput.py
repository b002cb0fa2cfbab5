"""Images/s of a pipeline's default call versus DDPM's 1,000 steps (diffusers' DDPMPipeline default) on the same
UNet and batch, in one run.

    python benchmarks/bench_throughput.py                        # the shipped model -> results/throughput.json
    python benchmarks/bench_throughput.py ../bg-runs/lcm_best --out benchmarks/results/few_step/throughput.json

A 4-step call lasts a fraction of a second, so one timing of it is mostly noise (warm-up, another process taking
the core): each pipeline is warmed up untimed, the default call is timed over enough calls to reach --min-nfe
network evaluations, and the two are measured back to back --repeats times; the ratio reported is the median of
the per-repeat ratios, so a change in machine load between repeats cancels out.
"""

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import diffusers
import torch
from diffusers import DDPMScheduler

from medgen_diffusers import BloodMNISTPipeline


def images_per_s(pipe, num_images, steps, calls=1):
    started = time.perf_counter()
    for call in range(calls):
        pipe(batch_size=num_images, num_inference_steps=steps, generator=torch.Generator().manual_seed(call),
             output_type="np")
    return calls * num_images / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", nargs="?", default=None, help="Pipeline folder (default: the shipped model).")
    parser.add_argument("--num-images", type=int, default=16, help="Batch size of every call.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-nfe", type=int, default=200, help="Network evaluations per timing of the default call.")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "throughput.json"))
    args = parser.parse_args()

    fast = BloodMNISTPipeline.from_pretrained(args.pipeline) if args.pipeline else BloodMNISTPipeline.from_pretrained()
    fast.set_progress_bar_config(disable=True)
    steps = fast.config.default_num_inference_steps
    default = {"scheduler": type(fast.scheduler).__name__, "steps": steps,
               "timestep_spacing": fast.scheduler.config.get("timestep_spacing")}
    # Same UNet object, DDPM's own 1,000-step schedule ("leading", as DDPMPipeline uses it).
    slow = BloodMNISTPipeline(fast.unet, DDPMScheduler.from_config(fast.scheduler.config, timestep_spacing="leading"),
                              fast.config.class_names)
    slow.set_progress_bar_config(disable=True)
    calls = math.ceil(args.min_nfe / steps)
    images_per_s(fast, args.num_images, None)  # warm-up: allocator, thread pool, first-call caches
    images_per_s(slow, args.num_images, 5)
    repeats = []
    for _ in range(args.repeats):
        fast_rate = images_per_s(fast, args.num_images, None, calls)
        slow_rate = images_per_s(slow, args.num_images, 1000)
        repeats.append({"default_call": fast_rate, "ddpm_1000": slow_rate, "ratio": fast_rate / slow_rate})
        print(json.dumps(repeats[-1]), flush=True)
    result = {"pipeline": Path(args.pipeline).name if args.pipeline else "shipped bloodmnist",
              "num_images": args.num_images, "default": default, "default_calls_per_timing": calls,
              "repeats": repeats, "ratio": statistics.median(r["ratio"] for r in repeats),
              "ideal_ratio": 1000 / steps,
              "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "diffusers": diffusers.__version__,
                          "gpu": torch.cuda.is_available()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"median ratio {result['ratio']:.1f}x (ideal {result['ideal_ratio']:.0f}x); wrote {args.out}")


if __name__ == "__main__":
    main()

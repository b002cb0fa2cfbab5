"""Images/s of the shipped pipeline's default call versus DDPM's 1,000 steps (diffusers' DDPMPipeline default)
on the same UNet, same batch, in one run.

    python benchmarks/bench_throughput.py --num-images 16    # writes benchmarks/results/throughput.json
"""

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from medgen_diffusers import BloodMNISTPipeline


def images_per_s(pipe, num_images, steps):
    started = time.perf_counter()
    pipe(batch_size=num_images, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
         output_type="np")
    return num_images / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "throughput.json"))
    args = parser.parse_args()

    pipe = BloodMNISTPipeline.from_pretrained()
    pipe.set_progress_bar_config(disable=True)
    default = {"scheduler": type(pipe.scheduler).__name__, "steps": pipe.config.default_num_inference_steps,
               "timestep_spacing": pipe.scheduler.config.timestep_spacing}
    fast = images_per_s(pipe, args.num_images, None)  # the default call: saved sampler, saved steps
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    slow = images_per_s(pipe, args.num_images, 1000)
    result = {"num_images": args.num_images, "default": default,
              "images_per_s": {"default_call": fast, "ddpm_1000": slow}, "ratio": fast / slow,
              "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "gpu": torch.cuda.is_available()}}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

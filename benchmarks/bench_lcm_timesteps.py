"""2-step schedules for the shipped 4-step student: does a second timestep other than LCMScheduler's evenly spaced
one (999, 499) bring 2 network evaluations closer to the teacher? Val (whole split), standard protocol.

    MEDMNIST_ROOT=../shared/data python benchmarks/bench_lcm_timesteps.py 1712 "[999,499]" "[999,379]" "[999,639]"

Prints one JSON line per schedule (val FID, seconds); results: benchmarks/results/few_step/README.md.
"""
import json, sys, time
import torch
from medgen_diffusers import FAST_MODEL, BloodMNISTPipeline
from medgen_diffusers.data import class_counts
from medgen_diffusers.evaluation import RealFeatures, fid
from medgen_diffusers.generation import generate_images, labels_like_split
from medgen_diffusers.inception import InceptionFeatures
N = int(sys.argv[1]); grid = [json.loads(g) for g in sys.argv[2:]]
pipe = BloodMNISTPipeline.from_pretrained(FAST_MODEL)
ex = InceptionFeatures(); reals = RealFeatures(ex); real = reals.get("val", "standard")[0]
labels = labels_like_split(class_counts("bloodmnist", "val"), N)
orig = pipe.scheduler.set_timesteps  # the pipeline asks for N steps; hand LCMScheduler the schedule instead
for ts in grid:
    pipe.scheduler.set_timesteps = lambda n, device=None, ts=ts: orig(timesteps=ts, device=device)
    t0 = time.time()
    images = generate_images(pipe, N, labels, len(ts), None, seed=0, progress=False)
    print(json.dumps({"timesteps": ts, "fid": round(fid(real, ex.standard(images)), 2), "s": round(time.time()-t0)}), flush=True)

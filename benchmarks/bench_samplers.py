"""FID versus network evaluations per image for several diffusers schedulers (and guidance scales), plus the
throughput of the default call versus DDPM's 1000 steps, on one pipeline, in one run.

    python benchmarks/bench_samplers.py medgen_diffusers/pretrained/bloodmnist --num-samples 256 --split val

Scored on the val split (the test split is kept for the headline numbers), standard protocol (clean-fid FID and
KID), the same class mix as the split, seed 0 for every arm. Writes benchmarks/results/samplers.json and
benchmarks/results/samplers.png. `--only ARM` runs just those arms and merges them into an existing results file of
the same pipeline, split and N (how the slow DDPM-1000 arm was added later):

    python benchmarks/bench_samplers.py runs/main_v --only DDPMScheduler:1000:1.0:leading
"""

import argparse
import json
import platform
import time
from pathlib import Path

import diffusers
import torch

from medgen_diffusers import BloodMNISTPipeline
from medgen_diffusers.data import class_counts
from medgen_diffusers.evaluation import RealFeatures, fid, kid
from medgen_diffusers.generation import generate_images, labels_like_split
from medgen_diffusers.inception import InceptionFeatures

# (scheduler class, steps, guidance scale, timestep spacing): DDPM's own 1000 steps, then the fast solvers.
# "leading" (DDPM's default; 20 DDIM steps start at t=950) versus "trailing" (first step at t=999), written out so
# that an arm means the same thing whatever spacing the pipeline under test was saved with.
ARMS = [
    ("DDPMScheduler", 1000, 1.0, "leading"),
    ("DDIMScheduler", 50, 1.0, "leading"),
    ("DDIMScheduler", 20, 1.0, "leading"),
    ("DPMSolverMultistepScheduler", 20, 1.0, "leading"),
    ("DPMSolverMultistepScheduler", 10, 1.0, "leading"),
    ("UniPCMultistepScheduler", 10, 1.0, "leading"),
    ("UniPCMultistepScheduler", 20, 1.0, "leading"),
    ("DPMSolverMultistepScheduler", 20, 1.5, "leading"),
    ("DPMSolverMultistepScheduler", 20, 2.0, "leading"),
    ("DPMSolverMultistepScheduler", 20, 3.0, "leading"),
    ("DDIMScheduler", 20, 1.0, "trailing"),
    ("DDIMScheduler", 10, 1.0, "trailing"),
    ("DPMSolverMultistepScheduler", 20, 1.0, "trailing"),
    ("DPMSolverMultistepScheduler", 10, 1.0, "trailing"),
    ("UniPCMultistepScheduler", 10, 1.0, "trailing"),
    ("DPMSolverMultistepScheduler", 10, 2.0, "trailing"),
    ("DDIMScheduler", 20, 1.0, "linspace"),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline")
    parser.add_argument("--split", default="val")
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--throughput-images", type=int, default=16)
    parser.add_argument("--skip-ddpm", action="store_true", help="Leave out the slow 1000-step arm.")
    parser.add_argument("--only", action="append", default=None, metavar="NAME:STEPS:GUIDANCE[:SPACING]",
                        help="Run only this arm (repeatable) and merge it into --out; no throughput run.")
    parser.add_argument("--out", default="benchmarks/results/samplers.json")
    args = parser.parse_args()

    arms = [arm for arm in ARMS if not (args.skip_ddpm and arm[1] == 1000)]
    previous = None
    if args.only:
        known = {arm_key(arm): arm for arm in ARMS}
        unknown = [key for key in args.only if key not in known]
        if unknown:
            parser.error(f"unknown arm(s) {unknown}; the arms are {sorted(known)}")
        arms = [known[key] for key in args.only]
        previous = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else None
        same = (args.pipeline, args.split, args.num_samples)
        if previous is None or (previous["pipeline"], previous["split"], previous["num_samples"]) != same:
            parser.error(f"--only merges into {args.out}, which must exist and hold the same pipeline, --split and "
                         "--num-samples; run the full sweep first")

    pipe = BloodMNISTPipeline.from_pretrained(args.pipeline)
    base_config = pipe.scheduler.config
    extractor = InceptionFeatures()
    real = RealFeatures(extractor).get(args.split, "standard")[0]
    labels = labels_like_split(class_counts("bloodmnist", args.split), args.num_samples)
    rows = []
    for name, steps, guidance, spacing in arms:
        pipe.scheduler = getattr(diffusers, name).from_config(base_config, timestep_spacing=spacing)
        started = time.perf_counter()
        images = generate_images(pipe, args.num_samples, labels, steps, guidance, seed=0, progress=False)
        seconds = time.perf_counter() - started
        fake = extractor.standard(images)
        row = {"scheduler": name, "steps": steps, "guidance_scale": guidance,
               "timestep_spacing": pipe.scheduler.config.timestep_spacing,
               "nfe_per_image": steps * (2 if guidance != 1.0 else 1), "fid": fid(real, fake),
               "kid": kid(real, fake)["mean"], "images_per_s": args.num_samples / seconds}
        rows.append(row)
        print(json.dumps(row), flush=True)

    if previous is not None:
        rerun = {row_key(row) for row in rows}
        rows = [row for row in previous["rows"] if row_key(row) not in rerun] + rows
        previous.update(rows=rows, **choose_default(rows), merged_arms=sorted(set(previous.get("merged_arms", []))
                                                                              | set(args.only)))
        Path(args.out).write_text(json.dumps(previous, indent=2) + "\n")
        plot(rows, Path(args.out).with_suffix(".png"))
        print(f"default: {previous['default']}; merged {args.only} into {args.out}")
        return
    best, default = choose_default(rows).values()

    # Throughput: the default call versus DDPM's 1000 steps (diffusers' DDPMPipeline default), same UNet and batch.
    timings = {}
    for label, name, steps, guidance, spacing in (
            ("default", default["scheduler"], default["steps"], default["guidance_scale"], default["timestep_spacing"]),
            ("ddpm_1000", "DDPMScheduler", 1000, 1.0, "leading")):
        pipe.scheduler = getattr(diffusers, name).from_config(base_config, timestep_spacing=spacing)
        started = time.perf_counter()
        generate_images(pipe, args.throughput_images, labels[: args.throughput_images], steps, guidance,
                        seed=1, progress=False)
        timings[label] = args.throughput_images / (time.perf_counter() - started)

    result = {
        "pipeline": args.pipeline, "split": args.split, "num_samples": args.num_samples, "rows": rows,
        "best_fid": best, "default": default,
        "throughput_images_per_s": timings, "throughput_ratio_default_vs_ddpm1000": timings["default"] / timings["ddpm_1000"],
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "diffusers": diffusers.__version__, "gpu": torch.cuda.is_available()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, out.with_suffix(".png"))
    print(f"default: {default}; throughput ratio {result['throughput_ratio_default_vs_ddpm1000']:.1f}x; wrote {out}")


def arm_key(arm):
    return ":".join(str(part) for part in arm)


def row_key(row):
    spacing = row.get("timestep_spacing", "leading")
    return (row["scheduler"], row["steps"], row["guidance_scale"], spacing)


def choose_default(rows):
    """The issue's rule: the cheapest arm (network evaluations per image) within 10% of the best FID."""
    best = min(row["fid"] for row in rows)
    default = min((row for row in rows if row["fid"] <= 1.1 * best), key=lambda row: row["nfe_per_image"])
    return {"best_fid": best, "default": default}


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, spacing in dict.fromkeys((row["scheduler"], row.get("timestep_spacing", "leading")) for row in rows):
        mine = sorted((r for r in rows if row_key(r)[::3] == (name, spacing) and r["guidance_scale"] == 1.0),
                      key=lambda r: r["nfe_per_image"])
        if mine:
            label = name if spacing == "leading" else f"{name} ({spacing})"
            ax.plot([r["nfe_per_image"] for r in mine], [r["fid"] for r in mine], marker="o", label=label)
    for r in rows:
        if r["guidance_scale"] != 1.0:
            ax.scatter(r["nfe_per_image"], r["fid"], marker="x")
            ax.annotate(f"cfg {r['guidance_scale']}", (r["nfe_per_image"], r["fid"]), fontsize=7)
    ax.set(xscale="log", xlabel="network evaluations per image", ylabel="FID (standard, val)",
           title="FID vs sampling cost")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

"""FID versus network evaluations (1, 2, 4, 8, 20) for a distilled few-step pipeline and its teacher, on one plot,
plus the distilled default call's throughput versus DDPM's 1000 steps on the same UNet architecture.

    python benchmarks/bench_few_step.py ../bg-runs/lcm --num-samples 256 --split val
    # another student on the same plot, with the rows of an earlier run of the same split and N:
    python benchmarks/bench_few_step.py ../bg-runs/pcm2 --label "2-phase student" --steps 1,2,4 --no-teacher \
        --merge benchmarks/results/few_step/shipped_4step_val1712.json --num-samples 1712 --out ...

Each pipeline samples with the scheduler it was saved with (the teacher: DDIM, trailing spacing; the distilled one:
LCMScheduler), no guidance, seed 0, the split's class mix; standard protocol (clean-fid FID and KID) against the
whole split, with the real-vs-real floor at the same N (train images vs the split) as a dashed line. Val chooses;
`--split test --num-samples 3421 --steps 4` reports. Writes JSON and a PNG beside it.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import diffusers
import torch

from medgen_diffusers import DEFAULT_MODEL, BloodMNISTPipeline
from medgen_diffusers.data import class_counts
from medgen_diffusers.evaluation import RealFeatures, fid, kid
from medgen_diffusers.provenance import write_json_atomic as write_json
from medgen_diffusers.generation import generate_images, labels_like_split
from medgen_diffusers.inception import InceptionFeatures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("distilled", help="Pipeline folder written by distill_lcm.py.")
    parser.add_argument("--teacher", default=DEFAULT_MODEL)
    parser.add_argument("--steps", default="1,2,4,8,20")
    parser.add_argument("--split", default="val")
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--throughput-images", type=int, default=16)
    parser.add_argument("--label", default="distilled", help="The distilled pipeline's name in the rows and plot.")
    parser.add_argument("--no-teacher", action="store_true", help="Do not score the teacher (e.g. its rows come "
                                                                    "from --merge).")
    parser.add_argument("--merge", default=None, help="A JSON this script wrote for the same split and "
                                                       "--num-samples: its rows join this run's table and plot.")
    parser.add_argument("--out", default="benchmarks/results/few_step/val.json")
    args = parser.parse_args()

    merged = json.loads(Path(args.merge).read_text()) if args.merge else None
    if merged and (merged["split"], merged["num_samples"]) != (args.split, args.num_samples):
        parser.error(f"--merge {args.merge} was scored on {merged['split']} with N = {merged['num_samples']}, this "
                     f"run on {args.split} with N = {args.num_samples}: FIDs at other N are not comparable.")
    teacher = BloodMNISTPipeline.from_pretrained(args.teacher)
    pipes = {args.label: BloodMNISTPipeline.from_pretrained(args.distilled)}
    if not args.no_teacher:
        pipes["teacher"] = teacher
    extractor = InceptionFeatures()
    reals = RealFeatures(extractor)
    real = reals.get(args.split, "standard")[0]
    # The real-vs-real floor at this N (as many train images vs the same split): no sampler can go below it.
    floor = fid(real, reals.get("train", "standard", num=args.num_samples, seed=0)[0])
    labels = labels_like_split(class_counts("bloodmnist", args.split), args.num_samples)
    rows = []
    for name, pipe in pipes.items():
        for steps in (int(s) for s in args.steps.split(",")):
            started = time.perf_counter()
            images = generate_images(pipe, args.num_samples, labels, steps, None, seed=0, progress=False)
            seconds = time.perf_counter() - started
            fake = extractor.standard(images)
            row = {"model": name, "scheduler": type(pipe.scheduler).__name__, "nfe_per_image": steps,
                   "fid": fid(real, fake), "kid": kid(real, fake)["mean"], "images_per_s": args.num_samples / seconds}
            rows.append(row)
            print(json.dumps(row), flush=True)

    if merged:  # the earlier run's rows, its student named by its folder, each marked with where it comes from
        rows += [{**r, "model": merged["distilled"] if r["model"] == "distilled" else r["model"],
                  "from": Path(args.merge).name} for r in merged["rows"]]

    # Throughput: the distilled default call versus DDPM-1000 (diffusers' DDPMPipeline default) on the teacher.
    default_steps = pipes[args.label].config.default_num_inference_steps
    ddpm = BloodMNISTPipeline(teacher.unet, diffusers.DDPMScheduler.from_config(teacher.scheduler.config,
                                                                               timestep_spacing="leading"),
                              teacher.config.class_names)
    timings = {}
    for label, pipe, steps in (("distilled_default", pipes[args.label], default_steps), ("ddpm_1000", ddpm, 1000)):
        started = time.perf_counter()
        generate_images(pipe, args.throughput_images, labels[: args.throughput_images], steps, None, seed=1,
                        progress=False)
        timings[label] = args.throughput_images / (time.perf_counter() - started)

    def at(model, nfe):
        return next((r["fid"] for r in rows if r["model"] == model and r["nfe_per_image"] == nfe), None)

    teacher_20, distilled_default = at("teacher", 20), at(args.label, default_steps)
    result = {
        "distilled": Path(args.distilled).name, "teacher": Path(args.teacher).name, "split": args.split,
        "num_samples": args.num_samples, "floor_fid": floor, "rows": rows, "default_steps": default_steps,
        "merged": args.merge,
        "distilled_default_vs_teacher_20": (distilled_default / teacher_20
                                            if teacher_20 and distilled_default else None),
        "throughput_images_per_s": timings,
        "throughput_ratio_distilled_default_vs_ddpm1000": timings["distilled_default"] / timings["ddpm_1000"],
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "diffusers": diffusers.__version__, "gpu": torch.cuda.is_available()},
    }
    write_json(result, args.out)
    plot(rows, Path(args.out).with_suffix(".png"), args.split, floor)
    print(f"distilled {default_steps}-step FID / teacher 20-step FID = {result['distilled_default_vs_teacher_20']}; "
          f"throughput {result['throughput_ratio_distilled_default_vs_ddpm1000']:.0f}x DDPM-1000; wrote {args.out}")


def plot(rows, path, split, floor):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = sorted((r for r in rows if r["model"] == model), key=lambda r: r["nfe_per_image"])
        ax.plot([r["nfe_per_image"] for r in mine], [r["fid"] for r in mine], marker="o",
                label=f"{model} ({mine[0]['scheduler']})")
    ax.axhline(floor, color="grey", linestyle="--", label=f"real-vs-real floor ({floor:.1f})")
    # Log FID: 1-step samples score in the hundreds, the interesting gaps near the floor are a few points.
    ax.set(xscale="log", yscale="log", xlabel="network evaluations per image", ylabel=f"FID (standard, {split})",
           title="Few-step sampling: distilled vs teacher")
    ax.set_xticks([1, 2, 4, 8, 20], labels=["1", "2", "4", "8", "20"])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

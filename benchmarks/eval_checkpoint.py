"""Score the EMA weights of a training checkpoint on the val split (used for the ablation; never the test split).

    python benchmarks/eval_checkpoint.py runs/main_eps/checkpoint-1000 --prediction_type epsilon \
        --beta_schedule linear --num-samples 500 --out benchmarks/results/ablation/eps-1000.json

The checkpoint is what `accelerate save_state` wrote: the EMA shadow parameters are `custom_checkpoint_0.pkl`.
"""

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

from medgen_diffusers import BloodMNISTPipeline, build_unet, class_names
from medgen_diffusers.evaluation import evaluate_images, generate_images, labels_like_split, summary, write_json


def pipeline_from_checkpoint(checkpoint, preset, prediction_type, beta_schedule, dataset="bloodmnist"):
    names = class_names(dataset)
    unet = build_unet(preset, num_classes=len(names))
    ema = torch.load(Path(checkpoint) / "custom_checkpoint_0.pkl", map_location="cpu", weights_only=False)
    for param, shadow in zip(unet.parameters(), ema["shadow_params"]):
        param.data.copy_(shadow)
    scheduler = DDPMScheduler(beta_schedule=beta_schedule, prediction_type=prediction_type, thresholding=True,
                              sample_max_value=1.0)
    return BloodMNISTPipeline(unet.eval(), scheduler, names)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--prediction_type", required=True)
    parser.add_argument("--beta_schedule", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--save", default=None, help="Also save the pipeline to this folder.")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    pipe = pipeline_from_checkpoint(args.checkpoint, args.preset, args.prediction_type, args.beta_schedule)
    if args.save:
        pipe.save_pretrained(args.save)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    started = time.perf_counter()
    labels = labels_like_split("bloodmnist", args.split, args.num_samples)
    images = generate_images(pipe, args.num_samples, labels, args.steps)
    result = evaluate_images(images, labels, split=args.split, per_class=False, progress=True)
    result["generation"] = {"checkpoint": args.checkpoint, "scheduler": "dpmsolver", "steps": args.steps,
                            "prediction_type": args.prediction_type, "beta_schedule": args.beta_schedule,
                            "preset": args.preset}
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    write_json(result, args.out)
    print(summary(result))
    print(json.dumps(result["generation"]))


if __name__ == "__main__":
    main()

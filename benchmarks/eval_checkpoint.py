"""Score the EMA (or raw) weights of a training checkpoint on the val split (for the ablation; never the test split).

    python benchmarks/eval_checkpoint.py runs/main_eps/checkpoint-1000 --prediction_type epsilon \
        --beta_schedule linear --num-samples 500 --out benchmarks/results/ablation/eps-1000.json

The checkpoint is what the training script's `accelerate save_state` wrote: the EMA weights are `unet_ema/` (a
UNet2DModel saved by `EMAModel.save_pretrained`, safetensors), the raw (optimizer) weights `model.safetensors`;
`--weights raw` scores the latter (the "no EMA" arm of the same run). Nothing is unpickled; parameters are matched by
name (a strict `load_state_dict`). Checkpoints written before the EMA moved to safetensors (pickled
`custom_checkpoint_0.pkl`) are refused.
"""

import argparse
import json
import time
from pathlib import Path

from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import load_file

from medgen_diffusers import BloodMNISTPipeline, class_names
from medgen_diffusers.data import class_counts
from medgen_diffusers.evaluation import evaluate_images
from medgen_diffusers.models import edm_scheduler, fast_solver
from medgen_diffusers.provenance import write_json_atomic as write_json
from medgen_diffusers.scoring import summary
from medgen_diffusers.generation import generate_images, labels_like_split


def pipeline_from_checkpoint(checkpoint, prediction_type, beta_schedule, weights="ema", dataset="bloodmnist"):
    ema_folder = Path(checkpoint) / "unet_ema"
    if not ema_folder.is_dir():
        raise SystemExit(f"{checkpoint} has no unet_ema/ folder: not a checkpoint of this training script with EMA.")
    unet = UNet2DModel.from_pretrained(ema_folder)  # the EMA weights (extra EMA fields in its config are ignored)
    if weights == "raw":
        unet.load_state_dict(load_file(Path(checkpoint) / "model.safetensors"))  # by name, every key required
    names = class_names(dataset)
    # "linspace" (first of 20 steps at t=999) is what every ablation arm was scored with; it also reproduces the
    # post-hoc curves (eval_curve.py). Before it was written out here, it came implicitly from DPM-Solver's default.
    scheduler = DDPMScheduler(beta_schedule=beta_schedule, prediction_type=prediction_type, thresholding=True,
                              sample_max_value=1.0, timestep_spacing="linspace")
    if prediction_type == "edm":  # --formulation edm: the scheduler it trains with (Karras sigmas, rho 7)
        scheduler = edm_scheduler()
    return BloodMNISTPipeline(unet.eval(), scheduler, names)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--prediction_type", required=True, help="epsilon, v_prediction, sample, or edm "
                        "(a --formulation edm run: its EDM scheduler; --beta_schedule is then not used)")
    parser.add_argument("--beta_schedule", required=True)
    parser.add_argument("--weights", choices=("ema", "raw"), default="ema")
    parser.add_argument("--split", default="val")
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--save", default=None, help="Also save the pipeline to this folder.")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    pipe = pipeline_from_checkpoint(args.checkpoint, args.prediction_type, args.beta_schedule, args.weights)
    if args.save:
        pipe.save_pretrained(args.save)
    pipe.scheduler = fast_solver(pipe.scheduler)  # DPM-Solver++ 2M (EDM's variant for an EDM run)
    started = time.perf_counter()
    labels = labels_like_split(class_counts("bloodmnist", args.split), args.num_samples)
    images = generate_images(pipe, args.num_samples, labels, args.steps)
    result = evaluate_images(images, labels, split=args.split, per_class=False, progress=True)
    checkpoint = Path(args.checkpoint).resolve()
    # Run folder and checkpoint names only: committed results carry no local paths.
    result["generation"] = {"checkpoint": f"{checkpoint.parent.name}/{checkpoint.name}", "scheduler": "dpmsolver", "steps": args.steps,
                            "prediction_type": args.prediction_type, "beta_schedule": args.beta_schedule,
                            "weights": args.weights}
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    write_json(result, args.out)
    print(summary(result))
    print(json.dumps(result["generation"]))


if __name__ == "__main__":
    main()

"""Guidance sweep scored both ways, on val: FID of the pipeline's default sampler at each classifier-free guidance
scale, and (with --utility, a GPU job) the TSTR/TRTR accuracy ratio of the utility protocol on val.

    python benchmarks/bench_guidance.py --num-samples 256                          # FID half (CPU: ~5 min)
    python benchmarks/bench_guidance.py --utility --device cuda                    # both halves

The default sampler's guidance scale is chosen from this table (val), never from the test split; the privacy audit
(`medgen audit --guidance-scale G`) belongs beside the chosen scale, since guidance moves samples toward the classes'
typical images.
"""

import argparse
import json
import platform
from pathlib import Path

import torch

from medgen_diffusers import DEFAULT_MODEL, BloodMNISTPipeline
from medgen_diffusers.data import class_counts
from medgen_diffusers.evaluation import RealFeatures, fid, kid
from medgen_diffusers.provenance import write_json_atomic as write_json
from medgen_diffusers.generation import generate_images, labels_like_split
from medgen_diffusers.inception import InceptionFeatures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", nargs="?", default=DEFAULT_MODEL)
    parser.add_argument("--scales", default="1,1.5,2,3")
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--utility", action="store_true", help="Also the TSTR/TRTR ratio on val (GPU-sized).")
    parser.add_argument("--num-train", type=int, default=None, help="N of the utility arms (default: the train split).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/results/guidance_val.json")
    args = parser.parse_args()

    pipe = BloodMNISTPipeline.from_pretrained(args.pipeline).to(args.device)
    extractor = InceptionFeatures(device=args.device)
    real = RealFeatures(extractor).get("val", "standard")[0]
    labels = labels_like_split(class_counts("bloodmnist", "val"), args.num_samples)
    rows = []
    for scale in (float(s) for s in args.scales.split(",")):
        images = generate_images(pipe, args.num_samples, labels, None, scale, seed=0, progress=False)
        fake = extractor.standard(images)
        row = {"guidance_scale": scale, "nfe_per_image": pipe.config.default_num_inference_steps * (2 if scale > 1 else 1),
               "fid_val": fid(real, fake), "kid_val": kid(real, fake)["mean"]}
        if args.utility:
            from medgen_diffusers.utility import run_utility

            result = run_utility(pipe, num_train=args.num_train, fractions=(), guidance_scale=scale, device=args.device, split="val",
                                 arms=("trtr", "tstr"), progress=False)
            row.update(tstr_acc_ratio_val=result["tstr_ratio"]["acc"], tstr_acc_val=result["arms"]["tstr"]["acc_mean"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_json({"pipeline": Path(args.pipeline).name, "split": "val", "num_samples": args.num_samples,
                "sampler": type(pipe.scheduler).__name__, "steps": pipe.config.default_num_inference_steps,
                "rows": rows, "machine": {"cpu": platform.processor() or platform.machine(),
                                          "threads": torch.get_num_threads(), "device": args.device,
                                          "torch": torch.__version__}}, args.out)


if __name__ == "__main__":
    main()

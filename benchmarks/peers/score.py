"""Score one arm's samples with our scorer (standard protocol: clean-fid FID/KID and precision/recall on 2048-d
Inception features) against the whole val split, with the real-vs-real floor at the same N. Runs in our environment.

    .venv/bin/python benchmarks/peers/score.py SAMPLES.npz --out benchmarks/results/peers/ARM_STEPS.json \
        --extra '{"arm": "monai", ...}'
"""

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from medgen_diffusers.evaluation import evaluate_images
from medgen_diffusers.provenance import write_json_atomic
from medgen_diffusers.scoring import summary


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", type=Path, help="npz with `images` (uint8, N x 28 x 28 x 3)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--extra", default="{}", help="JSON merged into the result (arm, training record, ...)")
    args = parser.parse_args()
    with np.load(args.samples) as data:  # peers.py writes `images`; `medgen sample` MedMNIST's `train_images`
        key = "images" if "images" in data.files else next(k for k in data.files if k.endswith("_images"))
        images = data[key]
    result = evaluate_images(images, split="val", protocols=("standard",), per_class=False)
    sampling = args.samples.with_suffix(".json")
    result.update(json.loads(args.extra))
    result["sampling"] = json.loads(sampling.read_text()) if sampling.is_file() else None
    result["samples_sha256"] = hashlib.sha256(images.tobytes()).hexdigest()
    write_json_atomic(result, args.out)
    print(summary(result))


if __name__ == "__main__":
    main()

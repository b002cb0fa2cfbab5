"""Inception feature extraction: ours versus clean-fid's default folder path, same images, same network, one run.

    python benchmarks/bench_inception.py --num-images 128     # writes benchmarks/results/inception.json

Both arms start from the same PNG folder of real BloodMNIST test images and return 2048-d "clean" features.
* **clean-fid**: `cleanfid.fid.get_folder_features` with compute_fid's defaults (batch 32, 12 DataLoader
  workers) and clean-fid's own InceptionV3W forward around the TorchScript network.
* **ours**: `InceptionFeatures.standard` (clean-fid's resizer, channels-last inference) on the decoded PNGs.
Reports images/s of each, the ratio, and the largest feature difference.
"""

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from cleanfid.fid import get_folder_features
from cleanfid.inception_torchscript import InceptionV3W
from PIL import Image

from medgen_diffusers.data import load_medmnist_tensors
from medgen_diffusers.inception import InceptionFeatures


def cleanfid_model(layers):
    """clean-fid's own InceptionV3W (forward: (x - 128) / 128 -> layers) around the same network; built by hand
    because its constructor insists on downloading NVIDIA's file."""
    model = InceptionV3W.__new__(InceptionV3W)
    torch.nn.Module.__init__(model)
    model.layers, model.resize_inside = layers, False
    return model.eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=12, help="clean-fid's compute_fid default.")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "inception.json"))
    args = parser.parse_args()

    ours = InceptionFeatures(batch_size=64)
    images = load_medmnist_tensors("bloodmnist", "test").images[: args.num_images].permute(0, 2, 3, 1).numpy()
    with tempfile.TemporaryDirectory() as folder:
        for i, image in enumerate(images):
            Image.fromarray(image).save(Path(folder) / f"{i:05d}.png")
        files = sorted(Path(folder).glob("*.png"))

        started = time.perf_counter()
        reference = get_folder_features(folder, cleanfid_model(ours.layers), num_workers=args.num_workers,
                                        batch_size=32, device=torch.device("cpu"), mode="clean", verbose=False)
        cleanfid_seconds = time.perf_counter() - started

        started = time.perf_counter()
        decoded = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
        features = ours.standard(decoded)
        ours_seconds = time.perf_counter() - started

    max_abs = float(np.abs(features - reference).max())
    result = {
        "num_images": args.num_images,
        "images_per_s": {"cleanfid_folder": args.num_images / cleanfid_seconds, "ours": args.num_images / ours_seconds},
        "speedup": cleanfid_seconds / ours_seconds,
        "max_abs_feature_difference": max_abs,
        "max_relative_feature_difference": max_abs / float(np.abs(reference).max()),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

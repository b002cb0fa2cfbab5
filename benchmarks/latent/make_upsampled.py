#!/usr/bin/env python
"""BloodMNIST's real 28-px pixels, bicubic-upsampled to SIZE px, as a MedMNIST-layout .npz (outside the repo).

Upsampled pixels are band-limited: they flatter an autoencoder and make every size look like 28 px of content.
Use them to measure cost and to compare arms on the same data, never as a claim about real 128-px images.
    python benchmarks/latent/make_upsampled.py 128 ../bg-runs/bloodmnist_128px.npz
"""

import sys

import numpy as np
from PIL import Image

from medgen_diffusers.data import medmnist_path

size, out = int(sys.argv[1]), sys.argv[2]
with np.load(medmnist_path("bloodmnist", 28)) as npz:
    arrays = {k: npz[k] for k in npz.files}
for split in ("train", "val", "test"):
    arrays[f"{split}_images"] = np.stack([np.asarray(Image.fromarray(x).resize((size, size), Image.BICUBIC))
                                          for x in arrays[f"{split}_images"]])
np.savez(out, **arrays)
print(f"wrote {out}: " + ", ".join(f"{s} {len(arrays[f'{s}_images'])}" for s in ("train", "val", "test")) + f" at {size} px")

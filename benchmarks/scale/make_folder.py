"""A large image folder from real BloodMNIST pixels, for the scale benchmarks: N grayscale PNGs at SIZE px in
train/<class>/ (and small val/ and test/ splits), every image a real BloodMNIST-28 image **upsampled** with PIL's
bicubic filter (band-limited content: it measures cost, not quality). Images are reused cyclically past 11,959.

    python benchmarks/scale/make_folder.py --num 30000 --size 256 --out ../scale-data/gray256_30k
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--num", type=int, required=True, help="Training images.")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--out", required=True)
    p.add_argument("--data", default="../shared/data/bloodmnist.npz")
    p.add_argument("--bits", type=int, default=8, choices=(8, 16), help="16: 16-bit grayscale PNGs.")
    args = p.parse_args()
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists: choose a new folder.")
    with np.load(args.data) as npz:
        splits = {"train": (npz["train_images"], npz["train_labels"][:, 0], args.num),
                  "val": (npz["val_images"], npz["val_labels"][:, 0], 200),
                  "test": (npz["test_images"], npz["test_labels"][:, 0], 400)}
    for split, (images, labels, count) in splits.items():
        for name in CLASSES:
            (out / split / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            source = index % len(images)
            gray = Image.fromarray(images[source].mean(-1).round().astype(np.uint8)).resize(
                (args.size, args.size), Image.BICUBIC)
            if args.bits == 16:
                gray = Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)
            gray.save(out / split / CLASSES[labels[source]] / f"{index:07d}.png", compress_level=1)
    print(f"wrote {args.num} + 200 + 400 {args.bits}-bit {args.size}-px images to {out}")


if __name__ == "__main__":
    main()

"""What of `medgen audit` grows with the training set: the pixel space's vectors of every training image (read
from the memory-mapped store, area-downsampled to audit.PIXEL_SIDE) and the exact, chunked nearest-neighbour
search of 1,000 queries against all of them (audit.copy_statistics: queries and the test split vs train). The
queries are 1,000 training images (stand-ins for synthetic ones: the cost is the same). Appends one JSON row.

    python benchmarks/scale/bench_neighbours.py --store ../scale-data/store100k --out benchmarks/results/scale/commands_idle.jsonl
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_scale import machine  # noqa: E402

from medgen_diffusers.audit import copy_statistics, pixel_vectors  # noqa: E402
from medgen_diffusers.data import load_images  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    started = time.perf_counter()
    train, test = load_images(args.store, "train"), load_images(args.store, "test")
    rows = np.sort(np.random.default_rng(0).choice(len(train), args.queries, replace=False))
    queries = train.images[torch.as_tensor(rows)]
    loaded = time.perf_counter()
    vectors = [pixel_vectors(queries, np.arange(len(queries))), pixel_vectors(train.images, np.arange(len(train))),
               pixel_vectors(test.images, np.arange(len(test)))]
    vectorised = time.perf_counter()
    copy_statistics(*vectors)
    done = time.perf_counter()
    row = {"arm": "audit's nearest neighbours, pixel space", "train_images": len(train), "queries": args.queries,
           "resolution": int(train.images.shape[-1]), "pixel_vectors_s": round(vectorised - loaded, 1),
           "nearest_two_s": round(done - vectorised, 1), "seconds": round(done - started, 1), "machine": machine(),
           "pixels": "real BloodMNIST-28 upsampled to 256 px"}
    print(json.dumps(row))
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

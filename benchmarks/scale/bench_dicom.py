"""DICOM at scale (issue 38): `medgen prepare` of a 12-bit DICOM folder (make_dicom.py: real BloodMNIST pixels
upsampled to 512 px) with patient-level splits and the percentile window -- time and peak RssAnon of the process
tree, this code and (``--baseline-code``) an older checkout -- and the error of the bounded-sample percentile window
against the exact percentiles of every train value (from a histogram of the 12-bit stored values).

    python benchmarks/scale/bench_dicom.py --folder ../scale-data/ct512_1000 --folder ../scale-data/ct512_3000 \
        --baseline-code ../old-code --out benchmarks/results/scale/dicom.jsonl
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_scale import machine, run_measured  # noqa: E402


def exact_window(store, folder):
    """The window of the exact 0.5/99.5 percentiles of every train value (numpy's linear interpolation), from a
    histogram of the stored 12-bit values of the store's train patients (rescale slope 1, intercept -1024)."""
    import pydicom

    from medgen_diffusers.data.medical_folders import PERCENTILES, split_files

    options = json.loads((Path(store) / "manifest.json").read_text())["options"]
    files = split_files(Path(folder), "train", "dicom", "patient", options.get("split_seed") or 0)
    histogram = np.zeros(4096, dtype=np.int64)
    for file in files:
        histogram += np.bincount(pydicom.dcmread(file.path).pixel_array.ravel(), minlength=4096)
    cumulative, n = np.cumsum(histogram), histogram.sum()
    value = lambda rank: int(np.searchsorted(cumulative, rank + 1))  # noqa: E731 - the rank-th smallest (0-based)
    low, high = [], []
    for q, out in zip(PERCENTILES, (low, high)):
        k = q / 100 * (n - 1)
        out.append(value(int(np.floor(k))) + (k - np.floor(k)) * (value(int(np.ceil(k))) - value(int(np.floor(k)))))
    low, high = low[0] - 1024, high[0] - 1024
    return {"center": (low + high) / 2 + 0.5, "width": high - low + 1, "train_values": int(n)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--folder", action="append", required=True)
    p.add_argument("--baseline-code", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--resolution", type=int, default=256)
    args = p.parse_args()
    for folder in map(Path, args.folder):
        slices = sum(1 for _ in folder.rglob("*.dcm"))
        for arm, code in (("this code", None), ("before (in-memory decode)", args.baseline_code)):
            if arm != "this code" and code is None:
                continue
            work = Path(tempfile.mkdtemp(prefix="dicom-"))
            env = {**os.environ, "HF_HUB_OFFLINE": "1", **({"PYTHONPATH": code} if code else {})}
            cmd = [sys.executable, "-m", "medgen_diffusers.cli", "prepare", str(folder), "--out", str(work / "store"),
                   "--resolution", str(args.resolution), "--split-by", "patient"]
            seconds, peak, _ = run_measured(cmd, env, cwd=code)
            manifest = json.loads((work / "store" / "manifest.json").read_text())
            row = {"arm": f"prepare, {arm}", "slices": slices, "size": "512 px, 12-bit, stored at "
                   f"{args.resolution} px", "seconds": round(seconds, 1), "peak_rss_anon_gib": round(peak, 3),
                   "window": manifest["intensity"], "folder": folder.name, "machine": machine(),
                   "pixels": "real BloodMNIST-28 upsampled to 512 px, 12-bit"}
            if code is None:
                exact = exact_window(work / "store", folder)
                got = manifest["intensity"]
                # The window's ends in 8-bit output levels: how far the sample's mapping is from the exact one.
                ends = lambda w: np.array([w["center"] - 0.5 - (w["width"] - 1) / 2, w["center"] - 0.5 + (w["width"] - 1) / 2])  # noqa: E731
                row["exact_window"] = exact
                row["window_error_grey_levels"] = round(float(np.abs(ends(got) - ends(exact)).max() * 255 /
                                                              (exact["width"] - 1)), 3)
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

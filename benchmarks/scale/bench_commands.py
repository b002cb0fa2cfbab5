"""Every command bounded (issue 38): time and peak anonymous memory of ``medgen evaluate``, ``audit``, ``utility``
and ``sample`` on a model trained on a large folder (make_folder.py's real BloodMNIST pixels upsampled to 256 px:
say so). Memory is the ``RssAnon`` of the process tree (bench_scale.py's sampler; page cache is not counted).

    python benchmarks/scale/bench_commands.py --run RUN --out benchmarks/results/scale/commands.jsonl \
        --arms evaluate,audit,utility,sample

RUN: a pipeline trained on the folder (e.g. 2 steps of `medgen train --dataset FOLDER --model_preset tiny`); the
commands take the data source from it. Extra arguments per arm: --evaluate-args, --audit-args, ...
"""

import argparse
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_scale import machine, run_measured  # noqa: E402

DEFAULTS = {  # quick settings: the point is memory and time against N, not the numbers
    "evaluate": "--split test --num-samples 64 --steps 2",
    "audit": "--num-samples 256 --steps 2",
    "utility": "--arms trtr --fractions '' --seeds 0 --epochs 1",
    "sample": "--num-images 64 --steps 2",
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--arms", default="evaluate,audit,sample")
    p.add_argument("--label", default="", help="What differs in this run (code, setting), for the results file.")
    for arm in DEFAULTS:
        p.add_argument(f"--{arm}-args", default=DEFAULTS[arm])
    args = p.parse_args()
    run = Path(args.run)
    config = json.loads((run / "run_config.json").read_text())
    work = Path(tempfile.mkdtemp(prefix="commands-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for number, arm in enumerate(args.arms.split(",")):
        extra = shlex.split(getattr(args, f"{arm}_args"))
        out = work / f"{number}-{arm}.{'npz' if arm == 'sample' else 'json'}"
        cmd = [sys.executable, "-m", "medgen_diffusers.cli", arm, str(run), "--out", str(out), *extra]
        seconds, peak, _ = run_measured(cmd, env)
        row = {"arm": arm, "args": " ".join(extra), "label": args.label, "seconds": round(seconds, 1),
               "peak_rss_anon_gib": round(peak, 3), "dataset": Path(config["dataset"]).name,
               "resolution": config.get("resolution"), "machine": machine(),
               "pixels": "real BloodMNIST-28 upsampled to 256 px"}
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

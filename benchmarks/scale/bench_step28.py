"""The 28-px MedMNIST training step, this code vs the code before the prepared store (an older checkout,
``--baseline-code``, e.g. a worktree of 712940a): the same `train_unconditional.py` command (BloodMNIST-28, the
default preset and batch, `--mixed_precision auto`), each arm run ROUNDS times in alternation; the step time is
taken from metrics.jsonl between step WARMUP and the last step (start-up and first-step costs excluded).

    python benchmarks/scale/bench_step28.py --baseline-code ../base712 --out benchmarks/results/scale/step28.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_scale import machine  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def step_seconds(code: Path, steps: int, warmup: int) -> float:
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "run"
        env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1", "MEDGEN_CACHE": str(Path(work) / "c")}
        subprocess.run([sys.executable, str(code / "train_unconditional.py"), "--output_dir", str(out),
                        "--max_train_steps", str(steps), "--lr_warmup_steps", "1", "--num_sample_images", "0",
                        "--logger", "none", "--checkpointing_steps", str(steps)], env=env, cwd=code, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        rows = [r for r in rows if "steps_per_s" in r]
        # steps_per_s is cumulative since the run's first step: recover the time at each step
        at = {r["step"]: r["step"] / r["steps_per_s"] for r in rows}
        return (at[steps] - at[warmup]) / (steps - warmup)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--baseline-code", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    arms = {"this code": REPO, "before the store": Path(args.baseline_code).resolve()}
    times = {name: [] for name in arms}
    for _ in range(args.rounds):
        for name, code in arms.items():
            times[name].append(step_seconds(code, args.steps, args.warmup))
            print(name, round(times[name][-1], 4), flush=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    result = {"machine": machine(), "steps": args.steps, "warmup": args.warmup, "seconds_per_step": times,
              "median_seconds_per_step": median,
              "speed_ratio_this_vs_before": round(median["before the store"] / median["this code"], 3),
              "what": "BloodMNIST-28 training step (default preset, batch and precision), two codes alternated"}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median_seconds_per_step"]), result["speed_ratio_this_vs_before"])


if __name__ == "__main__":
    main()

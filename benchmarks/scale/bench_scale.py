"""Hospital-scale data, measured: prepare throughput (1 and 2 workers) and training's peak anonymous memory and
launch-to-first-step time, from a prepared store (this code) and from today's in-memory loader (an older checkout,
``--baseline-code``), on folders made by make_folder.py (real BloodMNIST pixels upsampled to 256 px: say so).

Memory is the ``RssAnon`` of the whole process tree, sampled every 0.1 s from /proc (page cache is not counted:
a memory-mapped store lives there). Results: one JSON object per arm, appended to --out.

    python benchmarks/scale/bench_scale.py --folder ../scale-data/gray256_10k --folder ../scale-data/gray256_30k \
        --baseline-code ../baseline-checkout --out benchmarks/results/scale/scale.json
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tree_rss_anon_kib(root_pid: int) -> int:
    """RssAnon (KiB) summed over a process and all its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry))
            except OSError:
                continue
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def run_measured(cmd, env, first_step_file=None, cwd=None):
    """(seconds, peak RssAnon GiB, seconds to the first logged step or None) of a command."""
    start = time.perf_counter()
    process = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, first = 0, [None]

    def watch():
        nonlocal peak
        while process.poll() is None:
            peak = max(peak, tree_rss_anon_kib(process.pid))
            if first_step_file and first[0] is None and Path(first_step_file).is_file() and \
                    Path(first_step_file).stat().st_size > 0:
                first[0] = time.perf_counter() - start
            time.sleep(0.1)

    thread = threading.Thread(target=watch)
    thread.start()
    _, err = process.communicate()
    thread.join()
    if process.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed: {err[-2000:]}")
    return time.perf_counter() - start, peak / 2**20, first[0]


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--folder", action="append", required=True, help="Image folders (train/val/test).")
    p.add_argument("--baseline-code", default=None, help="A checkout of the code before the store (in-memory loader).")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--arms", default="prepare1,prepare2,store,baseline")
    p.add_argument("--cache", default=None, help="A MEDGEN_CACHE to reuse (kept): the training arms find the folder "
                                                 "prepared there instead of preparing it in a fresh cache first.")
    args = p.parse_args()
    arms = args.arms.split(",")
    python = sys.executable
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for folder in map(Path, args.folder):
        count = sum(1 for _ in (folder / "train").rglob("*.png"))
        work = Path(tempfile.mkdtemp(prefix="scale-"))
        env = {**os.environ, "MEDGEN_CACHE": args.cache or str(work / "cache"), "HF_HUB_OFFLINE": "1"}
        rows = []
        for workers in (1, 2):
            if f"prepare{workers}" in arms:
                store = work / f"store{workers}"
                seconds, peak, _ = run_measured([python, "-m", "medgen_diffusers.cli", "prepare", str(folder),
                                                 "--out", str(store), "--workers", str(workers)], env)
                total = count + sum(1 for s in ("val", "test") for _ in (folder / s).rglob("*.png"))
                rows.append({"arm": f"prepare, {workers} worker(s)", "images": total, "seconds": round(seconds, 1),
                             "images_per_s": round(total / seconds, 1), "peak_rss_anon_gib": round(peak, 3)})
                shutil.rmtree(store)
        train = ["--dataset", str(folder), "--model_preset", "tiny", "--train_batch_size", "8", "--max_train_steps",
                 str(args.steps), "--lr_warmup_steps", "1", "--num_sample_images", "0", "--logger", "none",
                 "--checkpointing_steps", "1000", "--mixed_precision", "no"]
        for arm, code in (("store", REPO), ("store2", REPO), ("baseline", args.baseline_code)):
            if arm not in arms or code is None:
                continue
            if arm.startswith("store") and not (work / "warm").exists():  # a first run prepares (or finds) the cache
                run_measured([python, str(REPO / "train_unconditional.py"), "--output_dir", str(work / "warm"),
                              *train], env, cwd=REPO)
            run_dir = work / f"run-{arm}"
            # store2: two processes (torchrun, gloo), each reading its shard of the same memory-mapped store.
            launcher = [python, "-m", "torch.distributed.run", "--nproc_per_node", "2"] if arm == "store2" else [python]
            seconds, peak, first = run_measured([*launcher, str(Path(code) / "train_unconditional.py"), "--output_dir",
                                                 str(run_dir), *train], {**env, "PYTHONPATH": str(code)},
                                                run_dir / "metrics.jsonl", cwd=code)
            what = {"store": "prepared store", "store2": "prepared store, 2 processes",
                    "baseline": "in-memory loader (before)"}[arm]
            rows.append({"arm": f"train {args.steps} steps, {what}",
                         "train_images": count, "seconds": round(seconds, 1),
                         "launch_to_first_step_s": None if first is None else round(first, 1),
                         "peak_rss_anon_gib": round(peak, 3),
                         "uint8_pixels_gib": round(count * 256 * 256 / 2**30, 3)})
        for row in rows:
            row.update(folder=folder.name, machine=machine(), pixels="real BloodMNIST-28 upsampled to 256 px")
            print(json.dumps(row))
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""benchmarks/results/dp/summary.{md,json} from the result files benchmarks/dp/run_dp.sh wrote (any subset)."""
import json
import platform
import sys
from pathlib import Path

import torch

out, work = Path(sys.argv[1]), Path(sys.argv[2])
ARMS = ["nodp", "dp10", "prior", "prior_dp10", "prior_dp1", "mem_nodp", "mem_dp10"]


def read(path):
    return json.loads(path.read_text()) if path.is_file() else None


rows, table = [], {}
for arm in ARMS:
    run = work / arm
    config, summary = read(run / "run_config.json") or {}, read(run / "train_summary.json") or {}
    ev, ut, au = (read(out / f"{arm}_{k}.json") for k in ("evaluation", "utility", "audit"))
    privacy = summary.get("privacy") or {}
    pixel = ((au or {}).get("nearest_neighbours") or {}).get("pixel") or {}
    mia = (au or {}).get("membership_inference") or {}
    std = (ev or {}).get("standard") or {}
    floor = ((ev or {}).get("floor") or {}).get("standard") or {}
    entry = {
        "epsilon": privacy.get("epsilon"), "delta": privacy.get("delta"),
        "noise_multiplier": (config.get("privacy") or {}).get("noise_multiplier"),
        # steps / the rate of the run's last leg: a resumed run's wall_time_s counts its last leg only.
        "steps": summary.get("global_step"),
        "train_time_s": summary["global_step"] / summary["steps_per_s"] if summary.get("steps_per_s") else None,
        "init_from": Path(config["init_from"]).name if config.get("init_from") else None,
        "test_fid": std.get("fid"), "floor_fid": floor.get("fid"),
        "tstr_ratio_acc": (ut or {}).get("tstr_ratio", {}).get("acc"),
        "copy_rate": (pixel.get("copy_rate") or {}).get("synthetic"),
        "copy_rate_test_baseline": (pixel.get("copy_rate") or {}).get("test"),
        "gu": (pixel.get("memorized_gu") or {}).get("synthetic"), "membership_auc": mia.get("auc"),
    }
    table[arm] = entry
    if summary:
        fmt = lambda v, d=3: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
        ratio = None if entry["test_fid"] is None or not entry["floor_fid"] else entry["test_fid"] / entry["floor_fid"]
        rows.append(f"| {arm} | {fmt(entry['epsilon'], 2) if privacy else '∞ (no DP)'} | "
                    f"{fmt(entry['noise_multiplier'])} | {entry['steps']} | {fmt((entry['train_time_s'] or 0) / 60, 1)} | "
                    f"{fmt(entry['test_fid'], 1)} ({fmt(ratio, 2)}× floor {fmt(entry['floor_fid'], 1)}) | "
                    f"{fmt(entry['tstr_ratio_acc'])} | {fmt(entry['copy_rate'])} vs {fmt(entry['copy_rate_test_baseline'])} | "
                    f"{fmt(entry['gu'])} | {fmt(entry['membership_auc'])} |")
machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
(out / "summary.json").write_text(json.dumps({"machine": machine, "arms": table}, indent=2) + "\n")
(out / "summary.md").write_text(
    f"Machine: {machine}. Written by benchmarks/dp/summarise.py from benchmarks/dp/run_dp.sh's results.\n\n"
    "| arm | ε (δ in summary.json) | σ | steps | train CPU-min | test FID (× floor) | TSTR/TRTR ACC | copy rate vs test | "
    "Gu | membership AUC |\n|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
print((out / "summary.md").read_text())

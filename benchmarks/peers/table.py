"""Merge the peers' result files (benchmarks/results/peers/ARM_ROW.json) into one table: FID beside its floor, and
each peer's FID over ours at the same sampler budget and N (the goal: ours >= 20 % lower, i.e. the ratio >= 1.25).

    .venv/bin/python benchmarks/peers/table.py            # prints the markdown table, writes results/peers/peers.json
"""

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results" / "peers"
ORDER = ("ours", "diffusers_example", "monai", "lucidrains")


def rows():
    out = []
    for path in sorted(RESULTS.glob("*_*.json")):
        if path.name == "peers.json":
            continue
        r = json.loads(path.read_text())
        s, f = r["standard"], r["floor"]["standard"]
        out.append({"arm": r["arm"], "row": r["row"], "num": r["num_generated"], "fid": s["fid"], "floor_fid": f["fid"],
                    "kid": s["kid"], "precision": s.get("precision"), "recall": s.get("recall"),
                    "parameters": r["parameters"], "train_steps": r["train_steps"],
                    "train_cpu_min": r["train_cpu_s"] / 60, "sampler": r["sampling"], "file": path.name})
    ours = {(r["row"], r["num"]): r["fid"] for r in out if r["arm"] == "ours"}
    for r in out:
        key = ("own20" if r["row"].startswith(("own", "ddim")) else r["row"], r["num"])
        # A peer at its default steps is compared with ours at ours (20 steps), at the same N.
        mine = ours.get(key) or ours.get(("own20_n%d" % r["num"], r["num"])) or ours.get(("own20", r["num"]))
        r["fid_over_ours"] = None if mine is None else r["fid"] / mine
    return sorted(out, key=lambda r: (ORDER.index(r["arm"]) if r["arm"] in ORDER else 9, r["num"] != 1712, r["row"]))


def main():
    table = rows()
    (RESULTS / "peers.json").write_text(json.dumps(table, indent=1) + "\n")
    print("| arm | params | train steps | train CPU-min | sampler | N | val FID | floor | FID / floor | KID | P / R "
          "| s per image | FID / ours |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in table:
        sampler = r["sampler"] or {}
        name = f"{sampler.get('scheduler', '?')} {sampler.get('sampler_steps', '?')}"
        ratio = "—" if r["arm"] == "ours" or r["fid_over_ours"] is None else f"{r['fid_over_ours']:.2f}×"
        pr = "" if r["precision"] is None else f"{r['precision']:.3f} / {r['recall']:.3f}"
        print(f"| {r['arm']} | {r['parameters'] / 1e6:.2f} M | {r['train_steps']:,} | {r['train_cpu_min']:.1f} | {name} "
              f"| {r['num']:,} | {r['fid']:.2f} | {r['floor_fid']:.2f} | {r['fid'] / r['floor_fid']:.2f}× | "
              f"{r['kid']:.4f} | {pr} | {sampler.get('seconds_per_image', float('nan')):.3f} | {ratio} |")


if __name__ == "__main__":
    main()

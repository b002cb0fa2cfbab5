#!/usr/bin/env bash
# Issue 41's one <= 60 CPU-minute attempt to close the 4-step model's utility gap, chosen on val: sample the 4-step
# student with classifier-free guidance (its null-class embedding is the teacher's; 8 network evaluations instead
# of 4, still under the default model's 20). No retraining: the cheapest lever that changes what a classifier
# learns from the images. A reduced protocol (ResNet-18 trained on 3,000 real (TRTR) and 3,000 synthetic (TSTR)
# images, 8 epochs = 187 steps each, classifier seed 0, scored on the real **val** split) for three arms, each
# ~17 CPU-minutes on one thread:
#   student (guidance none, as shipped) / student, guidance 2.0 / the default 20-step model (the target).
# Two arms run at once (one thread each). Results in $OUT, then benchmarks/results/utility/fast_model_attempt_val.json.
#   OUT=../bg-runs/attempt41 bash benchmarks/fast_model_guidance_attempt.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-../bg-runs/attempt41}
export MEDMNIST_ROOT=${MEDMNIST_ROOT:-$(realpath ../shared/data)} HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
mkdir -p "$OUT"
common=(--arms trtr,tstr --fractions "" --seeds 0 --split val --num-train 3000 --epochs 8 --device cpu)
arm() {  # name, pipeline, extra args
  local name=$1 pipe=$2; shift 2
  [ -f "$OUT/$name.json" ] || { /usr/bin/time -v .venv/bin/medgen utility "$pipe" "${common[@]}" "$@" \
      --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1; }
}
arm student medgen_diffusers/pretrained/bloodmnist-4step &
arm student_g2 medgen_diffusers/pretrained/bloodmnist-4step --guidance-scale 2.0 &
wait
arm default medgen_diffusers/pretrained/bloodmnist
.venv/bin/python - "$OUT" <<'PY'
import json, re, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {}
for name in ("student", "student_g2", "default"):
    result = json.loads((out / f"{name}.json").read_text())
    log = (out / f"{name}.log").read_text()
    cpu = sum(float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", log))
    trtr, tstr = result["arms"]["trtr"], result["arms"]["tstr"]
    rows[name] = {"tstr_acc": tstr["acc_mean"], "tstr_auc": tstr["auc_mean"], "trtr_acc": trtr["acc_mean"],
                  "tstr_ratio": result["tstr_ratio"], "cpu_minutes": round(cpu / 60, 1),
                  "generation": result.get("generation"), "provenance": result.get("provenance")}
Path("benchmarks/results/utility/fast_model_attempt_val.json").write_text(json.dumps({
    "what": "issue 41's attempt: the 4-step student sampled with classifier-free guidance 2.0, vs as shipped and vs "
            "the default model; reduced protocol (3,000 real / 3,000 synthetic images, ResNet-18 8 epochs, seed 0) on val",
    "arms": rows}, indent=2) + "\n")
print(json.dumps(rows, indent=2))
PY

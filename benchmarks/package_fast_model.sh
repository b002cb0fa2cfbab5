#!/usr/bin/env bash
# Turn a finished distillation run (distill_lcm.py) into the shipped 4-step model: stage a copy, score it on test,
# audit it, write its card, then copy it into the package as medgen_diffusers/pretrained/bloodmnist-4step
# (`BloodMNISTPipeline.from_pretrained(medgen_diffusers.FAST_MODEL)`, `medgen sample --fast`).
#   RUN=../bg-runs/lcm_round2_500 bash benchmarks/package_fast_model.sh
# The run: benchmarks/distill_default.sh's recipe (500 steps, lr 2e-5, batch 64, bf16, seed 0) from the shipped
# teacher; its step-500 weights are the ones chosen on val (benchmarks/results/few_step/README.md).
# Resumable: a step whose result file is already in the stage folder is skipped.
# Knobs: STAGE (default $RUN/package); AUDIT_SPACES (default pixel: the inception space costs ~25 CPU-minutes of
# Inception features of all 11,959 training images); UTILITY_ARGS (empty: no utility run; the card says so).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:?set RUN to the distillation run folder}
STAGE=${STAGE:-$RUN/package}
DEST=medgen_diffusers/pretrained/bloodmnist-4step
AUDIT_SPACES=${AUDIT_SPACES:-pixel}
UTILITY_ARGS=${UTILITY_ARGS:-}
BIN=.venv/bin
[ -n "${MEDMNIST_ROOT:-}" ] || [ ! -f ../shared/data/bloodmnist.npz ] || export MEDMNIST_ROOT=$(cd ../shared/data && pwd)

# 1. The staged copy: weights, LCMScheduler with its 4 saved steps, pipeline file, configs, metrics.
if [ ! -f "$STAGE/model_index.json" ]; then
  mkdir -p "$STAGE"
  $BIN/python - "$RUN" "$STAGE" <<'PY'
import shutil, sys
from medgen_diffusers import BloodMNISTPipeline
run, dest = sys.argv[1:]
BloodMNISTPipeline.from_pretrained(run).save_pretrained(dest)
for name in ("run_config.json", "distill_config.json", "metrics.jsonl"):
    shutil.copy(f"{run}/{name}", f"{dest}/{name}")
PY
fi

# 2. Headline numbers: test split, N = 3,421, its own 4-step sampler, both protocols, the floor.
[ -f "$STAGE/evaluation.json" ] || $BIN/medgen evaluate "$STAGE" --split test --out "$STAGE/evaluation.json"
# 3. Privacy audit: copies and membership inference against the training images; the closest-pairs figure
#    (BloodMNIST is public).
[ -f "$STAGE/audit.json" ] || $BIN/medgen audit "$STAGE" --num-samples 1000 --num-mia 1000 --spaces "$AUDIT_SPACES" \
    --out "$STAGE/audit.json" --figure "$STAGE/audit_closest_pairs.png"
# 4. Utility only when asked (TSTR/TRTR costs hours on 2 CPU cores).
[ -z "$UTILITY_ARGS" ] || [ -f "$STAGE/utility.json" ] || \
    eval "$BIN/medgen utility \"\$STAGE\" $UTILITY_ARGS --out \"\$STAGE/utility.json\""
# 5. Trust summary into evaluation.json, a class grid, the card; then the copy (no local paths ship).
$BIN/python - "$STAGE" <<'PY'
import json, sys
from pathlib import Path
from medgen_diffusers.model_card import trust_summary
from medgen_diffusers.provenance import write_json_atomic
stage = Path(sys.argv[1])
read = lambda name: json.loads((stage / name).read_text()) if (stage / name).is_file() else None
evaluation = read("evaluation.json")
evaluation["trust"] = trust_summary(read("audit.json"), read("utility.json"))
write_json_atomic(evaluation, stage / "evaluation.json")
PY
[ -f "$STAGE/samples.png" ] || $BIN/medgen sample "$STAGE" --num-images 64 --balanced --out "$STAGE/samples.png"
$BIN/medgen card "$STAGE" --repo-id "$DEST" --description "The 4-step latent-consistency student of the shipped \
BloodMNIST model (medgen_diffusers/pretrained/bloodmnist), distilled with distill_lcm.py: 4 network evaluations per \
image instead of the teacher's 20."
$BIN/python benchmarks/ship_folder.py "$RUN" "$STAGE" "$DEST"  # no local paths ship
du -sh "$DEST"

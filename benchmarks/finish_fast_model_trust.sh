#!/usr/bin/env bash
# Issue 41: the shipped 4-step model's utility (3 classifier seeds of utility_fast_model.sh, merged) and its
# Inception-space audit beside the pixel one, saved in its folder (utility.json, audit.json), in evaluation.json's
# trust summary and on its card -- as the default model has them.
#   bash benchmarks/finish_fast_model_trust.sh        # after `SEEDS="0 1 2" benchmarks/utility_fast_model.sh`
# Resumable: a step whose output exists is skipped (an $STAGE/audit.json already there is used as it is). The audit
# (1,000 samples, pixel + Inception space against all 11,959 training images) takes ~30 CPU-minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=medgen_diffusers/pretrained/bloodmnist-4step
OUT=${OUT:-../bg-runs/utility-4step}
STAGE=${STAGE:-../bg-runs/fast-trust}
MERGED=benchmarks/results/utility/fast_model_test.json
export MEDMNIST_ROOT=${MEDMNIST_ROOT:-$(realpath ../shared/data)} HF_HUB_OFFLINE=1
mkdir -p "$STAGE"
[ -f "$MERGED" ] || .venv/bin/medgen utility --merge "$OUT/seed0.json" "$OUT/seed1.json" "$OUT/seed2.json" --out "$MERGED"
[ -f "$STAGE/audit.json" ] || .venv/bin/medgen audit "$DEST" --num-samples 1000 --num-mia 1000 \
    --spaces pixel,inception --out "$STAGE/audit.json" --figure "$STAGE/audit_closest_pairs.png"
.venv/bin/python - "$DEST" "$STAGE" "$MERGED" <<'PY'
import json, shutil, sys
from pathlib import Path
from medgen_diffusers.model_card import trust_summary
from medgen_diffusers.provenance import folder_weights_sha256, redact_paths, write_json_atomic
dest, stage, merged = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
weights = folder_weights_sha256(dest)
utility, audit = json.loads(merged.read_text()), json.loads((stage / "audit.json").read_text())
for name, result in (("utility", utility), ("audit", audit)):
    assert result["provenance"]["weights_sha256"] == weights, f"{name}: not this model's weights"
    write_json_atomic(redact_paths(result), dest / f"{name}.json")
shutil.copy(stage / "audit_closest_pairs.png", dest / "audit_closest_pairs.png")
evaluation = json.loads((dest / "evaluation.json").read_text())
evaluation["trust"] = trust_summary(audit, utility)
write_json_atomic(evaluation, dest / "evaluation.json")
PY
# The card is written in place by the library (the `medgen card` command never writes into a shipped model).
.venv/bin/python - "$DEST" <<'PY'
import sys
from medgen_diffusers.model_card import write_card
write_card(sys.argv[1], repo_id=sys.argv[1], description="The 4-step latent-consistency student of the shipped "
           "BloodMNIST model (medgen_diffusers/pretrained/bloodmnist), distilled with distill_lcm.py: 4 network "
           "evaluations per image instead of the teacher's 20.")
PY
git diff --stat -- "$DEST"

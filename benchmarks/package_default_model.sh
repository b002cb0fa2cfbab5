#!/usr/bin/env bash
# Turn a finished training run into the shipped default model: stage a copy with the default sampler, score it on
# test, audit it, measure its utility, draw its figures, write its card, then copy it into the package.
#   RUN=../bg-runs/round2 bash benchmarks/package_default_model.sh
# Resumable: a step whose result file is already in the stage folder is skipped, so a rerun after an interruption
# (or after running one step by hand, with the command below) goes on where it stopped.
# Knobs (environment):
#   STAGE          where the copy is built and scored (default $RUN/package; medgen never writes into the package)
#   CURVE_EVERY    post-hoc FID/KID curve every N steps from the run's checkpoints (0: skip; ~4 CPU-min a point)
#   UTILITY_ARGS   `medgen utility` options. Default: the full protocol (21 ResNet-18 runs; ~7 min on an H200,
#                  ~10 hours on 2 CPU cores). Without a GPU, the headline pair on one seed (~75 min, one thread):
#                  UTILITY_ARGS='--device cpu --arms trtr,tstr --fractions "" --num-seeds 1'; more seeds side by side
#                  with `--seeds 1` / `--seeds 2` in other processes, merged into $STAGE/utility.json with
#                  `medgen utility --merge`, then rerun this script (it rewrites the card and swaps again)
#   PREVIOUS       the package being replaced: its evaluation.json, run_config.json and FID curve are kept under
#                  benchmarks/results/previous_default/ so the README can show both (default: the current one)
#   PREVIOUS_EVALUATION, PREVIOUS_LABEL   its test evaluation (same protocol) and name for the card's metrics table
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:?set RUN to the training run folder (a saved pipeline with run_config.json)}
STAGE=${STAGE:-$RUN/package}
DEST=medgen_diffusers/pretrained/bloodmnist
SAMPLER=${SAMPLER:-DDIMScheduler}
SAMPLER_STEPS=${SAMPLER_STEPS:-20}
SPACING=${SPACING:-trailing}  # first of 20 steps at t=999; DDPM's "leading" starts at 950 (see bench_samplers.py)
CURVE_EVERY=${CURVE_EVERY:-1000}
UTILITY_ARGS=${UTILITY_ARGS:-}
PREVIOUS=${PREVIOUS:-$DEST}
PREVIOUS_EVALUATION=${PREVIOUS_EVALUATION:-$PREVIOUS/evaluation.json}  # its test numbers, shown beside the new ones
PREVIOUS_LABEL=${PREVIOUS_LABEL:-the model it replaced}
BIN=.venv/bin
[ -n "${MEDMNIST_ROOT:-}" ] || [ ! -f ../shared/data/bloodmnist.npz ] || export MEDMNIST_ROOT=$(cd ../shared/data && pwd)

# 1. The staged copy: weights, pipeline file, configs, metrics; saved with the default sampler and its steps.
if [ ! -f "$STAGE/model_index.json" ]; then
  mkdir -p "$STAGE"
  $BIN/python - "$RUN" "$STAGE" "$SAMPLER" "$SAMPLER_STEPS" "$SPACING" <<'EOF'
import shutil, sys
import diffusers
from medgen_diffusers import BloodMNISTPipeline
run, dest, sampler, steps, spacing = sys.argv[1:]
pipe = BloodMNISTPipeline.from_pretrained(run)
pipe.scheduler = getattr(diffusers, sampler).from_config(pipe.scheduler.config, timestep_spacing=spacing)
pipe.register_to_config(default_num_inference_steps=int(steps))
pipe.save_pretrained(dest)
for name in ("run_config.json", "train_summary.json", "metrics.jsonl", "samples.png"):
    shutil.copy(f"{run}/{name}", f"{dest}/{name}")
EOF
fi

# 2. FID/KID curve from the kept checkpoints (runs trained on one core have no --eval_steps).
if [ "$CURVE_EVERY" -gt 0 ]; then
  (cd benchmarks && ../$BIN/python eval_curve.py "$(cd .. && realpath "$RUN")" --metrics "$(cd .. && realpath "$STAGE")/metrics.jsonl" \
      --prediction_type v_prediction --beta_schedule squaredcos_cap_v2 --every "$CURVE_EVERY")
fi

# 3. Headline numbers: test split, N = 3,421, default sampler, both protocols, the floor.
[ -f "$STAGE/evaluation.json" ] || $BIN/medgen evaluate "$STAGE" --split test --out "$STAGE/evaluation.json"

# 4. Privacy audit (both distance spaces; all train and test images), which the card's "Utility and privacy" reads.
[ -f "$STAGE/audit.json" ] || $BIN/medgen audit "$STAGE" --num-samples 1000 --num-mia 1000 --spaces pixel,inception \
    --out "$STAGE/audit.json" --figure "$STAGE/audit_closest_pairs.png"

# 5. Utility: classifiers trained on synthetic vs real images; then the headline trust numbers go into
#    evaluation.json beside FID.
[ -f "$STAGE/utility.json" ] || eval "$BIN/medgen utility \"\$STAGE\" $UTILITY_ARGS --out \"\$STAGE/utility.json\""
#    The replaced model's test numbers go beside them (once: a rerun after the swap keeps the first).
$BIN/python - "$STAGE" "$PREVIOUS_EVALUATION" "$PREVIOUS_LABEL" <<'EOF'
import json, sys
from pathlib import Path
from medgen_diffusers.provenance import write_json_atomic as write_json
from medgen_diffusers.model_card import trust_summary
stage, previous, label = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
evaluation = json.loads((stage / "evaluation.json").read_text())
evaluation["trust"] = trust_summary(*(json.loads((stage / f).read_text()) for f in ("audit.json", "utility.json")))
if "previous" not in evaluation and previous.is_file():
    old = json.loads(previous.read_text())
    evaluation["previous"] = {"label": label, "file": previous.as_posix(), "standard": old["standard"],
                              "seed": old["seed"], "generation": old.get("generation")}
write_json(evaluation, stage / "evaluation.json")
EOF

# 6. Figures and the card (which reads evaluation.json), then the swap; the replaced model's numbers are kept.
[ -f "$STAGE/classes.png" ] || $BIN/medgen figures "$STAGE"
$BIN/medgen card "$STAGE" --repo-id "$DEST"
# (Only while the package still holds the old weights: a rerun after the swap must not save the new model as "previous".)
if [ "$(realpath "$PREVIOUS")" = "$(realpath "$DEST")" ] && [ -f "$DEST/evaluation.json" ] && \
   ! cmp -s "$STAGE/unet/diffusion_pytorch_model.safetensors" "$DEST/unet/diffusion_pytorch_model.safetensors"; then
  mkdir -p benchmarks/results/previous_default  # its audit and utility results already live in results/
  cp "$DEST"/evaluation.json "$DEST"/run_config.json benchmarks/results/previous_default/
  [ ! -f "$DEST/fid_kid_curves.png" ] || cp "$DEST/fid_kid_curves.png" benchmarks/results/previous_default/
fi
# audit_closest_pairs.png ships too: BloodMNIST is public, and the web demo's card tab shows it (medgen app).
# No local path ships: the JSONs name the package, not where this machine staged it.
$BIN/python benchmarks/ship_folder.py "$RUN" "$STAGE" "$DEST"
cp "$STAGE/audit_closest_pairs.png" benchmarks/results/audit/default_closest_pairs_pixel.png
du -sh "$DEST"

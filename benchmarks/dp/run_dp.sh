#!/usr/bin/env bash
# Differentially private training measured (issue 22), rerunnable and resumable: every arm skips what it finished and
# resumes its training from the latest checkpoint. Results: benchmarks/results/dp/ (summary.md from summarise.py).
#
#   1. The audit sees DP: the memorising recipe of tests/conftest.py (8 real images, x0-prediction, 800 steps) with
#      and without --dp_epsilon 10, audited with the same defaults (pixel space, 64 samples).
#   2. BloodMNIST-28, train split cut in two seeded halves: "public" (prior) and "private". Arms on the private half,
#      same recipe (tiny UNet, v-prediction, cosine), each scored on the real test split: FID with its floor, TSTR/TRTR,
#      audit (copy rate, Gu, membership AUC; members drawn from the private half).
#        nodp      -- no DP, the CPU budget of one DP arm
#        dp10      -- DP-SGD eps=10 from scratch
#        prior     -- the public prior alone (trained on the public half, never saw the private one)
#        prior_dp10, prior_dp1 -- the prior DP fine-tuned on the private half at eps=10 and eps=1
# Usage: benchmarks/dp/run_dp.sh [WORK_DIR]   (default ~/medgen-dp-work; checkpoints stay there, not in the repo)
# Sizes: DP_STEPS (80), PRIOR_STEPS (800), NODP_STEPS (same CPU time as a DP arm: 4x DP_STEPS at batch 128),
# EVAL_N (300 generated vs 300 real test images; the floor: 300 train vs the same test images),
# UTILITY_ARGS (the classifier budget of `medgen utility`, default a quick 600 images x 8 epochs; "--epochs 10" is the
# utility protocol's own budget on the whole private half), OUT (results folder), ARMS (comma-separated subset of
# mem,prior_dp10,nodp,prior_dp1,prior,dp10; default all). E.g. the longer prior run of benchmarks/results/dp/long:
#   OUT=benchmarks/results/dp/long ARMS=prior_dp10,prior PRIOR_STEPS=2000 DP_STEPS=200 UTILITY_ARGS="--epochs 10" \
#       benchmarks/dp/run_dp.sh ~/medgen-dp-long
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-$HOME/medgen-dp-work}
data=${MEDMNIST_ROOT:-$(realpath ../shared/data)}
DP_STEPS=${DP_STEPS:-80}
PRIOR_STEPS=${PRIOR_STEPS:-800}
NODP_STEPS=${NODP_STEPS:-$((DP_STEPS * 4))}
EVAL_N=${EVAL_N:-300}
UTILITY_ARGS=${UTILITY_ARGS:---num-train 600 --epochs 8}
ARMS=${ARMS:-mem,prior_dp10,nodp,prior_dp1,prior,dp10}
out=${OUT:-benchmarks/results/dp}
py=.venv/bin/python
export HF_HUB_OFFLINE=1 MEDMNIST_ROOT="$data"
for arm in ${ARMS//,/ }; do  # a mistyped arm would otherwise run nothing, silently
  [[ ",mem,prior_dp10,nodp,prior_dp1,prior,dp10," == *",$arm,"* ]] || {
    echo "run_dp.sh: unknown arm '$arm' in ARMS; choose from mem,prior_dp10,nodp,prior_dp1,prior,dp10" >&2; exit 2; }
done
mkdir -p "$work" "$out"
want() { [[ ",$ARMS," == *",$1,"* ]]; }
train() {  # OUTPUT_DIR ARGS...: train (or resume) unless the pipeline is already there
  local dir=$1; shift
  [ -f "$dir/model_index.json" ] && return 0
  $py train_unconditional.py --output_dir "$dir" --model_preset tiny --num_sample_images 16 --logger none \
      --checkpointing_steps 20 --checkpoints_total_limit 1 --resume_from_checkpoint latest "$@"
}
score() {  # ARM: test FID with floor, utility, audit -> $out/ARM_*.json
  local arm=$1 dir=$work/$1
  [ -f "$out/${arm}_evaluation.json" ] || .venv/bin/medgen evaluate "$dir" --split test --num-samples "$EVAL_N" \
      --protocols standard --out "$out/${arm}_evaluation.json"
  [ -f "$out/${arm}_utility.json" ] || .venv/bin/medgen utility "$dir" $UTILITY_ARGS --fractions "" \
      --arms trtr,tstr --num-seeds 1 --out "$out/${arm}_utility.json"
  [ -f "$out/${arm}_audit.json" ] || .venv/bin/medgen audit "$dir" --spaces pixel --num-samples "$EVAL_N" \
      --out "$out/${arm}_audit.json"
}

# 1. Memorising set, with and without DP.
if want mem; then
$py - "$work/cells" "$data" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from conftest import write_own_folder
if not Path(sys.argv[1]).exists():
    write_own_folder(Path(sys.argv[1]), sys.argv[2])
PY
memorise="--dataset $work/cells --train_batch_size 8 --learning_rate 3e-3 --lr_scheduler constant --lr_warmup_steps 20 \
  --prediction_type sample --no-use_ema"
train "$work/mem_nodp" $memorise --max_train_steps 800
train "$work/mem_dp10" $memorise --max_train_steps 800 --dp_epsilon 10 --dp_batch_size 2 --dp_noise_multiplicity 4
for arm in mem_nodp mem_dp10; do
  [ -f "$out/${arm}_audit.json" ] || .venv/bin/medgen audit "$work/$arm" --spaces pixel --num-samples 64 \
      --out "$out/${arm}_audit.json"
done
fi

# 2. BloodMNIST halves.
$py - "$data/bloodmnist.npz" "$work" <<'PY'
import sys
from pathlib import Path
import numpy as np
src, work = np.load(sys.argv[1]), Path(sys.argv[2])
order = np.random.default_rng(0).permutation(len(src["train_images"]))
halves = {"public": np.sort(order[: len(order) // 2]), "private": np.sort(order[len(order) // 2:])}
for name, keep in halves.items():
    path = work / f"{name}.npz"
    if not path.exists():
        np.savez(path, train_images=src["train_images"][keep], train_labels=src["train_labels"][keep],
                 **{k: src[k] for k in ("val_images", "val_labels", "test_images", "test_labels")})
PY
common="--lr_warmup_steps 10 --train_batch_size 128"
dp="--dp_batch_size 256 --dp_noise_multiplicity 1 --max_train_steps $DP_STEPS"
if want prior || want prior_dp10 || want prior_dp1; then
  train "$work/prior" --dataset "$work/public.npz" $common --max_train_steps "$PRIOR_STEPS" --lr_warmup_steps 50
fi
# Most telling arm first, each scored as soon as it is trained, so a cut-short run still leaves whole rows.
if want prior_dp10; then
  train "$work/prior_dp10" --dataset "$work/private.npz" $common $dp --dp_epsilon 10 --init_from "$work/prior" \
      --learning_rate 1e-3
  score prior_dp10
fi
if want nodp; then
  train "$work/nodp" --dataset "$work/private.npz" $common --max_train_steps "$NODP_STEPS"
  score nodp
fi
if want prior_dp1; then
  train "$work/prior_dp1" --dataset "$work/private.npz" $common $dp --dp_epsilon 1 --init_from "$work/prior" \
      --learning_rate 1e-3
  score prior_dp1
fi
# The prior alone, scored against the private half (its audit's members: the private half it never saw; its
# classifiers' real arm: the private half too, so its TSTR/TRTR sits beside the fine-tunes').
if want prior; then
  [ -f "$out/prior_evaluation.json" ] || .venv/bin/medgen evaluate "$work/prior" --dataset "$work/private.npz" \
      --split test --num-samples "$EVAL_N" --protocols standard --out "$out/prior_evaluation.json"
  [ -f "$out/prior_utility.json" ] || .venv/bin/medgen utility "$work/prior" --dataset "$work/private.npz" \
      $UTILITY_ARGS --fractions "" --arms trtr,tstr --num-seeds 1 --out "$out/prior_utility.json"
  [ -f "$out/prior_audit.json" ] || .venv/bin/medgen audit "$work/prior" --dataset "$work/private.npz" --spaces pixel \
      --num-samples "$EVAL_N" --out "$out/prior_audit.json"
fi
if want dp10; then
  train "$work/dp10" --dataset "$work/private.npz" $common $dp --dp_epsilon 10
  score dp10
fi
$py benchmarks/dp/summarise.py "$out" "$work"

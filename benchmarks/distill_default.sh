#!/usr/bin/env bash
# Few-step sampler (issue: quality round 2, section 3): latent-consistency distillation of the shipped model into a
# 4-step LCMScheduler pipeline, on one CPU thread (about 5 minutes), checkpoints every 50 steps outside the
# repository; rerun to resume. The checkpoints are then scored on val (eval_distill_checkpoints.py) and the best
# is chosen: with lr 2e-5 and batch 64 the 4-step val FID of the round-2 teacher's student falls to its lowest at step
# 500 and rises after it (test FID 12.22 vs the teacher's 12.00); the first teacher's turned at 300 (at lr 2e-4 from
# step 250 on); see benchmarks/results/few_step/README.md.
#   RUN_DIR=../bg-runs/lcm_round2 OUT=benchmarks/results/few_step/round2_lcm_val_checkpoints.json \
#     bash benchmarks/distill_default.sh
# (The first default model's run, MAX_STEPS=400 into ../bg-runs/lcm_fine, wrote lcm_val_checkpoints.json.)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${RUN_DIR:-../bg-runs/lcm_fine}
OUT=${OUT:-benchmarks/results/few_step/lcm_val_checkpoints.json}  # the checkpoints' val scores
[ -n "${MEDMNIST_ROOT:-}" ] || [ ! -f ../shared/data/bloodmnist.npz ] || export MEDMNIST_ROOT=$(cd ../shared/data && pwd)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${OMP_NUM_THREADS:-1}
.venv/bin/python distill_lcm.py --output_dir "$RUN_DIR" --max_train_steps ${MAX_STEPS:-500} \
  --train_batch_size 64 --learning_rate ${LR:-2e-5} --mixed_precision bf16 --checkpointing_steps 50 \
  --checkpoints_total_limit 20 --seed 0
.venv/bin/python benchmarks/eval_distill_checkpoints.py "$RUN_DIR" --steps 4 --num-samples 256 \
  --out "$OUT"

#!/usr/bin/env bash
# Few-step sampler (issue: quality round 2, section 3): latent-consistency distillation of the shipped model into a
# 4-step LCMScheduler pipeline, on one CPU thread, checkpoints outside the repository; rerun to resume.
#   RUN_DIR=../bg-runs/lcm bash benchmarks/distill_default.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${RUN_DIR:-../bg-runs/lcm}
[ -n "${MEDMNIST_ROOT:-}" ] || [ ! -f ../shared/data/bloodmnist.npz ] || export MEDMNIST_ROOT=$(cd ../shared/data && pwd)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python distill_lcm.py --output_dir "$RUN_DIR" --max_train_steps ${MAX_STEPS:-1500} \
  --train_batch_size 64 --learning_rate ${LR:-2e-5} --mixed_precision bf16 --checkpointing_steps 250 \
  --checkpoints_total_limit 20 --seed 0

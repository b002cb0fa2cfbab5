#!/usr/bin/env bash
# 2 network evaluations (issue 23, part 4): two-phase consistency distillation of the shipped model (distill_lcm.py
# --phases 2: the student jumps to the start of its phase, 999 -> 499 -> clean, and samples with the teacher's DDIM
# sampler in 2 steps), on one CPU thread, checkpoints outside the repository (rerun to resume); then every checkpoint
# is scored on val at 2 network evaluations (N = 256) to choose one. See benchmarks/results/few_step/README.md.
#   RUN_DIR=../bg-runs/pcm2_lr2e-5 LR=2e-5 OUT=benchmarks/results/few_step/pcm2_lr2e-5_val_checkpoints.json \
#     bash benchmarks/distill_phased.sh
# Defaults: the recipe val chose (lr 2e-4, 800 steps, a checkpoint every 100; val picks step 500).
# Knobs: LR, MAX_STEPS, BATCH, EVERY (checkpoint interval), LR_SCHEDULER (constant_with_warmup | cosine),
# DDIM_GRID (the teacher's solver grid, 50 points by default), EMA_DECAY (the target network's, 0.95), PHASES, PRECISION (auto: bf16 where the CPU has bf16 instructions, as when the recipe was chosen; else fp32).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${RUN_DIR:-../bg-runs/pcm2}
OUT=${OUT:-benchmarks/results/few_step/pcm2_val_checkpoints.json}
[ -n "${MEDMNIST_ROOT:-}" ] || [ ! -f ../shared/data/bloodmnist.npz ] || export MEDMNIST_ROOT=$(cd ../shared/data && pwd)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${OMP_NUM_THREADS:-1}
.venv/bin/python distill_lcm.py --output_dir "$RUN_DIR" --phases ${PHASES:-2} --max_train_steps ${MAX_STEPS:-800} \
  --train_batch_size ${BATCH:-64} --learning_rate ${LR:-2e-4} --lr_scheduler ${LR_SCHEDULER:-constant_with_warmup} \
  --num_ddim_timesteps ${DDIM_GRID:-50} --ema_decay ${EMA_DECAY:-0.95} --mixed_precision ${PRECISION:-auto} --checkpointing_steps ${EVERY:-100} \
  --checkpoints_total_limit 40 --seed 0
.venv/bin/python benchmarks/eval_distill_checkpoints.py "$RUN_DIR" --steps ${PHASES:-2} --num-samples 256 \
  --out "$OUT"

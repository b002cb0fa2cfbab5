#!/usr/bin/env bash
# Round-2 default-model candidate (issue: quality per CPU-hour, round 2): the first ablation's winners combined --
# lr 3e-3 with a cosine decay to zero, bf16 autocast, tiny preset, batch 128 -- for 21,000 steps (2x the
# shipped model's 136 CPU-minutes at the 1.31 steps/s bf16 measured on one thread). One CPU thread, checkpoints outside the repository; rerun the
# same command to resume after any interruption (it picks the newest complete checkpoint).
#   RUN_DIR=/work/bg-runs/round2 bash benchmarks/train_round2.sh
# It became the shipped default model (chosen on val, reported on test), packaged with
#   RUN=../bg-runs/round2 STAGE=../bg-runs/round2_package CURVE_EVERY=0 \
#   UTILITY_ARGS='--device cpu --arms trtr,tstr --fractions "" --num-seeds 1' \
#   PREVIOUS_EVALUATION=benchmarks/results/few_step/teacher_test.json \
#   PREVIOUS_LABEL="5,500 steps, lr 1e-3 constant, fp32" bash benchmarks/package_default_model.sh
# and seeds 1 and 2 of the utility pair added later (one process each, then merged; see results/round2/README.md):
#   medgen utility ../bg-runs/round2_package --device cpu --arms trtr,tstr --fractions "" --seeds 1 --out s1.json
#   medgen utility --merge s0.json s1.json s2.json --out ../bg-runs/round2_package/utility.json  # s0: the first run
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${RUN_DIR:-../bg-runs/round2}
[ -n "${MEDMNIST_ROOT:-}" ] || [ ! -f ../shared/data/bloodmnist.npz ] || export MEDMNIST_ROOT=$(cd ../shared/data && pwd)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python train_unconditional.py --output_dir "$RUN_DIR" --model_preset tiny \
  --learning_rate 3e-3 --lr_scheduler cosine --lr_warmup_steps 200 --mixed_precision bf16 \
  --train_batch_size 128 --max_train_steps ${MAX_STEPS:-21000} --checkpointing_steps 250 --checkpoints_total_limit 40 \
  --num_sample_images 16 --save_images_steps 2000 --resume_from_checkpoint latest --seed 0

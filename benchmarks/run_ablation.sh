#!/usr/bin/env bash
# One ablation arm, end to end and resumable: train with train_unconditional.py (one CPU thread), then score the
# final checkpoint on val with eval_checkpoint.py (N=256, DPM-Solver++ 20). Rerun after any interruption.
#   bash benchmarks/run_ablation.sh lr3e-4
# Everything not named by the arm is arm C's recipe (results/ablation/README.md): the training script's defaults
# when the ablation ran, pinned here (--learning_rate 1e-3 --lr_scheduler constant_with_warmup) so that later default changes do not move the baseline.
set -euo pipefail
: "${MEDMNIST_ROOT:?set MEDMNIST_ROOT to the folder that holds bloodmnist.npz, e.g. MEDMNIST_ROOT=../shared/data}"
export MEDMNIST_ROOT
ARM=$1
BIN=.venv/bin
OUT=benchmarks/results/ablation
STEPS=1000 PRESET=tiny WEIGHTS=ema RUN=runs/abl_$ARM
case $ARM in
  lr3e-4) EXTRA=(--learning_rate 3e-4) ;;
  lr3e-3) EXTRA=(--learning_rate 3e-3) ;;
  # Equal wall time, not equal steps: `small` steps cost 3.95x `tiny` ones (results/presets.json).
  small) EXTRA=(); PRESET=small; STEPS=250 ;;
  ema_power0.9) EXTRA=(--ema_power 0.9) ;;
  # bf16 autocast (Accelerate's, fp32 master weights): 1.43x faster steps (results/train_step.json) if quality holds.
  bf16) EXTRA=(--mixed_precision bf16) ;;
  # No EMA: the raw weights of arm C's own run (EMA never touches training, so no second run is needed);
  # `ema` rescores arm C's EMA weights. AT_STEP=3500 scores the shipped model's later checkpoint the same way.
  no_ema) EXTRA=(); RUN=runs/main_v; WEIGHTS=raw; STEPS=${AT_STEP:-1000} ;;
  ema) EXTRA=(); RUN=runs/main_v; STEPS=${AT_STEP:-1000} ;;
  *) echo "unknown arm '$ARM'; see the case list in $0" >&2; exit 2 ;;
esac
if [ ! -d "$RUN/checkpoint-$STEPS" ]; then
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $BIN/accelerate launch --cpu --num_processes 1 --num_machines 1 \
      --mixed_precision no --dynamo_backend no train_unconditional.py --output_dir "$RUN" --model_preset $PRESET \
      --max_train_steps $STEPS --checkpointing_steps 250 --resume_from_checkpoint latest --num_sample_images 0 \
      --logger none --learning_rate 1e-3 --lr_scheduler constant_with_warmup "${EXTRA[@]}"
fi
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $BIN/python benchmarks/eval_checkpoint.py "$RUN/checkpoint-$STEPS" \
    --weights $WEIGHTS --prediction_type v_prediction --beta_schedule squaredcos_cap_v2 \
    --num-samples 256 --out "$OUT/${ARM}_step$STEPS.json"

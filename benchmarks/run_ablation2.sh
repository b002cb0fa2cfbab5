#!/usr/bin/env bash
# Recipe ablation, round 2 (issue: quality per CPU-hour, round 2): one arm, train + score on val, resumable.
#   RUN_ROOT=../bg-runs bash benchmarks/run_ablation2.sh decay
# Budget per arm: 63.6 CPU-minutes = 5,000 steps of the baseline (tiny, batch 128, bf16 autocast) at the 1.31 steps/s
# measured on one idle thread; arms whose step costs more get fewer steps, fixed here in advance (equal CPU time).
# Baseline ("decay"): the round-2 recipe -- v-prediction, cosine noise schedule, lr 3e-3 with 200 warm-up steps and a
# cosine decay to zero over the arm's own steps, bf16 autocast, EMA, dihedral augmentation, seed 0.
# Score: eval_checkpoint.py on the EMA weights, 256 images (DPM-Solver++ 20) vs all 1,712 val images -- the first
# ablation's protocol (results/ablation/README.md), so the two tables compare.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${MEDMNIST_ROOT:-}" ] || [ ! -f ../shared/data/bloodmnist.npz ] || export MEDMNIST_ROOT=$(cd ../shared/data && pwd)
: "${MEDMNIST_ROOT:?set MEDMNIST_ROOT to the folder that holds bloodmnist.npz}"
export MEDMNIST_ROOT OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
ARM=$1
RUN=${RUN_ROOT:-../bg-runs}/abl2_$ARM
OUT=benchmarks/results/ablation2
STEPS=5000 PRESET=tiny BATCH=128 SCHED=cosine PRED=v_prediction
case $ARM in
  decay) EXTRA=() ;;
  constant) EXTRA=(); SCHED=constant_with_warmup ;;
  min_snr) EXTRA=(--snr_gamma 5) ;;
  # A batch of 256 costs ~2x a batch of 128 on the CPU: half the steps, the same images seen.
  batch256) EXTRA=(); BATCH=256; STEPS=2500 ;;
  # `small` steps cost 5.0x `tiny` ones at batch 128 on one thread (results/presets.json: 5.61 vs 1.12 s; 3.95x on
  # 2 quiet cores), so 1,000 steps; the CPU time each arm really used is logged beside it (ps cputime).
  small) EXTRA=(); PRESET=small; STEPS=1000 ;;
  # EDM (Karras et al. 2022; issue 23 part 3): log-normal sigmas and EDM preconditioning, the same UNet, batch and
  # step cost as the baseline, so the same 5,000 steps; scored with EDM's DPM-Solver++ 2M at 20 steps.
  edm) EXTRA=(--formulation edm); PRED=edm ;;
  *) echo "unknown arm '$ARM'; the arms are: decay constant min_snr batch256 small edm" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
if [ ! -d "$RUN/checkpoint-$STEPS" ]; then
  .venv/bin/python train_unconditional.py --output_dir "$RUN" --model_preset $PRESET --train_batch_size $BATCH \
      --learning_rate 3e-3 --lr_scheduler $SCHED --lr_warmup_steps 200 --mixed_precision bf16 \
      --max_train_steps $STEPS --checkpointing_steps 250 --checkpoints_total_limit 2 --resume_from_checkpoint latest \
      --num_sample_images 0 --logger none --seed 0 "${EXTRA[@]}"
fi
.venv/bin/python benchmarks/eval_checkpoint.py "$RUN/checkpoint-$STEPS" --prediction_type $PRED \
    --beta_schedule squaredcos_cap_v2 --num-samples 256 --out "$OUT/${ARM}_step$STEPS.json"

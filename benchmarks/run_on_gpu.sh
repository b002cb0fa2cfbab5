#!/usr/bin/env bash
# Heavy runs for one GPU session, as one script (device time is scarce; everything runs at once):
#   1. resume the round-2 training (benchmarks/train_round2.sh's recipe, unchanged) from the newest checkpoint in
#      $RESUME_DIR, in the background, until it ends or the time box closes;
#   2. GPU checks of the "off the tuned path" paths: training on CUDA in fp16 and bf16, sampling with --device cuda;
#   3. the full utility protocol (medgen utility, test split) of the shipped model.
#   4. if the training ended in time: the new model's guidance sweep (val) and full utility protocol (test).
# Results go to $OUT: results.tar (JSON and logs, refreshed after every step), the newest checkpoint as tar parts, and
# the final pipeline (pipeline.tar) if the training ended.
# Needs: MEDMNIST_ROOT with bloodmnist.npz; diffusers/medmnist/clean-fid/torch-fidelity importable (wheels in .whl are
# installed into /tmp/site when present -- for machines without a package index).
#   OUT=/tmp/out RESUME_DIR=../bg-runs/round2 TIME_BOX=450 bash benchmarks/run_on_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to a results folder}; RESUME_DIR=${RESUME_DIR:?set RESUME_DIR to the round-2 run folder}
TIME_BOX=${TIME_BOX:-450}  # seconds for the training and the utility run, each
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  # Not pip-installed here: setup.cfg maps medgen_diffusers.pipelines to pipelines/, so link it in place.
  [ -e medgen_diffusers/pipelines ] || ln -s ../pipelines medgen_diffusers/pipelines
else
  export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
RES=/tmp/gpu_results; mkdir -p "$OUT" "$RES"
pack() { tar -C "$RES" -cf "$OUT/results.tar.tmp" . && mv "$OUT/results.tar.tmp" "$OUT/results.tar"; }
left() { echo $(( TIME_BOX + 60 - ($(date +%s) - start) )); }  # seconds left in the whole time box
start=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RES/machine.txt"
$PY -c "import torch, diffusers, accelerate; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'accelerate', accelerate.__version__)" | tee -a "$RES/machine.txt"

# 1. Round-2 training, resumed (same flags as train_round2.sh; the checkpoint carries the step, optimizer and EMA).
timeout "$TIME_BOX" $PY train_unconditional.py --output_dir "$RESUME_DIR" --model_preset tiny \
  --learning_rate 3e-3 --lr_scheduler cosine --lr_warmup_steps 200 --mixed_precision bf16 \
  --train_batch_size 128 --max_train_steps 21000 --checkpointing_steps 250 --checkpoints_total_limit 3 \
  --num_sample_images 16 --save_images_steps 2000 --resume_from_checkpoint latest --seed 0 \
  > "$RES/train.log" 2>&1 &
train_pid=$!

# 2. GPU checks (short): fp16 and bf16 training on CUDA, then sampling on CUDA into a MedMNIST-style npz.
{
  for precision in fp16 bf16; do
    $PY train_unconditional.py --output_dir /tmp/gpucheck_$precision --model_preset tiny --max_train_steps 40 \
      --train_batch_size 64 --mixed_precision $precision --checkpointing_steps 20 --num_sample_images 4 \
      --save_images_steps 0 --seed 0 2>&1 | tail -2
    $PY -m medgen_diffusers.cli sample /tmp/gpucheck_$precision --num-images 64 --out /tmp/gpucheck_$precision.npz \
      --device cuda 2>&1 | tail -1
    $PY -c "import numpy as np, json; a = np.load('/tmp/gpucheck_$precision.npz'); x = a[a.files[0]]; \
print(json.dumps({'precision': '$precision', 'files': a.files, 'shape': list(x.shape), 'dtype': str(x.dtype), \
'mean': float(x.mean()), 'std': float(x.std()), \
'summary': json.load(open('/tmp/gpucheck_$precision/train_summary.json'))}))"
  done
} > "$RES/gpu_checks.log" 2>&1
pack

# 3. Utility of the shipped model, full protocol, test split.
timeout "$(left)" $PY -m medgen_diffusers.cli utility --device cuda --out "$RES/utility_shipped.json" \
  > "$RES/utility_shipped.log" 2>&1
echo "utility exit $? after $(( $(date +%s) - start )) s" >> "$RES/utility_shipped.log"; pack

wait $train_pid; echo "training exit $? after $(( $(date +%s) - start )) s" >> "$RES/train.log"

# 4. If the training ended: the new model's guidance sweep on val (TRTR/TSTR only), then its full protocol on test,
#    each only while time is left (the FID half of the choice runs on CPU: benchmarks/eval_checkpoint.py).
if [ -f "$RESUME_DIR/model_index.json" ]; then
  for g in 1 1.5 2 3; do
    [ "$(left)" -gt 40 ] || break
    timeout "$(left)" $PY -m medgen_diffusers.cli utility "$RESUME_DIR" --device cuda --split val --arms trtr,tstr \
      --fractions "" --guidance-scale $g --out "$RES/utility_round2_val_g$g.json" > /dev/null 2>> "$RES/utility_round2.log"; pack
  done
  [ "$(left)" -gt 60 ] && timeout "$(left)" $PY -m medgen_diffusers.cli utility "$RESUME_DIR" --device cuda \
    --out "$RES/utility_round2_test.json" >> "$RES/utility_round2.log" 2>&1
fi
newest=$(ls -d "$RESUME_DIR"/checkpoint-* | sort -V | tail -1)
tar -C "$RESUME_DIR" -cf /tmp/ckpt.tar "$(basename "$newest")" metrics.jsonl && split -b 15M /tmp/ckpt.tar "$OUT/ckpt.tar.part-"
if [ -f "$RESUME_DIR/model_index.json" ]; then  # training ended: the final pipeline
  tar -C "$RESUME_DIR" -cf "$OUT/pipeline.tar" --exclude='checkpoint-*' --exclude=logs --exclude=metrics.jsonl .
fi
pack; ls -la "$OUT"

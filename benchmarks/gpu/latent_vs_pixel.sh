#!/usr/bin/env bash
# Issue 39's GPU run, one command, <= 12 minutes of device time, results as JSON in $OUT/results.json:
#   A. latent vs pixel at 128 px at equal GPU time: pixel = the `tiny` UNet on 128-px images for 2M minutes;
#      latent = `medgen train-vae` (4x down, 32x32x4 latents) for M minutes, then the latent UNet for M minutes.
#      Test FID of each beside the real-vs-real floor (`medgen evaluate --split test`). Data: BloodMNIST's real
#      pixels bicubic-upsampled to 128 px (band-limited content: compares the arms on the same data only).
#   B. the `small` preset at 28 px (train_round2.sh's recipe otherwise) for 2M minutes: the shipped model's open
#      target, test FID <= 9.0 (1.5x the floor; the shipped `tiny` model: 12.00).
#   C. the VAE's rFID (reconstructed test images vs the test split) beside the floor; PSNR/SSIM.
# The three trainings share the GPU at once (each gets about a third of it; the latent chain runs VAE then UNet).
# Steps per arm come from a 30-step probe of each (steps/s x minutes), so every arm's cosine schedule ends in time.
#   OUT=/tmp/out MINUTES=2.5 bash benchmarks/gpu/latent_vs_pixel.sh        # on the device machine
#   OUT=/tmp/smoke SMOKE=1 bash benchmarks/gpu/latent_vs_pixel.sh          # a CPU smoke run: 32 px, a few steps
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:?set OUT to a results folder}; MINUTES=${MINUTES:-2.5}; PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then  # a device machine without a package index: the wheels carried along
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  [ -e medgen_diffusers/pipelines ] || ln -s ../pipelines medgen_diffusers/pipelines
else
  export PYTHONPATH=${PYTHONPATH:-$PWD}
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 MEDMNIST_ROOT=${MEDMNIST_ROOT:-$(realpath ../shared/data)}
RES=128; PIXEL_BATCH=64; VAE_BATCH=32; LATENT_BATCH=64; SMALL_BATCH=128; NUM_EVAL=3000; PROBE=30; REAL=()
if [ -n "${SMOKE:-}" ]; then  # the plumbing only: 32 px, a few steps, 64 real images per FID
  RES=32; PIXEL_BATCH=8; VAE_BATCH=8; LATENT_BATCH=8; SMALL_BATCH=8; NUM_EVAL=64; PROBE=3; MINUTES=0.05; REAL=(--num-real 64)
  export RECON_N=64
fi
W=$OUT/work; mkdir -p "$W"; start=$(date +%s)
log() { echo "[$(( $(date +%s) - start )) s] $*" | tee -a "$OUT/run.log"; }
( nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || grep -m1 "model name" /proc/cpuinfo ) > "$OUT/machine.txt"
$PY -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" >> "$OUT/machine.txt"
DATA=$W/bloodmnist_${RES}px.npz
[ -f "$DATA" ] || $PY benchmarks/latent/make_upsampled.py $RES "$DATA" >> "$OUT/run.log"
log "data ready"

train() { $PY -m medgen_diffusers.cli train --logger none --num_sample_images 0 --checkpointing_steps 100000 "$@"; }
vae() { $PY -m medgen_diffusers.cli train-vae --checkpointing_steps 100000 --base_channels 64 "$@"; }
rate() { $PY -c "import json,sys; print(json.load(open(sys.argv[1]))['steps_per_s'])" "$1"; }
vae_rate() { $PY -c "import json,sys; l=[json.loads(x) for x in open(sys.argv[1])]; print(l[-1]['steps_per_s'])" "$1"; }
# steps_for THIRDS RATE: the steps of THIRDS/3 of MINUTES at RATE steps/s
steps_for() { $PY -c "import sys; print(max(int(float(sys.argv[1]) / 3 * $MINUTES * 60 * float(sys.argv[2])), 10))" "$1" "$2"; }

# Probes (the steps each arm reaches in its minutes; the probes' warm-up makes the estimate conservative). Every
# step below is skipped when its output is there: a rerun after an interruption resumes.
[ -f "$W/probe_pixel/train_summary.json" ] || train --dataset "$DATA" --output_dir "$W/probe_pixel" --max_train_steps $PROBE --train_batch_size $PIXEL_BATCH > /dev/null 2>&1
[ -f "$W/probe_vae/vae_summary.json" ] || vae --dataset "$DATA" --output_dir "$W/probe_vae" --max_train_steps $PROBE --train_batch_size $VAE_BATCH --num_val 8 > /dev/null 2>&1
[ -f "$W/probe_latent/train_summary.json" ] || train --dataset "$DATA" --output_dir "$W/probe_latent" --vae "$W/probe_vae" --max_train_steps $PROBE --train_batch_size $LATENT_BATCH > /dev/null 2>&1
[ -f "$W/probe_small/train_summary.json" ] || train --dataset bloodmnist --model_preset small --output_dir "$W/probe_small" --max_train_steps $PROBE --train_batch_size $SMALL_BATCH > /dev/null 2>&1
# All three arms run at once: a probe alone runs ~3x faster than it will beside the others.
PIXEL_STEPS=$(steps_for 2 "$(rate "$W/probe_pixel/train_summary.json")")
VAE_STEPS=$(steps_for 1 "$(vae_rate "$W/probe_vae/metrics.jsonl")")
LATENT_STEPS=$(steps_for 1 "$(rate "$W/probe_latent/train_summary.json")")
SMALL_STEPS=$(steps_for 2 "$(rate "$W/probe_small/train_summary.json")")
log "steps: pixel $PIXEL_STEPS, vae $VAE_STEPS, latent $LATENT_STEPS, small-28 $SMALL_STEPS"

WARM=$(( PIXEL_STEPS / 10 ))
[ -f "$W/pixel/model_index.json" ] || train --dataset "$DATA" --output_dir "$W/pixel" --max_train_steps $PIXEL_STEPS --train_batch_size $PIXEL_BATCH \
  --lr_warmup_steps $WARM --learning_rate 1e-3 > "$OUT/pixel.log" 2>&1 &
pixel=$!
[ -f "$W/latent/model_index.json" ] || { vae --dataset "$DATA" --output_dir "$W/vae" --max_train_steps $VAE_STEPS --train_batch_size $VAE_BATCH --num_val 512 \
  && train --dataset "$DATA" --output_dir "$W/latent" --vae "$W/vae" --max_train_steps $LATENT_STEPS \
       --train_batch_size $LATENT_BATCH --lr_warmup_steps $(( LATENT_STEPS / 10 )) --learning_rate 1e-3; } > "$OUT/latent.log" 2>&1 &
latent=$!
[ -f "$W/small28/model_index.json" ] || train --dataset bloodmnist --model_preset small --output_dir "$W/small28" --max_train_steps $SMALL_STEPS \
  --train_batch_size $SMALL_BATCH --lr_warmup_steps $(( SMALL_STEPS / 10 )) > "$OUT/small28.log" 2>&1 &
small=$!
wait $pixel $latent $small
log "training done"

# Evaluation: test FID beside the floor; the VAE's reconstructions of the test split as "generated" images.
for arm in pixel latent small28; do
  $PY -m medgen_diffusers.cli evaluate "$W/$arm" --split test --num-samples $NUM_EVAL --protocols standard \
    "${REAL[@]}" --out "$OUT/eval_$arm.json" > "$OUT/eval_$arm.log" 2>&1 &
done
[ -f "$W/psnr_ssim.json" ] || $PY - "$W" "$DATA" <<'PY' > "$OUT/recon.log" 2>&1
import json, os, sys, numpy as np
from pathlib import Path
from medgen_diffusers.data import load_images
from medgen_diffusers.vae import load_vae, reconstruction_quality
w, data = Path(sys.argv[1]), sys.argv[2]
test = load_images(data, "test")
vae = load_vae(w / "vae").eval().to("cuda" if __import__("torch").cuda.is_available() else "cpu")
n = int(os.environ.get("RECON_N", len(test)))  # all test images (a smoke run: a few)
q = reconstruction_quality(vae, test.images[:n])
np.savez(w / "recon.npz", train_images=q.pop("reconstructions").permute(0, 2, 3, 1).numpy(),
         train_labels=test.labels.numpy()[:n, None])
(w / "psnr_ssim.json").write_text(json.dumps(q))
PY
$PY -m medgen_diffusers.cli evaluate "$W/recon.npz" --dataset "$DATA" --split test --protocols standard \
  "${REAL[@]}" --out "$OUT/eval_vae_recon.json" > "$OUT/eval_vae.log" 2>&1
wait
log "evaluation done"
$PY - "$OUT" "$W" "$MINUTES" <<'PY'
import json, sys
from pathlib import Path
out, w, minutes = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
read = lambda p: json.loads(p.read_text()) if p.is_file() else None  # noqa: E731
result = {"machine": (out / "machine.txt").read_text().strip(), "minutes_per_unit": minutes,
          "data": "BloodMNIST real pixels bicubic-upsampled (band-limited; compares arms on the same data only)"}
for arm in ("pixel", "latent", "small28"):
    result[arm] = {"train_summary": read(w / arm / "train_summary.json"), "evaluation": read(out / f"eval_{arm}.json")}
result["vae"] = {"summary": read(w / "vae" / "vae_summary.json"), "test_psnr_ssim": read(w / "psnr_ssim.json"),
                 "rfid": read(out / "eval_vae_recon.json")}
from medgen_diffusers.provenance import redact_paths
(out / "results.json").write_text(json.dumps(redact_paths(result), indent=2) + "\n")
print("wrote", out / "results.json")
PY
log "done"

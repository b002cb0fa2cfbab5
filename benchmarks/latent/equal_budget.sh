#!/usr/bin/env bash
# Issue 39's "test FID at equal CPU budget, latent vs pixel, at 128 px", on this machine's CPU: the two arms run one
# after the other, each on the whole (idle) machine for BUDGET minutes of wall time, everything counted:
#   pixel  = the `tiny` UNet on 128-px images for BUDGET minutes;
#   latent = `medgen train-vae` (4x down, 4 latent channels, base 32) for VAE_SHARE of BUDGET, then `train --vae`:
#            the encoding of the train images (once, cached) and the latent `tiny` UNet for what is left.
# Steps come from short probes (steps/s x minutes; the probes' warm-up makes them conservative). Both arms see the
# same first MAX_TRAIN train images (encoding all 11,959 at 128 px would take most of a CPU budget). Each arm's test
# FID: NUM_EVAL generated images (20 steps, bf16 network passes -- the same for both arms) vs the whole test split,
# beside the real-vs-real floor. Data: BloodMNIST's real pixels bicubic-upsampled (band-limited: compares the arms
# on the same data only). The GPU version, at 4x the scale: benchmarks/gpu/latent_vs_pixel.sh.
#   BUDGET=15 bash benchmarks/latent/equal_budget.sh      # ~75 min wall on a 2-core CPU (2 x 15 min + evaluation)
# Results: $OUT/equal_budget[_pixel_N].json (copied to
# benchmarks/results/latent/equal_budget_${RES}px[_pixel_N].json). Resumable: a step whose output exists is skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
RES=${RES:-128}; BUDGET=${BUDGET:-15}; VAE_SHARE=${VAE_SHARE:-0.5}; MAX_TRAIN=${MAX_TRAIN:-4000}
NUM_EVAL=${NUM_EVAL:-500}; BATCH=${BATCH:-8}; PROBE=${PROBE:-10}; OUT=${OUT:-../bg-runs/equal_budget_${RES}px}
EVAL_EXTRA=${EVAL_EXTRA:-}
# PIXEL_STEPS=N: the pixel arm trains N steps (no probe) -- to match the latent arm's wall once both are measured.
PIXEL_STEPS=${PIXEL_STEPS:-}; PIXEL=pixel${PIXEL_STEPS:+_$PIXEL_STEPS}  # a smoke run: RES=32 BUDGET=0.5 MAX_TRAIN=200 NUM_EVAL=16 EVAL_EXTRA="--num-real 32"
PY=${PYTHON:-.venv/bin/python}
export MEDMNIST_ROOT=${MEDMNIST_ROOT:-$(realpath ../shared/data)} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT"; W=$OUT/work; mkdir -p "$W"
DATA=$W/bloodmnist_${RES}px.npz
[ -f "$DATA" ] || $PY benchmarks/latent/make_upsampled.py "$RES" "$DATA"
medgen() { $PY -m medgen_diffusers.cli "$@"; }
train() { medgen train --dataset "$DATA" --max_train_samples "$MAX_TRAIN" --train_batch_size "$BATCH" --logger none \
            --num_sample_images 0 --checkpointing_steps 100000 "$@"; }
vae() { medgen train-vae --dataset "$DATA" --max_train_samples "$MAX_TRAIN" --train_batch_size 16 --base_channels 32 \
          --checkpointing_steps 100000 --num_val 64 "$@"; }
json() { $PY -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
seconds() { local t=$(date +%s.%N); "$@" >> "$OUT/run.log" 2>&1; $PY -c "print(round($(date +%s.%N) - $t, 1))"; }
steps() { $PY -c "import sys; print(max(int(float(sys.argv[1]) * float(sys.argv[2])), 10))" "$1" "$2"; }  # rate, s

# Pixel arm: probe, then BUDGET minutes minus the probe.
if [ ! -f "$W/$PIXEL/model_index.json" ]; then
  if [ -n "$PIXEL_STEPS" ]; then probe=0; n=$PIXEL_STEPS; else
    probe=$(seconds train --output_dir "$W/probe_pixel" --max_train_steps "$PROBE")
    rate=$(json "$W/probe_pixel/train_summary.json" "d['steps_per_s']")
    n=$(steps "$rate" "$($PY -c "print($BUDGET * 60 - $probe)")")
  fi
  wall=$(seconds train --output_dir "$W/$PIXEL" --max_train_steps "$n" --lr_warmup_steps $(( n / 10 )) --learning_rate 1e-3)
  echo "{\"probe_s\": $probe, \"train_s\": $wall, \"steps\": $n}" > "$W/${PIXEL}_budget.json"
fi
# Latent arm: the VAE for VAE_SHARE of the budget, a probe (it encodes the train images into the cache the run
# reuses), then the latent UNet for what is left.
if [ ! -f "$W/latent/model_index.json" ]; then
  vprobe=$(seconds vae --output_dir "$W/probe_vae" --max_train_steps "$PROBE")
  vrate=$($PY -c "import json; print([json.loads(l) for l in open('$W/probe_vae/metrics.jsonl')][-1]['steps_per_s'])")
  vn=$(steps "$vrate" "$($PY -c "print($BUDGET * 60 * $VAE_SHARE - $vprobe)")")
  vwall=$(seconds vae --output_dir "$W/vae" --max_train_steps "$vn")
  lprobe=$(seconds train --output_dir "$W/probe_latent" --vae "$W/vae" --max_train_steps "$PROBE")
  lrate=$(json "$W/probe_latent/train_summary.json" "d['steps_per_s']")
  ln=$(steps "$lrate" "$($PY -c "print($BUDGET * 60 - $vprobe - $vwall - $lprobe)")")
  lwall=$(seconds train --output_dir "$W/latent" --vae "$W/vae" --max_train_steps "$ln" --lr_warmup_steps $(( ln / 10 )) \
            --learning_rate 1e-3)
  echo "{\"vae_probe_s\": $vprobe, \"vae_train_s\": $vwall, \"vae_steps\": $vn, \"latent_probe_and_encoding_s\": $lprobe,
        \"train_s\": $lwall, \"steps\": $ln}" > "$W/latent_budget.json"
fi
for arm in $PIXEL latent; do
  [ -f "$W/eval_$arm.json" ] || medgen evaluate "$W/$arm" --split test --num-samples "$NUM_EVAL" --protocols standard \
    --precision bf16 $EVAL_EXTRA --out "$W/eval_$arm.json" >> "$OUT/run.log" 2>&1
done
$PY - "$OUT" "$RES" "$BUDGET" "$VAE_SHARE" "$MAX_TRAIN" "$NUM_EVAL" "$PIXEL" <<'PY'
import json, platform, sys
from pathlib import Path
out, res, budget, share, max_train, num_eval, pixel = Path(sys.argv[1]), *sys.argv[2:]
w = out / "work"
read = lambda p: json.loads(p.read_text())  # noqa: E731
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
result = {"resolution": int(res), "budget_minutes_per_arm": float(budget), "vae_share": float(share),
          "max_train_samples": int(max_train), "num_generated": int(num_eval),
          "data": f"BloodMNIST-28 real pixels, bicubic-upsampled to {res} px (compares arms on the same data only)",
          "machine": {"cpu": cpu, "cores": __import__("os").cpu_count(), "platform": platform.platform()},
          "command": f"RES={res} BUDGET={budget} VAE_SHARE={share} MAX_TRAIN={max_train} NUM_EVAL={num_eval} "
                     + (f"PIXEL_STEPS={pixel.split('_')[1]} " if "_" in pixel else "") +
                     "bash benchmarks/latent/equal_budget.sh"}
for arm, folder in (("pixel", pixel), ("latent", "latent")):
    ev = read(w / f"eval_{folder}.json")
    result[arm] = {"budget": read(w / f"{folder}_budget.json"), "train_summary": read(w / folder / "train_summary.json"),
                   "test_fid": ev["standard"]["fid"], "floor_fid": ev["floor"]["standard"]["fid"],
                   "fid_over_floor": ev["standard"]["fid"] / ev["floor"]["standard"]["fid"], "evaluation": ev}
result["vae"] = read(w / "vae" / "vae_summary.json")
result["latent_over_pixel_fid"] = result["latent"]["test_fid"] / result["pixel"]["test_fid"]
from medgen_diffusers.provenance import redact_paths
(out / f"equal_budget{'' if pixel == 'pixel' else '_' + pixel}.json").write_text(json.dumps(redact_paths(result), indent=2) + "\n")
print(json.dumps({k: result[k] for k in ("latent_over_pixel_fid",)}),
      {a: (round(result[a]["test_fid"], 2), round(result[a]["fid_over_floor"], 2)) for a in ("pixel", "latent")})
PY

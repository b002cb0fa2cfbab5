#!/usr/bin/env bash
# The shipped 4-step model's utility (issue 41) with the default model's protocol: ResNet-18, 10 epochs of the
# 11,959 training images (940 steps per arm), TRTR and TSTR, scored on the real test split, one classifier seed per
# process (each ~45 CPU-minutes per arm on one thread of a 2-core Xeon), merged when all seeds are there.
#   SEEDS="0 1 2" OUT=../bg-runs/utility-4step benchmarks/utility_fast_model.sh
# Per-seed files land in $OUT; the merge in benchmarks/results/utility/fast_model_test.json. Rerunnable: a seed whose
# file exists is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-../bg-runs/utility-4step}
SEEDS=${SEEDS:-0 1 2}
export MEDMNIST_ROOT=${MEDMNIST_ROOT:-$(realpath ../shared/data)} HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
for seed in $SEEDS; do
  [ -f "$OUT/seed$seed.json" ] || .venv/bin/medgen utility medgen_diffusers/pretrained/bloodmnist-4step \
      --arms trtr,tstr --fractions "" --seeds "$seed" --device cpu --out "$OUT/seed$seed.json"
done
files=()
for seed in $SEEDS; do files+=("$OUT/seed$seed.json"); done
if [ "${#files[@]}" -ge 2 ]; then
  .venv/bin/medgen utility --merge "${files[@]}" --out benchmarks/results/utility/fast_model_test.json --overwrite
else
  cp "${files[0]}" benchmarks/results/utility/fast_model_seed${SEEDS}_test.json
fi

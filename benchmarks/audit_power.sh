#!/usr/bin/env bash
# The privacy audit's known positive, rerunnable: a tiny UNet trained to copy 8 real BloodMNIST images (an own-data
# folder, one image per class: the recipe of tests/conftest.py::memorised_run) is audited with the defaults the
# shipped model is audited with (no --dataset: the run says what it was trained on). ~2 CPU-minutes.
# Usage: benchmarks/audit_power.sh [WORK_DIR]  ->  benchmarks/results/audit/memorised.json
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
data=${MEDMNIST_ROOT:-../shared/data}
.venv/bin/python - "$work/cells" "$data" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from conftest import write_own_folder  # the same folder the test builds
write_own_folder(Path(sys.argv[1]), sys.argv[2])
PY
[ -f "$work/run/model_index.json" ] || .venv/bin/python train_unconditional.py --output_dir "$work/run" \
    --dataset "$work/cells" --model_preset tiny --train_batch_size 8 --max_train_steps 800 --learning_rate 3e-3 \
    --lr_scheduler constant --lr_warmup_steps 20 --prediction_type sample --no-use_ema --checkpointing_steps 400 \
    --checkpoints_total_limit 1 --num_sample_images 0 --logger none --resume_from_checkpoint latest
mkdir -p benchmarks/results/audit
HF_HUB_OFFLINE=1 .venv/bin/medgen audit "$work/run" --spaces pixel --num-samples 64 \
    --out benchmarks/results/audit/memorised.json --overwrite

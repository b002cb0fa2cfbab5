#!/usr/bin/env bash
# The autoencoder's reconstruction quality (issue 39): train `medgen train-vae` on BloodMNIST's real pixels upsampled
# to $RES px (band-limited content flatters a VAE: this measures the cost and compares arms on the same data only),
# then reconstruct every test image and score the reconstructions like generated images: rFID / KID beside the
# real-vs-real floor (`medgen evaluate`), PSNR and SSIM.
#   RES=64 STEPS=600 OUT=../bg-runs/vae64 bash benchmarks/latent/vae_quality.sh
#   ... SPLIT=val: score the val split (to choose settings; test to report)
#   ... ARM=_disc EXTRA="--disc_weight 0.01 --disc_start 300": another recipe (extra train-vae arguments)
# Results: $OUT/quality[_val].json (copied to benchmarks/results/latent/vae_quality_${RES}px${ARM}[_val].json).
# Resumable: steps whose output exists are skipped (train-vae resumes from its latest checkpoint).
set -euo pipefail
cd "$(dirname "$0")/../.."
SPLIT=${SPLIT:-test}; ARM=${ARM:-}; EXTRA=${EXTRA:-}
RES=${RES:-64}; STEPS=${STEPS:-600}; OUT=${OUT:-../bg-runs/vae$RES$ARM}; BATCH=${BATCH:-16}; BASE=${BASE:-32}
SUFFIX=$([ "$SPLIT" = test ] && echo "" || echo "_$SPLIT")  # the test split's files keep their first names
export MEDMNIST_ROOT=${MEDMNIST_ROOT:-$(realpath ../shared/data)} HF_HUB_OFFLINE=1
mkdir -p "$OUT"
DATA="$OUT/bloodmnist_${RES}px.npz"
[ -f "$DATA" ] || .venv/bin/python - "$DATA" "$RES" <<'PY'
import sys, numpy as np
from PIL import Image
from medgen_diffusers.data import medmnist_path
out, size = sys.argv[1], int(sys.argv[2])
with np.load(medmnist_path("bloodmnist", 28)) as npz:
    arrays = {k: npz[k] for k in npz.files}
for split in ("train", "val", "test"):  # bicubic upsampling of the real 28-px pixels (stated in the results)
    arrays[f"{split}_images"] = np.stack([np.asarray(Image.fromarray(x).resize((size, size), Image.BICUBIC))
                                          for x in arrays[f"{split}_images"]])
np.savez(out, **arrays)
PY
[ -f "$OUT/vae/vae_summary.json" ] || .venv/bin/medgen train-vae --dataset "$DATA" --output_dir "$OUT/vae" \
    --max_train_steps "$STEPS" --train_batch_size "$BATCH" --base_channels "$BASE" --checkpointing_steps 100 \
    --num_val 512 --resume_from_checkpoint latest $EXTRA
[ -f "$OUT/reconstructions$SUFFIX.npz" ] || .venv/bin/python - "$OUT" "$DATA" "$SPLIT" "$SUFFIX" <<'PY'
import json, sys, numpy as np
from pathlib import Path
from medgen_diffusers.data import load_images
from medgen_diffusers.vae import load_vae, reconstruction_quality
out, data, split, suffix = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
test = load_images(data, split)
quality = reconstruction_quality(load_vae(out / "vae").eval(), test.images)
recon = quality.pop("reconstructions").permute(0, 2, 3, 1).numpy()
np.savez(out / f"reconstructions{suffix}.npz", train_images=recon, train_labels=test.labels.numpy()[:, None])
(out / f"psnr_ssim_{split}.json").write_text(json.dumps(quality, indent=2) + "\n")
PY
[ -f "$OUT/rfid$SUFFIX.json" ] || .venv/bin/medgen evaluate "$OUT/reconstructions$SUFFIX.npz" --dataset "$DATA" \
    --split "$SPLIT" --protocols standard --out "$OUT/rfid$SUFFIX.json"
.venv/bin/python - "$OUT" "$RES" "$STEPS" "$SPLIT" "$SUFFIX" "$ARM" "$EXTRA" <<'PY'
import json, platform, sys
from pathlib import Path
out, res, steps, split, suffix, arm, extra = Path(sys.argv[1]), *sys.argv[2:]
rfid = json.loads((out / f"rfid{suffix}.json").read_text())
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
result = {"resolution": int(res), "data": f"BloodMNIST-28 real pixels, bicubic-upsampled to {res} px",
          "vae": json.loads((out / "vae" / "run_config.json").read_text()),
          "train_summary": json.loads((out / "vae" / "vae_summary.json").read_text()),
          f"{split}_psnr_ssim": json.loads((out / f"psnr_ssim_{split}.json").read_text()),
          f"rfid_vs_{split}": rfid, "rfid_over_floor": rfid["standard"]["fid"] / rfid["floor"]["standard"]["fid"],
          "machine": {"cpu": cpu, "platform": platform.platform()},
          "command": f"RES={res} STEPS={steps} SPLIT={split} ARM={arm} EXTRA='{extra}' bash benchmarks/latent/vae_quality.sh"}
from medgen_diffusers.provenance import redact_paths
(out / f"quality{suffix}.json").write_text(json.dumps(redact_paths(result), indent=2) + "\n")
Path(f"benchmarks/results/latent/vae_quality_{res}px{arm}{suffix}.json").write_text(
    json.dumps(redact_paths(result), indent=2) + "\n")
print(json.dumps(result[f"{split}_psnr_ssim"]), "rFID / floor", round(result["rfid_over_floor"], 2))
PY

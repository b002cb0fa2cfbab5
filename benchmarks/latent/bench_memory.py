"""The training-memory estimate (medgen_diffusers/memory.py) against real steps: for each setting, a fresh process
builds the UNet, AdamW and the EMA copy and runs 3 training steps (the DDPM loss, autocast as the setting says);
its peak anonymous memory above what it held before the UNet was built (VmHWM - RssFile - RssShmem at the end,
minus RssAnon at the start) is compared with the estimate; ``implied_factor`` is the activation factor that would
make them equal (measured activations / summed layer outputs), which set memory.ACTIVATION_FACTOR and
CHECKPOINTED_FACTOR. Results: results/latent/memory.json (machine and the ratio per setting).

    python benchmarks/latent/bench_memory.py --out benchmarks/results/latent/memory.json
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SETTINGS = [  # preset, side, channels, batch, mixed precision, gradient checkpointing
    ("tiny", 128, 1, 8, "no", False), ("tiny", 128, 1, 8, "bf16", False), ("tiny", 256, 1, 4, "no", False),
    ("tiny", 256, 1, 4, "no", True), ("small", 128, 3, 4, "no", False), ("small", 256, 1, 2, "no", False),
    ("small", 256, 1, 2, "no", True), ("small", 256, 1, 2, "bf16", False), ("tiny", 32, 4, 32, "no", False),
]

CHILD = r"""
import json, sys, torch
from pathlib import Path
def status(key):
    return next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key + ":"))
preset, side, channels, batch, precision, checkpointing = json.loads(sys.argv[1])
torch.manual_seed(0)
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel
from medgen_diffusers.models import build_unet
from medgen_diffusers.memory import training_memory
x = torch.randn(batch, channels, side, side)
before = status("RssAnon")
unet = build_unet(preset, sample_size=side, channels=channels, num_classes=8, latent=channels == 4)
if checkpointing:
    unet.enable_gradient_checkpointing()
ema = EMAModel(unet.parameters())
optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
scheduler = DDPMScheduler()
for _ in range(3):
    noise = torch.randn_like(x)
    t = torch.randint(0, 1000, (batch,))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = unet(scheduler.add_noise(x, noise, t), t, class_labels=torch.zeros(batch, dtype=torch.long)).sample
    torch.nn.functional.mse_loss(out.float(), noise).backward()
    optimizer.step(); optimizer.zero_grad(set_to_none=True); ema.step(unet.parameters())
peak = status("VmHWM") - status("RssFile") - status("RssShmem")
estimate = training_memory(unet, batch, checkpointing, precision)
import medgen_diffusers.memory as memory
factor = memory.ACTIVATION_FACTOR[precision] * (memory.CHECKPOINTED_FACTOR if checkpointing else 1)
measured = (peak - before) / 2**20
implied = factor * (measured - estimate["parameters"]) / (batch * estimate["per_image"])
print(json.dumps({"measured_gib": measured, "implied_factor": round(implied, 3),
                  **{f"estimate_{k}_gib": v for k, v in estimate.items()}}))
"""


def main():
    from medgen_diffusers.memory import ACTIVATION_FACTOR, CHECKPOINTED_FACTOR

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks" / "scale"))
    from bench_scale import machine

    rows = []
    for setting in SETTINGS:
        result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(setting)], capture_output=True, text=True,
                                cwd=REPO, check=True)
        row = dict(zip(("preset", "side", "channels", "batch", "mixed_precision", "gradient_checkpointing"), setting))
        row.update(json.loads(result.stdout.strip().splitlines()[-1]))
        row["ratio_measured_to_estimate"] = round(row["measured_gib"] / row["estimate_total_gib"], 3)
        print(json.dumps(row), flush=True)
        rows.append(row)
    ratios = sorted(r["ratio_measured_to_estimate"] for r in rows)
    Path(args.out).write_text(json.dumps({
        "machine": machine(), "activation_factor": ACTIVATION_FACTOR, "checkpointed_factor": CHECKPOINTED_FACTOR,
        "rows": rows,
        "ratio_range": [ratios[0], ratios[-1]], "ratio_median": ratios[len(ratios) // 2],
        "what": "peak anonymous memory of 3 training steps (UNet, AdamW, EMA) above the process's before the UNet "
                "was built, vs memory.training_memory's estimate"}, indent=2) + "\n")


if __name__ == "__main__":
    main()

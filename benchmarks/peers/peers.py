"""The peers' side of the side-by-side benchmark: train and sample the tools a user would pick instead of ours.

Runs in the peers' own environment (`setup_env.sh`; never our core dependencies). `run.sh` drives it; by hand:

    PY=../bg-runs/peers-env/bin/python
    $PY benchmarks/peers/peers.py params                         # each arm's parameter count at the chosen widths
    $PY benchmarks/peers/peers.py probe monai                    # CPU seconds per training step (one thread)
    $PY benchmarks/peers/peers.py train monai --steps 9000 --run ../bg-runs/peers/monai   # resumable
    $PY benchmarks/peers/peers.py sample monai --run ../bg-runs/peers/monai --steps 20 --num 1712 --out x.npz

Arms (each at its documented defaults; what 28 x 28 RGB needs, and the equal parameter count, is changed and listed
in ADAPTED; everything else is the tool's own):
- diffusers_example: diffusers' examples/unconditional_image_generation/train_unconditional.py, unmodified (copied
  byte for byte, sha256 checked), with its README's command (--use_ema --random_flip, lr 1e-4, 500 warm-up steps,
  batch 16, fp32); sampled with the `DDPMPipeline` it saves.
- monai: MONAI core's DiffusionModelUNet + DDPMScheduler + DiffusionInferer with the recipe of MONAI's 2D DDPM
  tutorial (epsilon target, Adam lr 2.5e-5, batch 128, images in [0, 1],
  the tutorial's RandAffine augmentation, no EMA: the tutorial has none).
- lucidrains: denoising-diffusion-pytorch's Unet + GaussianDiffusion + Trainer (pred_v, sigmoid schedule, EMA 0.995
  every 10 steps, lr 1e-4, batch 16, grad clip 1).

Images: the BloodMNIST-28 train split read from $MEDMNIST_ROOT/bloodmnist.npz (uint8, as MedMNIST ships it), written
once as PNGs where a tool reads a folder. Samples are written as uint8 N x 28 x 28 x 3 npz (`images`), which our
scorer (`score.py`, in our environment) reads.
"""

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE / "diffusers_example" / "train_unconditional.py"
EXAMPLE_SHA256 = "0314b03f4fa7eed825389e7e3e97c87188c24b49d0974dfc7710d6a16325acfe"
ARMS = ("diffusers_example", "monai", "lucidrains")

# Our `tiny` preset (1.06 M parameters): the diffusers example takes a UNet2DModel config, so it gets exactly ours.
TINY_UNET = dict(sample_size=28, in_channels=3, out_channels=3, block_out_channels=[32, 64, 64], layers_per_block=1,
                 down_block_types=["DownBlock2D"] * 3, up_block_types=["UpBlock2D"] * 3, norm_num_groups=8)
# MONAI's tutorial UNet is channels (128, 256, 256), attention at the two lower levels, one res block, head width 256
# (~16 M parameters at 3 channels); the same shape at a quarter of the width is 1.16 M (ours: 1.06 M; narrower
# first levels would need a GroupNorm other than the tutorial's 32 groups).
MONAI_UNET = dict(spatial_dims=2, in_channels=3, out_channels=3, channels=(32, 64, 64), attention_levels=(False, True, True),
                  num_res_blocks=1, num_head_channels=64)
MONAI_RECIPE = dict(lr=2.5e-5, batch_size=128)  # the tutorial's Adam lr and train-loader batch size
# lucidrains' README UNet is dim 64, dim_mults (1, 2, 4, 8): 28 px cannot halve three times (28 -> 14 -> 7 -> 3.5),
# so three levels; dim 16 with (2, 3, 4) -- widths 32 / 48 / 64, like ours -- gives 1.01 M parameters ((1, 2, 4) is
# 0.72 M, and widths must stay multiples of its GroupNorm's 8).
LUCIDRAINS_UNET = dict(dim=16, dim_mults=(2, 3, 4))
ADAPTED = {
    "diffusers_example": ["--resolution 28 (its default 64)",
                          "--model_config_name_or_path: our tiny UNet2DModel config (its default UNet has 6 levels, "
                          "113 M parameters, and cannot halve 28 px five times)",
                          "--save_images_epochs / --save_model_epochs past the run's end: its preview (16 images x "
                          "1,000 DDPM steps) then runs only after epoch 0 and the last, not every 10 epochs",
                          "--num_epochs set so the run fills the CPU budget (the cosine lr follows the run's length)",
                          "--logger tensorboard kept (its default): tensorboard is in the peers' environment"],
    "monai": ["in/out channels 3 (the tutorial's MedNIST images are grey)",
              "UNet widths (32, 64, 64), head width 64: the tutorial's shape at about our parameter count (1.16 M)",
              "RandAffine at 28 px (the tutorial's ranges: rotate +-5 deg, translate +-1 px, scale +-5 %, p 0.5)",
              "training steps set by the CPU budget instead of 75 epochs; no AMP (the tutorial's GradScaler is CUDA)"],
    "lucidrains": ["dim 16, dim_mults (2, 3, 4): three levels for 28 px, and our parameter count (1.01 M)",
                   "Trainer: calculate_fid=False (it would download Inception and spend the budget), num_samples=1 "
                   "(its preview every 1,000 steps is 25 images x 1,000 steps), data-loader workers 0 instead of "
                   "cpu_count() (the same one thread as every arm)",
                   "train_num_steps set by the CPU budget"],
}


# ----------------------------------------------------------------------------------------------------------------
# Data

def train_images() -> np.ndarray:
    root = os.environ.get("MEDMNIST_ROOT")
    path = Path(root or ".") / "bloodmnist.npz"
    if not root or not path.is_file():
        raise SystemExit("Set MEDMNIST_ROOT to the folder that holds bloodmnist.npz (MedMNIST's BloodMNIST-28).")
    with np.load(path) as data:
        return data["train_images"]


def png_folder(run: Path) -> Path:
    """The train split as PNGs (what the example's `imagefolder` and lucidrains' Dataset read), written once."""
    from PIL import Image
    folder = run.parent / "_train_png"
    done = folder / ".complete"
    if not done.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(train_images()):
            Image.fromarray(image).save(folder / f"{i:05d}.png")
        done.write_text("bloodmnist train split, 28 px\n")
    return folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# diffusers example

def example_command(run: Path, steps: int):
    if sha256(EXAMPLE) != EXAMPLE_SHA256:
        raise SystemExit(f"{EXAMPLE} is not the verbatim diffusers example (sha256 changed); restore it.")
    config = run / "_tiny_unet.json"
    run.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(TINY_UNET))
    per_epoch = math.ceil(len(train_images()) / 16)
    epochs = max(1, round(steps / per_epoch))
    return [sys.executable, str(EXAMPLE), "--train_data_dir", str(png_folder(run)), "--resolution", "28",
            "--random_flip", "--output_dir", str(run), "--train_batch_size", "16", "--num_epochs", str(epochs),
            "--use_ema", "--learning_rate", "1e-4", "--lr_warmup_steps", "500", "--mixed_precision", "no",
            "--model_config_name_or_path", str(config), "--save_images_epochs", "100000",
            "--save_model_epochs", "100000", "--checkpointing_steps", "1000", "--checkpoints_total_limit", "2",
            "--resume_from_checkpoint", "latest", "--dataloader_num_workers", "0"], epochs * per_epoch


def sample_example(run: Path, steps, num, seed, scheduler):
    from diffusers import DDIMScheduler, DDPMPipeline
    pipe = DDPMPipeline.from_pretrained(run)
    if scheduler == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    out = []
    for start in range(0, num, 128):
        n = min(128, num - start)
        generator = torch.Generator().manual_seed(seed + start)
        images = pipe(batch_size=n, num_inference_steps=steps, generator=generator, output_type="np").images
        out.append(np.round(images * 255).clip(0, 255).astype(np.uint8))
    return np.concatenate(out)


# ----------------------------------------------------------------------------------------------------------------
# MONAI

def monai_parts():
    from monai.inferers import DiffusionInferer
    from monai.networks.nets import DiffusionModelUNet
    from monai.networks.schedulers import DDPMScheduler
    model = DiffusionModelUNet(**MONAI_UNET)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    return model, scheduler, DiffusionInferer(scheduler)


class MonaiData(torch.utils.data.Dataset):
    """The tutorial's train transform: intensities to [0, 1], then RandAffine (p 0.5)."""

    def __init__(self, images):
        from monai.transforms import RandAffine
        self.images = images
        self.affine = RandAffine(prob=0.5, rotate_range=(np.pi / 36,), translate_range=(1, 1), scale_range=(0.05, 0.05),
                                 spatial_size=(28, 28), padding_mode="zeros")

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image = torch.from_numpy(self.images[i]).permute(2, 0, 1).float() / 255.0
        return torch.as_tensor(self.affine(image)).float()


def train_monai(run: Path, steps: int, probe: int = 0):
    torch.manual_seed(0)
    model, scheduler, inferer = monai_parts()
    optimizer = torch.optim.Adam(model.parameters(), lr=MONAI_RECIPE["lr"])
    step = load_state(run, model, optimizer)
    loader = torch.utils.data.DataLoader(MonaiData(train_images()), batch_size=MONAI_RECIPE["batch_size"], shuffle=True,
                                         drop_last=True, num_workers=0)
    started = time.process_time()
    total = probe or steps
    while step < total:
        for images in loader:
            noise = torch.randn_like(images)
            timesteps = torch.randint(0, scheduler.num_train_timesteps, (len(images),)).long()
            prediction = inferer(inputs=images, diffusion_model=model, noise=noise, timesteps=timesteps)
            loss = torch.nn.functional.mse_loss(prediction.float(), noise.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if probe and step == 5:
                started = time.process_time()  # after warm-up
            if not probe and (step % 500 == 0 or step == total):
                save_state(run, model, optimizer, step)
                print(f"monai step {step}/{total} loss {loss.item():.4f}", flush=True)
            if step >= total:
                break
    if probe:
        return (time.process_time() - started) / (probe - 5)
    save_file(model.state_dict(), run / "model.safetensors")


def save_state(run: Path, model, optimizer, step: int):
    """Model, Adam moments and RNG as safetensors plus a JSON of the rest (nothing pickled), written atomically."""
    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for index, state in opt["state"].items():
        for name, value in state.items():
            tensors[f"opt.{index}.{name}"] = torch.as_tensor(value).contiguous()
    tensors["rng"] = torch.get_rng_state()
    save_file(tensors, run / "state.tmp")
    (run / "state.tmp").replace(run / "state.safetensors")
    (run / "state.json").write_text(json.dumps({"step": step, "param_groups": opt["param_groups"]}))


def load_state(run: Path, model, optimizer) -> int:
    if not (run / "state.safetensors").is_file():
        return 0
    tensors, meta = load_file(run / "state.safetensors"), json.loads((run / "state.json").read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng"])
    return meta["step"]


def sample_monai(run: Path, steps, num, seed, scheduler_name):
    from monai.networks.schedulers import DDIMScheduler
    model, scheduler, inferer = monai_parts()
    model.load_state_dict(load_file(run / "model.safetensors"))
    model.eval()
    if scheduler_name == "ddim":
        from monai.inferers import DiffusionInferer
        scheduler = DDIMScheduler(num_train_timesteps=1000)
        inferer = DiffusionInferer(scheduler)
    scheduler.set_timesteps(num_inference_steps=steps)
    out = []
    for start in range(0, num, 128):
        n = min(128, num - start)
        generator = torch.Generator().manual_seed(seed + start)
        noise = torch.randn((n, 3, 28, 28), generator=generator)
        torch.manual_seed(seed + start)  # the DDPM scheduler's per-step noise uses the global generator
        with torch.no_grad():
            images = inferer.sample(input_noise=noise, diffusion_model=model, scheduler=scheduler, verbose=False)
        out.append((images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


# ----------------------------------------------------------------------------------------------------------------
# denoising-diffusion-pytorch (lucidrains)

def lucidrains_trainer(run: Path, steps: int):
    import denoising_diffusion_pytorch.denoising_diffusion_pytorch as ddp
    ddp.cpu_count = lambda: 0  # its DataLoader uses cpu_count() workers; every arm gets the same one thread
    model = ddp.Unet(**LUCIDRAINS_UNET)
    diffusion = ddp.GaussianDiffusion(model, image_size=28, timesteps=1000)
    return ddp.Trainer(diffusion, str(png_folder(run)), train_num_steps=steps, calculate_fid=False, num_samples=1,
                       results_folder=str(run), amp=False)


def train_lucidrains(run: Path, steps: int, probe: int = 0):
    torch.manual_seed(0)
    run.mkdir(parents=True, exist_ok=True)
    trainer = lucidrains_trainer(run, probe or steps)
    milestones = sorted(int(p.stem.split("-")[1]) for p in run.glob("model-*.pt") if p.stem.split("-")[1].isdigit())
    if milestones and not probe:
        trainer.load(milestones[-1])
    if probe:
        trainer.train_num_steps = 5
        trainer.train()
        started = time.process_time()
        trainer.train_num_steps = probe
        trainer.train()
        return (time.process_time() - started) / (probe - 5)
    trainer.train()
    if trainer.step % trainer.save_and_sample_every:
        trainer.save(trainer.step // trainer.save_and_sample_every + 1)  # the last steps too
    save_file({k: v.contiguous() for k, v in trainer.ema.ema_model.state_dict().items()}, run / "ema_model.safetensors")


def sample_lucidrains(run: Path, steps, num, seed, scheduler_name):
    import denoising_diffusion_pytorch.denoising_diffusion_pytorch as ddp
    model = ddp.Unet(**LUCIDRAINS_UNET)
    diffusion = ddp.GaussianDiffusion(model, image_size=28, timesteps=1000,
                                      sampling_timesteps=None if steps >= 1000 else steps)
    diffusion.load_state_dict(load_file(run / "ema_model.safetensors"))
    diffusion.eval()
    out = []
    for start in range(0, num, 128):
        n = min(128, num - start)
        torch.manual_seed(seed + start)
        with torch.no_grad():
            images = diffusion.sample(batch_size=n)
        out.append((images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


# ----------------------------------------------------------------------------------------------------------------

def parameter_counts():
    import denoising_diffusion_pytorch as ddp
    from diffusers import UNet2DModel
    return {"diffusers_example": sum(p.numel() for p in UNet2DModel(**TINY_UNET).parameters()),
            "monai": sum(p.numel() for p in monai_parts()[0].parameters()),
            "lucidrains": sum(p.numel() for p in ddp.Unet(**LUCIDRAINS_UNET).parameters())}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("params", "probe", "train", "sample"))
    parser.add_argument("arm", nargs="?", choices=ARMS)
    parser.add_argument("--run", type=Path)
    parser.add_argument("--steps", type=int, help="train: optimizer steps; sample: sampler steps")
    parser.add_argument("--scheduler", default="own", choices=("own", "ddim"),
                        help="own: the tool's default sampler (DDPM; lucidrains: DDIM below 1,000 steps); ddim")
    parser.add_argument("--num", type=int, default=1712)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.action == "params":
        print(json.dumps(parameter_counts(), indent=1))
        return
    if args.action == "probe":
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / args.arm
            if args.arm == "monai":
                seconds = train_monai(run, 0, probe=40)
            elif args.arm == "lucidrains":
                seconds = train_lucidrains(Path(os.environ.get("PEERS_ROOT", tmp)) / "probe_lucidrains", 0, probe=85)
            else:
                raise SystemExit("probe the diffusers example with run.sh (it times a short run of the script)")
        print(json.dumps({"arm": args.arm, "cpu_s_per_step": round(seconds, 4)}))
        return
    if args.action == "train":
        args.run.mkdir(parents=True, exist_ok=True)
        if args.arm == "diffusers_example":
            command, steps = example_command(args.run, args.steps)
            print(f"diffusers example: {steps} steps", flush=True)
            subprocess.run(command, check=True)
        elif args.arm == "monai":
            train_monai(args.run, args.steps)
        else:
            train_lucidrains(args.run, args.steps)
        return
    sampler = {"diffusers_example": sample_example, "monai": sample_monai, "lucidrains": sample_lucidrains}[args.arm]
    started = time.perf_counter()
    images = sampler(args.run, args.steps, args.num, args.seed, args.scheduler)
    seconds = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, images=images)
    args.out.with_suffix(".json").write_text(json.dumps({
        "arm": args.arm, "sampler_steps": args.steps, "scheduler": args.scheduler, "num": len(images), "seed": args.seed,
        "seconds": round(seconds, 1), "seconds_per_image": round(seconds / len(images), 4), "threads": 1}))


if __name__ == "__main__":
    main()

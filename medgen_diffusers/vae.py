"""``medgen train-vae``: a diffusers ``AutoencoderKL`` for latent diffusion, and the latents it gives ``medgen train``.

    medgen train-vae --dataset FOLDER --resolution 128 --output_dir runs/vae
    medgen train --dataset FOLDER --resolution 128 --vae runs/vae --output_dir runs/ldm

Read top to bottom: building or loading a VAE, its loss (L1 + a small KL term, an optional patch discriminator
after a warm-up -- the first stage of Rombach et al. 2022 without the perceptual term, whose VGG weights this
package never downloads), the training loop (Accelerate, EMA and atomic checkpoints, as train.py's), the
reconstruction quality on val (PSNR, SSIM), then the latent cache that ``medgen train --vae`` trains from: the train
split encoded once (posterior means) into a memory-mapped file next to the prepared data, scaled to unit variance by
a factor measured on those latents.
"""

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .arguments import data_source, train_vae_args

VAE_FILES = ("config.json", "diffusion_pytorch_model.safetensors")  # what AutoencoderKL.save_pretrained writes


class VAEError(ValueError):
    """A --vae that is not an AutoencoderKL, or one that does not fit the data (the CLI's exit code 2)."""


def build_vae(channels: int, resolution: int, downsample: int = 4, latent_channels: int = 4, base_channels: int = 64,
              layers_per_block: int = 1):
    """A new AutoencoderKL: log2(downsample) + 1 levels of widths (b, 2b, 2b, ...), as Stable Diffusion's VAE
    (128, 256, 512, 512) in shape, smaller in width."""
    from diffusers import AutoencoderKL

    levels = int(math.log2(downsample)) + 1
    widths = tuple(base_channels * min(2 ** level, 2) for level in range(levels))
    return AutoencoderKL(in_channels=channels, out_channels=channels, latent_channels=latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
                         block_out_channels=widths, layers_per_block=layers_per_block,
                         norm_num_groups=math.gcd(32, base_channels), sample_size=resolution)


def load_vae(spec: str, cache_dir=None):
    """An AutoencoderKL from a `medgen train-vae` folder, a VAE folder, a pipeline folder (its vae/), or a Hub id
    (a pipeline repo's vae/ subfolder or a VAE repo; downloaded when online, from the cache with HF_HUB_OFFLINE=1;
    ``cache_dir``: another Hub cache than the default)."""
    from diffusers import AutoencoderKL

    path = Path(str(spec)).expanduser()
    if path.is_dir():
        for folder, subfolder in ((path, None), (path / "vae", "vae")):
            if (folder / "config.json").is_file():
                config = json.loads((folder / "config.json").read_text())
                if config.get("_class_name") != "AutoencoderKL":
                    raise VAEError(f"--vae {spec}: {folder / 'config.json'} is a {config.get('_class_name')}, not an "
                                   "AutoencoderKL. Pass a `medgen train-vae` output folder, an AutoencoderKL folder "
                                   "or a pipeline folder with a vae/ sub-folder.")
                return AutoencoderKL.from_pretrained(path, subfolder=subfolder)
        raise VAEError(f"--vae {spec}: no AutoencoderKL there (config.json, or vae/config.json of a pipeline). Train "
                       f"one with `medgen train-vae --output_dir {spec}`, or pass an AutoencoderKL folder or Hub id.")
    try:  # a pipeline repo keeps its VAE in vae/ (Stable Diffusion, ...); a VAE repo at its root
        return AutoencoderKL.from_pretrained(str(spec), subfolder="vae", cache_dir=cache_dir)
    except OSError:
        return AutoencoderKL.from_pretrained(str(spec), cache_dir=cache_dir)


class Autoencoding(torch.nn.Module):
    """Encode, sample the posterior, decode -- as one forward(), so that DistributedDataParallel (which syncs
    gradients through forward calls) wraps the whole VAE step. Returns (reconstruction, KL per image)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, clean):
        posterior = self.vae.encode(clean).latent_dist
        return self.vae.decode(posterior.sample()).sample, posterior.kl()


def vae_loss(autoencoding, clean, kl_weight, discriminator=None, disc_weight=0.0):
    """L1 reconstruction of a posterior sample + kl_weight * KL to N(0, I) (both per pixel, as taming's weights
    assume) [+ disc_weight * the generator's hinge loss]. Returns (loss, reconstruction, logs)."""
    reconstruction, kl = autoencoding(clean)
    reconstruction = reconstruction.float()
    l1 = (reconstruction - clean).abs().mean()
    kl = kl.float().mean() / clean[0].numel()
    loss = l1 + kl_weight * kl
    logs = {"l1": l1.item(), "kl": kl.item()}
    if discriminator is not None:
        adversarial = -discriminator(reconstruction).mean()
        loss = loss + disc_weight * adversarial
        logs["g_adv"] = adversarial.item()
    return loss, reconstruction, logs


class PatchDiscriminator(torch.nn.Sequential):
    """pix2pix's PatchGAN (Isola et al. 2017) with 3 levels: one real/fake score per image patch."""

    def __init__(self, channels: int, width: int = 64, levels: int = 3):
        layers, c = [torch.nn.Conv2d(channels, width, 4, 2, 1), torch.nn.LeakyReLU(0.2)], width
        for _ in range(1, levels):
            layers += [torch.nn.Conv2d(c, 2 * c, 4, 2, 1), torch.nn.GroupNorm(8, 2 * c), torch.nn.LeakyReLU(0.2)]
            c *= 2
        super().__init__(*layers, torch.nn.Conv2d(c, 1, 3, 1, 1))


def discriminator_loss(discriminator, clean, reconstruction):
    """Hinge loss: real patches above +1, reconstructed ones below -1."""
    return (F.relu(1 - discriminator(clean)).mean() + F.relu(1 + discriminator(reconstruction.detach())).mean())


@torch.no_grad()
def reconstruction_quality(vae, images: torch.Tensor, batch_size: int = 64) -> dict:
    """PSNR (dB, 8-bit) and SSIM (scikit-image's, Wang et al. 2004) of the decoded posterior means of uint8 images
    (N, C, H, W), averaged over the images; and the reconstructions themselves (uint8, for an rFID)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from .data import to_model_range

    psnr, ssim, reconstructions = [], [], []
    for start in range(0, len(images), batch_size):
        real = images[start:start + batch_size]
        x = to_model_range(real).to(vae.device, vae.dtype)
        out = vae.decode(vae.encode(x).latent_dist.mean).sample.float()
        out = ((out.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
        reconstructions.append(out)
        for a, b in zip(real.numpy(), out.numpy()):
            psnr.append(peak_signal_noise_ratio(a, b, data_range=255))
            ssim.append(structural_similarity(a, b, data_range=255, channel_axis=0))
    psnr = np.minimum(np.array(psnr), 100.0)  # a perfect copy's infinite PSNR, capped so that the mean stays finite
    return {"psnr": float(psnr.mean()), "ssim": float(np.mean(ssim)), "num_images": len(images),
            "reconstructions": torch.cat(reconstructions)}


def main(argv=None, prog=None):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from diffusers import AutoencoderKL
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from torch.utils.data import DataLoader, TensorDataset
    from tqdm.auto import tqdm

    from .checkpointing import (MetricsLog, check_resumed_config, checkpoint_step, prepare_run_folder,
                                register_ema_hooks, save_checkpoint)
    from .data import to_model_range
    from .data.files import recorded_source
    from .runtime import on_cpu

    args = train_vae_args(argv, prog)
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=on_cpu(args),
                              project_config=ProjectConfiguration(project_dir=str(output_dir)),
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed))
    checkpoint = prepare_run_folder(output_dir, args.resume_from_checkpoint, args.overwrite_output_dir,
                                    accelerator.is_main_process)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    set_seed(args.seed)

    # Data: the train split from the prepared store (or MedMNIST in memory), batch by batch.
    source = data_source(args)
    with accelerator.local_main_process_first():
        data = source.load("train", args.resolution, prepare=True)
    images = data.images16 if data.images16 is not None else data.images  # --bit_depth 16: the full range
    if checkpoint is not None:
        check_resumed_config(output_dir, "run_config.json", {"data_md5": data.md5}, ["data_md5"])
    resolution, channels = images.shape[-1], images.shape[1]
    if resolution % args.downsample:
        raise VAEError(f"{resolution}-px images do not divide into {args.downsample}x{args.downsample} latents: pass "
                       f"--resolution a multiple of {args.downsample} (e.g. {resolution // args.downsample * args.downsample or args.downsample}).")
    if len(images) < args.train_batch_size * accelerator.num_processes:
        raise VAEError(f"{len(images)} training images are fewer than one global batch: lower --train_batch_size.")
    loader = DataLoader(TensorDataset(images), batch_size=args.train_batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(args.seed))

    # Model: new, or --init_from's (fine-tuned).
    if args.init_from is None:
        vae = build_vae(channels, resolution, args.downsample, args.latent_channels, args.base_channels,
                        args.layers_per_block)
    else:
        vae = load_vae(args.init_from)
        if vae.config.in_channels != channels:
            raise VAEError(f"--init_from {args.init_from} encodes {vae.config.in_channels}-channel images; "
                           f"{args.dataset} has {channels}.")
    if args.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    ema = EMAModel(vae.parameters(), decay=args.ema_max_decay, model_cls=AutoencoderKL,
                   model_config=vae.config) if args.use_ema else None
    discriminator = PatchDiscriminator(channels) if args.disc_weight > 0 else None
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.learning_rate, betas=(0.5, 0.9))
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer=optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes)
    autoencoding, optimizer, loader, lr_scheduler = accelerator.prepare(Autoencoding(vae), optimizer, loader,
                                                                        lr_scheduler)
    if discriminator is not None:
        disc_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=args.learning_rate, betas=(0.5, 0.9))
        discriminator, disc_optimizer = accelerator.prepare(discriminator, disc_optimizer)
    if ema is not None:
        ema.to(accelerator.device)
        register_ema_hooks(accelerator, ema, "vae_ema", AutoencoderKL)

    run_config = {k: v for k, v in vars(args).items()}
    run_config.update(dataset=recorded_source(args.dataset), data_md5=data.md5, resolution=resolution,
                      channels=channels, num_train_images=len(images), num_processes=accelerator.num_processes,
                      num_parameters=sum(p.numel() for p in vae.parameters()),
                      kind="AutoencoderKL", intensity=data.intensity, patient_rule=data.patient_rule)
    if accelerator.is_main_process:
        (output_dir / "run_config.json").write_text(json.dumps(run_config, indent=2) + "\n")
    step = 0
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        step = checkpoint_step(checkpoint)
    metrics = MetricsLog(output_dir / "metrics.jsonl", step, accelerator.is_main_process)
    if accelerator.is_main_process:
        print(f"medgen train-vae: {len(images)} images {resolution}x{resolution}x{channels} from "
              f"{Path(str(args.dataset)).name} -> {args.latent_channels}x{resolution // args.downsample}x"
              f"{resolution // args.downsample} latents, {run_config['num_parameters'] / 1e6:.2f}M parameters, "
              f"{args.max_train_steps} steps of {args.train_batch_size * accelerator.num_processes} images on "
              f"{accelerator.device}", flush=True)

    # The loop: epochs of shuffled batches, sharded across processes; a resume skips the batches already used.
    progress = tqdm(total=args.max_train_steps, initial=step, disable=not accelerator.is_local_main_process,
                    desc="train-vae")
    start_time, start_step = time.time(), step
    autoencoding.train()
    while step < args.max_train_steps:
        epoch = step // len(loader)
        loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, step % len(loader)) if step % len(loader) else loader
        for (batch,) in batches:
            clean = to_model_range(batch)
            adversarial = discriminator is not None and step >= args.disc_start
            with accelerator.autocast():
                loss, reconstruction, logs = vae_loss(autoencoding, clean, args.kl_weight,
                                                      discriminator if adversarial else None, args.disc_weight)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(autoencoding.parameters(), 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
            if adversarial:
                with accelerator.autocast():
                    d_loss = discriminator_loss(discriminator, clean, reconstruction)
                accelerator.backward(d_loss)
                disc_optimizer.step()
                disc_optimizer.zero_grad()
                logs["d_loss"] = d_loss.item()
            if ema is not None:
                ema.step(vae.parameters())
            step += 1
            progress.update(1)
            logs.update(loss=accelerator.gather(loss.detach()).mean().item(),
                        steps_per_s=(step - start_step) / (time.time() - start_time))
            progress.set_postfix(l1=f"{logs['l1']:.4f}")
            metrics.write({"step": step, "epoch": epoch, **logs})
            if step % args.checkpointing_steps == 0 or step == args.max_train_steps:
                save_checkpoint(accelerator, output_dir, step, args.checkpoints_total_limit)
            if step >= args.max_train_steps:
                break
    progress.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(autoencoding).vae
        if ema is not None:
            ema.copy_to(final.parameters())
        final.eval()
        save_vae(final, output_dir, args, data, source, start_time)
    accelerator.end_training()


def save_vae(vae, output_dir: Path, args, data, source, start_time):
    """The AutoencoderKL (safetensors) and vae_summary.json: its reconstruction PSNR/SSIM on up to --num_val images
    of the val split (test when there is none)."""
    from .provenance import weights_sha256

    summary = {"weights_sha256": weights_sha256(vae), "steps": args.max_train_steps,
               "wall_time_s": time.time() - start_time}
    for split in ("val", "test"):
        try:
            held_out = source.load(split, vae.config.sample_size)
        except ValueError:  # no such split
            continue
        quality = reconstruction_quality(vae, held_out.images[: args.num_val])
        quality.pop("reconstructions")
        summary["reconstruction"] = {"split": split, **quality}
        break
    vae.save_pretrained(output_dir, safe_serialization=True)
    (output_dir / "vae_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    line = ""
    if "reconstruction" in summary:
        r = summary["reconstruction"]
        line = f": {r['split']} PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f} on {r['num_images']} images"
    print(f"medgen train-vae: saved the AutoencoderKL to {output_dir}{line}\n  next: medgen train --dataset "
          f"{args.dataset} --resolution {vae.config.sample_size} --vae {output_dir} --output_dir RUN", flush=True)


# The latent cache: what `medgen train --vae` trains from.

def latent_cache_path(data_md5: str, vae_sha256: str, resolution: int, num_images: int) -> Path:
    """Where the train split's latents live: next to the prepared stores, keyed by the data, VAE and size."""
    from .data.store import cache_root

    key = hashlib.sha256(f"{data_md5}|{vae_sha256}|{resolution}|{num_images}".encode()).hexdigest()[:20]
    return cache_root() / "latents" / f"{key}.npy"


@torch.no_grad()
def encode_images(vae, images: torch.Tensor, path: Path, batch_size: int = 64) -> None:
    """Encode uint8 images (N, C, H, W) batch by batch into a float32 .npy of posterior means at ``path`` (written
    under a temporary name, then renamed: a killed encoding is never read as a cache), with its statistics beside."""
    from .data import to_model_range

    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (len(images), vae.config.latent_channels, *(2 * [images.shape[-1] // vae_downsampling(vae)]))
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
    total, total_sq = 0.0, 0.0
    for start in range(0, len(images), batch_size):
        x = to_model_range(images[start:start + batch_size]).to(vae.device, vae.dtype)
        mean = vae.encode(x).latent_dist.mean.float().cpu().numpy()
        out[start:start + len(mean)] = mean
        total, total_sq = total + float(mean.astype(np.float64).sum()), total_sq + float((mean.astype(np.float64) ** 2).sum())
    out.flush()
    del out
    count = float(np.prod(shape))
    std = math.sqrt(max(total_sq / count - (total / count) ** 2, 1e-12))
    path.with_suffix(".json").write_text(json.dumps({"mean": total / count, "std": std, "shape": list(shape)}) + "\n")
    tmp.rename(path)


def vae_downsampling(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def train_latents(vae, images: torch.Tensor, data_md5: str, vae_sha256: str):
    """The train split as (scaled-later) latents, memory-mapped from the cache (encoded on first use), and the
    scaling factor 1/std measured on them (Rombach et al. 2022, sec. 4.3.2): (latents, factor, cache path)."""
    path = latent_cache_path(data_md5, vae_sha256, images.shape[-1], len(images))
    if not path.is_file():
        encode_images(vae, images, path)
    stats = json.loads(path.with_suffix(".json").read_text())
    latents = torch.from_numpy(np.load(path, mmap_mode="c"))  # copy-on-write: read, never copied into RAM whole
    return latents, 1.0 / stats["std"], path


if __name__ == "__main__":
    main()

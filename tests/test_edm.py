"""`--formulation edm` (Karras et al. 2022): what training optimises is what the saved diffusers schedulers undo.

A UNet that knows one clean image and answers with the F that makes EDM's denoiser D return it (reading sigma back
from c_noise) has zero training loss under our EDM loss *and* samples exactly that image through the saved
scheduler -- only if training's c_in, c_noise, c_skip and c_out are the scheduler's. Then one real short run."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import EDMEulerScheduler
from conftest import read_metrics

import train_unconditional

from medgen_diffusers import BloodMNISTPipeline
from medgen_diffusers.audit import denoising_losses, membership_inference
from medgen_diffusers.models import edm_scheduler, fast_solver
from medgen_diffusers.runtime import load_pipeline
from medgen_diffusers.train import edm_loss


class KnowsOneImage(torch.nn.Module):
    """Stands in for the UNet: EDM's ideal output F for one known image, given the scheduler's c_in * x and
    c_noise = ln(sigma) / 4 (diffusers' EDM convention, written out here independently of our code)."""

    def __init__(self, clean):
        super().__init__()
        self.clean = clean
        self.config = SimpleNamespace(sample_size=clean.shape[-1], in_channels=clean.shape[1], num_class_embeds=None)
        self.device, self.dtype = clean.device, clean.dtype  # what the pipeline asks a UNet

    def forward(self, model_input, timestep, class_labels=None):
        sigma = (4 * torch.as_tensor(timestep, dtype=torch.float32)).exp().reshape(-1, 1, 1, 1)
        total = sigma ** 2 + 0.5 ** 2  # sigma_data = 0.5
        noisy = model_input * total.sqrt()
        c_skip, c_out = 0.5 ** 2 / total, sigma * 0.5 / total.sqrt()
        return SimpleNamespace(sample=(self.clean - c_skip * noisy) / c_out)


def test_edm_loss_and_the_saved_samplers_agree(data_root):
    with np.load(data_root / "bloodmnist.npz") as npz:
        pixels = npz["train_images"][:9]
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    member = images[:1]
    unet = KnowsOneImage(member)
    scheduler = edm_scheduler()
    args = SimpleNamespace(mixed_precision="no", cpu_bf16_math_attention=True)
    torch.manual_seed(0)
    assert edm_loss(unet, scheduler, member.expand(4, -1, -1, -1), torch.randn(4, 3, 28, 28), None, args).max() < 1e-9
    assert edm_loss(unet, scheduler, images[1:5], torch.randn(4, 3, 28, 28), None, args).min() > 1e-2  # not a no-op

    pipe = BloodMNISTPipeline(unet, fast_solver(scheduler))
    pipe.set_progress_bar_config(disable=True)
    for solver in (pipe.scheduler, EDMEulerScheduler.from_config(scheduler.config)):
        pipe.scheduler = solver
        out = pipe(batch_size=2, num_inference_steps=12, output_type="pt",
                   generator=torch.Generator().manual_seed(0)).images
        assert (out - (member / 2 + 0.5)).abs().max() < 1e-4, type(solver).__name__

    # The audit's loss attack on an EDM pipeline: the image the "model" knows is the member, and it is found.
    pipe.scheduler = scheduler
    losses = denoising_losses(pipe, pixels[:3], None)
    assert losses[0] < 1e-9 < 1e-2 < losses[1:].min(), losses
    result = membership_inference(pipe, pixels[:1], None, pixels[1:], None)
    assert result["auc"] == 1.0


def test_edm_run_saves_a_pipeline_that_samples_with_its_own_scheduler(data_root, tmp_path):
    out = tmp_path / "edm"
    train_unconditional.main(["--output_dir", str(out), "--data_root", str(data_root), "--model_preset", "tiny",
                              "--max_train_samples", "64", "--train_batch_size", "32", "--max_train_steps", "2",
                              "--num_sample_images", "0", "--logger", "none", "--mixed_precision", "no",
                              "--formulation", "edm"])
    assert all(np.isfinite(m["loss"]) for m in read_metrics(out) if "loss" in m)
    pipe = BloodMNISTPipeline.from_pretrained(out)
    assert type(pipe.scheduler).__name__ == "EDMDPMSolverMultistepScheduler" and pipe.scheduler.config.thresholding
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=4, output_type="np").images
    assert images.shape == (2, 28, 28, 3) and images.std() > 0
    card = (out / "README.md").read_text()
    assert "- edm" in card and "EDMEulerScheduler.from_config" in card and "DDIMScheduler" not in card
    assert '"prediction_type": "edm"' in (out / "run_config.json").read_text()
    with pytest.raises(ValueError, match="EDM formulation"):  # a DDPM-family sampler would read sigma as t
        load_pipeline(str(out), "ddim")
    with pytest.raises(SystemExit):
        train_unconditional.parse_args(["--output_dir", str(tmp_path / "x"), "--formulation", "edm",
                                        "--snr_gamma", "5"])
    assert not (tmp_path / "x").exists()

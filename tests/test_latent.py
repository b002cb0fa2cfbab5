"""Latent diffusion (issue 39): `medgen train-vae` -> `medgen train --vae` -> a pipeline with a vae component that
plain diffusers loads, and every command on it. Real BloodMNIST pixels (upsampled 28 -> 32 px), tiny models."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_own_folder
from diffusers import AutoencoderKL, DiffusionPipeline

from medgen_diffusers.cli import main
from medgen_diffusers.models import preset_config
from medgen_diffusers.provenance import weights_sha256
from medgen_diffusers.vae import latent_cache_path, load_vae, reconstruction_quality

COMMON = ["--resolution", "32", "--mixed_precision", "no"]


@pytest.fixture(scope="module")
def cells(tmp_path_factory, data_root):
    """128 real training images (16 per class), 32 val, 64 test, as a user's own class folders."""
    return write_own_folder(tmp_path_factory.mktemp("latent") / "cells", data_root,
                            per_split=(("train", 16), ("val", 4), ("test", 8)))


@pytest.fixture(scope="module")
def vae_run(cells, tmp_path_factory):
    out = tmp_path_factory.mktemp("vae") / "vae"
    assert main(["train-vae", "--dataset", str(cells), *COMMON, "--base_channels", "16", "--max_train_steps", "8",
                 "--train_batch_size", "16", "--checkpointing_steps", "4", "--num_val", "16",
                 "--output_dir", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def latent_run(cells, vae_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("ldm") / "run"
    assert main(["train", "--dataset", str(cells), *COMMON, "--vae", str(vae_run), "--max_train_steps", "6",
                 "--train_batch_size", "16", "--checkpointing_steps", "6", "--lr_warmup_steps", "1",
                 "--num_sample_images", "4", "--sample_inference_steps", "3", "--logger", "none",
                 "--eval_steps", "6", "--eval_num_samples", "8", "--eval_num_val", "16", "--eval_inference_steps", "2",
                 "--output_dir", str(out)]) == 0
    return out


def test_train_vae_saves_an_autoencoderkl_with_its_measured_reconstruction(vae_run, cells):
    vae = AutoencoderKL.from_pretrained(vae_run)
    assert (vae.config.in_channels, vae.config.latent_channels, len(vae.config.block_out_channels)) == (3, 4, 3)
    summary = json.loads((vae_run / "vae_summary.json").read_text())
    assert summary["weights_sha256"] == weights_sha256(vae)
    # The recorded PSNR/SSIM are this VAE's on the first 16 val images: measured again here, they agree.
    from medgen_diffusers.data import load_images

    val = load_images(str(cells), "val", 32).images[:16]
    again = reconstruction_quality(vae.eval(), val)
    assert summary["reconstruction"]["split"] == "val"
    assert summary["reconstruction"]["psnr"] == pytest.approx(again["psnr"], abs=1e-4)
    assert summary["reconstruction"]["ssim"] == pytest.approx(again["ssim"], abs=1e-4)
    assert json.loads((vae_run / "run_config.json").read_text())["kind"] == "AutoencoderKL"


def test_train_vae_resumes_where_it_stopped(vae_run, cells, tmp_path):
    import shutil

    run = tmp_path / "vae"
    shutil.copytree(vae_run, run)
    shutil.rmtree(run / "checkpoint-8")
    assert main(["train-vae", "--dataset", str(cells), *COMMON, "--base_channels", "16", "--max_train_steps", "8",
                 "--train_batch_size", "16", "--checkpointing_steps", "4", "--num_val", "16",
                 "--resume_from_checkpoint", "latest", "--output_dir", str(run)]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # steps 5-8 again, once each; 1-4 kept from the first run
    # the same batches, noise and weights from the checkpoint on: the resumed VAE is the uninterrupted one
    assert weights_sha256(AutoencoderKL.from_pretrained(run)) == weights_sha256(AutoencoderKL.from_pretrained(vae_run))


def test_latent_pipeline_loads_with_plain_diffusers_and_decodes_its_latents(latent_run):
    index = json.loads((latent_run / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    pipe = DiffusionPipeline.from_pretrained(latent_run, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    assert (pipe.image_size, pipe.image_channels, pipe.unet.config.sample_size) == (32, 3, 8)
    seeded = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    latents = pipe(batch_size=2, num_inference_steps=3, generator=seeded(), output_type="latent").images
    assert latents.shape == (2, 4, 8, 8)
    images = pipe(batch_size=2, num_inference_steps=3, generator=seeded(), output_type="np").images
    assert images.shape == (2, 32, 32, 3)
    with torch.no_grad():  # the images are the VAE's decoding of those latents, unscaled by the recorded factor
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    np.testing.assert_allclose(images, (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy(), atol=1e-5)
    # the scaling factor is 1/std of the train split's cached latents, measured, recorded and saved
    config = json.loads((latent_run / "run_config.json").read_text())
    cache = latent_cache_path(config["data_md5"], config["latent"]["vae_sha256"], 32, 128)
    assert cache.name == config["latent"]["cache"]
    assert pipe.vae.config.scaling_factor == pytest.approx(1 / np.load(cache).std(), rel=1e-4)
    assert config["latent"]["scaling_factor"] == pytest.approx(pipe.vae.config.scaling_factor)


def test_every_command_runs_on_a_latent_model(latent_run, tmp_path):
    # during training: the FID of decoded samples (--eval_steps), against 32-px real images
    evaluations = [json.loads(line) for line in (latent_run / "metrics.jsonl").read_text().splitlines()
                   if "eval/fid_val" in line]
    assert len(evaluations) == 1 and evaluations[0]["step"] == 6
    assert main(["sample", str(latent_run), "--num-images", "16", "--steps", "3", "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as npz:
        assert npz["train_images"].shape == (16, 32, 32, 3)
    assert main(["evaluate", str(latent_run), "--num-samples", "32", "--num-real", "32", "--protocols", "standard",
                 "--steps", "3", "--out", str(tmp_path / "eval.json")]) == 0
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert evaluation["provenance"]["weights_sha256"] == weights_sha256(
        DiffusionPipeline.from_pretrained(latent_run, trust_remote_code=True).unet)
    assert main(["audit", str(latent_run), "--num-samples", "16", "--num-mia", "16", "--spaces", "pixel,latent", "--steps",
                 "3", "--out", str(tmp_path / "audit.json"), "--figure", ""]) == 0
    audit = json.loads((tmp_path / "audit.json").read_text())
    # the loss attack ran on the images' latents (a 3-channel 32-px image would not even fit the 4-channel UNet)
    assert audit["membership_inference"]["num_members"] == 16 and audit["pixel_space_size"] == 32
    assert set(audit["nearest_neighbours"]) == {"pixel", "latent"}
    card = (latent_run / "README.md").read_text()
    assert "**latent** diffusion model" in card and "PSNR" in card and "AutoencoderKL" in card


def test_dp_refuses_a_vae_trained_on_the_private_data(cells, vae_run, tmp_path, capsys):
    args = ["train", "--dataset", str(cells), *COMMON, "--vae", str(vae_run), "--dp_epsilon", "10",
            "--dp_batch_size", "16", "--train_batch_size", "16", "--max_train_steps", "2", "--logger", "none",
            "--num_sample_images", "0", "--no-class_conditional"]
    assert main([*args, "--output_dir", str(tmp_path / "refused")]) == 2
    error = capsys.readouterr().err
    assert "--allow_vae_on_private_data" in error and "same checksum" in error
    assert not (tmp_path / "refused").exists()
    assert main([*args, "--allow_vae_on_private_data", "--output_dir", str(tmp_path / "allowed")]) == 0
    privacy = json.loads((tmp_path / "allowed" / "run_config.json").read_text())["privacy"]
    assert any("autoencoder (--vae)" in item and "same checksum" in item for item in privacy["not_covered"])
    assert "autoencoder (--vae)" in (tmp_path / "allowed" / "README.md").read_text()


def test_vae_from_a_folder_a_pipeline_or_a_hub_id_and_not_a_unet(vae_run, latent_run, tmp_path, monkeypatch):
    from test_pipeline import write_hub_cache

    want = weights_sha256(AutoencoderKL.from_pretrained(vae_run))
    assert weights_sha256(load_vae(str(vae_run))) == want
    # the latent pipeline's vae/ holds the same weights with the measured scaling factor
    assert weights_sha256(load_vae(str(latent_run))) == want
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_hub_cache(latent_run, tmp_path / "hub", "medgen/ldm-test")  # a pipeline repo: its vae/
    write_hub_cache(vae_run, tmp_path / "hub", "medgen/vae-test")  # a VAE repo: at its root
    assert weights_sha256(load_vae("medgen/ldm-test", cache_dir=tmp_path / "hub")) == want
    assert weights_sha256(load_vae("medgen/vae-test", cache_dir=tmp_path / "hub")) == want
    with pytest.raises(ValueError, match="UNet2DModel, not an AutoencoderKL"):
        load_vae(str(latent_run / "unet"))


def test_latent_presets_reach_down_to_4_pixels():
    config = preset_config("tiny", 8, latent=True)
    assert len(config["block_out_channels"]) == 2 and config["down_block_types"][-1] == "AttnDownBlock2D"
    assert len(preset_config("tiny", 32, latent=True)["block_out_channels"]) == 4
    with pytest.raises(ValueError, match="do not halve"):
        preset_config("tiny", 7, latent=True)


def test_a_latent_teacher_distils_into_a_four_step_latent_student(latent_run, tmp_path):
    out = tmp_path / "student"
    assert main(["distill", "--teacher", str(latent_run), "--output_dir", str(out), "--max_train_steps", "3",
                 "--train_batch_size", "16", "--lr_warmup_steps", "1", "--checkpointing_steps", "3",
                 "--mixed_precision", "no"]) == 0
    student = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
    student.set_progress_bar_config(disable=True)
    teacher = DiffusionPipeline.from_pretrained(latent_run, trust_remote_code=True)
    # the student decodes with the teacher's VAE and scaling factor, in its 4 default steps
    assert weights_sha256(student.vae) == weights_sha256(teacher.vae)
    assert student.vae.config.scaling_factor == teacher.vae.config.scaling_factor
    assert type(student.scheduler).__name__ == "LCMScheduler" and student.config.default_num_inference_steps == 4
    assert student(batch_size=2, output_type="np").images.shape == (2, 32, 32, 3)
    assert weights_sha256(student.unet) != weights_sha256(teacher.unet)  # it was trained


def test_pixel_schedules_shift_their_noise_above_64_px_and_keep_it_at_and_below():
    from diffusers import DDPMScheduler

    from medgen_diffusers.train import build_model, parse_args

    cosine = DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod
    _, at64 = build_model(parse_args(["--output_dir", "x", "--mixed_precision", "no"]), 64, 3, None)
    assert "trained_betas" not in at64.config or at64.config.trained_betas is None
    args = parse_args(["--output_dir", "x", "--mixed_precision", "no"])
    _, at128 = build_model(args, 128, 3, None)
    assert args.resolved_noise_shift == pytest.approx(2 * np.log(64 / 128))
    # mid-schedule: the cosine schedule's alpha_bar 0.5 (log-SNR 0) becomes sigmoid(-1.386) = 0.2 at 128 px
    assert float(cosine[499]) == pytest.approx(0.5, abs=0.01)
    assert float(at128.alphas_cumprod[499]) == pytest.approx(0.2, abs=0.01)
    # saved with the scheduler, so a sampler built from its config (as every command does) uses it too
    from diffusers import DDIMScheduler

    assert torch.allclose(DDIMScheduler.from_config(at128.config).alphas_cumprod, at128.alphas_cumprod)
    _, fixed = build_model(parse_args(["--output_dir", "x", "--mixed_precision", "no", "--noise_shift", "0"]), 128, 3,
                           None)
    assert torch.allclose(fixed.alphas_cumprod, cosine)


def test_the_latent_space_audit_flags_copies_of_training_images(latent_run, cells):
    """The known positive: "synthetic" images that are training images are copies in the VAE's space too."""
    from medgen_diffusers.audit import copy_statistics, latent_vectors
    from medgen_diffusers.data import load_images

    vae = load_vae(str(latent_run)).eval()
    train, test = load_images(str(cells), "train", 32), load_images(str(cells), "test", 32)
    features = lambda data, idx: latent_vectors(vae, data.images, idx)  # noqa: E731
    copies = copy_statistics(features(train, np.arange(16)), features(train, np.arange(128)),
                             features(test, np.arange(64)))
    novel = copy_statistics(features(test, np.arange(32, 64)), features(train, np.arange(128)),
                            features(test, np.arange(32)))
    assert copies["copy_rate"]["synthetic"] == 1.0 and novel["copy_rate"]["synthetic"] < 0.5


def test_large_images_get_attention_at_16_to_32_px_a_batch_for_their_size_and_a_refusal_when_they_cannot_fit(
        cells, tmp_path, capsys):
    import re

    from medgen_diffusers.memory import default_batch_size, training_memory
    from medgen_diffusers.models import build_unet

    attended = lambda preset, side: [side // 2 ** i for i, block in enumerate(  # noqa: E731
        preset_config(preset, side)["down_block_types"]) if block.startswith("Attn")]
    assert attended("small", 512) == [16, 8] and attended("base", 256) == [32, 16, 8]
    assert attended("small", 128) == [8]  # below 256 px: as before
    assert [default_batch_size(side) for side in (28, 64, 128, 256, 512)] == [128, 128, 32, 8, 2]
    unet = build_unet("tiny", sample_size=256, channels=3)
    at8, at16, checkpointed = training_memory(unet, 8), training_memory(unet, 16), training_memory(unet, 8, True)
    assert at16["total"] - at8["total"] == pytest.approx(8 * at8["per_image"])
    assert checkpointed["per_image"] < 0.8 * at8["per_image"]
    # The real command at 256 px on a 2-GiB budget: refused before any step, with the estimate and what fits.
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(cells), "--resolution", "256", "--model_preset", "tiny",
                 "--memory_budget_gb", "2", "--max_train_steps", "1", "--mixed_precision", "no", "--logger", "none",
                 "--output_dir", str(out)]) != 0
    error = capsys.readouterr().err
    assert re.search(r"needs ~\d+\.\d GiB .* 8 x .* per 256-px image.*2\.0 GiB free.*--train_batch_size 3; or "
                     r"--gradient_checkpointing", error), error
    assert not list(out.glob("checkpoint-*"))

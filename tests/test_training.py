"""The real training script on the real data, in subprocesses: learning, saving, resuming, 2 CPU processes."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from safetensors.torch import load_file
from conftest import REPO, read_metrics, run_training, train_here

import train_unconditional

from medgen_diffusers import BloodMNISTPipeline
from medgen_diffusers.cli import main

SHORT = ["--max_train_samples", "512", "--train_batch_size", "16", "--lr_warmup_steps", "2",
         "--num_sample_images", "0", "--learning_rate", "5e-4"]


def test_short_training_lowers_the_loss_and_saves_a_loadable_pipeline(trained_run):
    metrics = read_metrics(trained_run)
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 80
    evals = [m for m in metrics if "eval/fid_val" in m]  # --eval_steps 80: one evaluation, at the end
    assert [m["step"] for m in evals] == [80]
    assert all(np.isfinite(evals[0][f"eval/{k}"]) for k in ("fid_train", "fid_val", "kid_train", "kid_val"))
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10]), losses
    files = {p.relative_to(trained_run).as_posix() for p in trained_run.rglob("*") if p.is_file()}
    assert {"model_index.json", "unet/diffusion_pytorch_model.safetensors", "pipeline_bloodmnist.py", "README.md",
            "samples.png", "train_summary.json"} <= files
    assert any(f.startswith("logs/") and "tfevents" in f for f in files)
    assert not any(f.endswith(".bin") for f in files if not f.startswith("checkpoint-"))
    # The run records whether its allocator kept freed memory (the default; glibc, i.e. Linux, only).
    assert json.loads((trained_run / "run_config.json").read_text())["keep_freed_memory"] is sys.platform.startswith("linux")
    card = (trained_run / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: diffusers" in card and "not for diagnosis" in card

    pipe = BloodMNISTPipeline.from_pretrained(trained_run)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.is_conditional and pipe.num_classes == 8
    # A plain call samples with the fast default sampler (DDIM 20, trailing), not DDPM's 1,000 steps.
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.config.default_num_inference_steps == 20
    default = pipe(class_labels=["platelet", "neutrophil"], output_type="np",
                   generator=torch.Generator().manual_seed(0)).images
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.scheduler.set_timesteps(20)
    assert pipe.scheduler.timesteps[0] == 999  # "trailing" spacing survives the save: fast samplers start at pure noise
    dpm = pipe(batch_size=8, num_inference_steps=20, output_type="np", generator=torch.Generator().manual_seed(0)).images
    for images in (default, dpm):
        assert np.isfinite(images).all() and images.std() > 0.02  # not a constant or collapsed output
        # Smooth like cells, not pixel noise: mean neighbour difference (real BloodMNIST ~0.05, noise ~0.4).
        assert np.abs(np.diff(images, axis=2)).mean() < 0.2
    # The final pipeline holds the EMA weights, not the raw training weights of the last checkpoint.
    trained = load_file(trained_run / "checkpoint-80" / "model.safetensors")
    saved = pipe.unet.state_dict()
    assert any(not torch.equal(trained[k], saved[k]) for k in trained if k in saved)


def test_resume_from_a_missing_checkpoint_is_a_clear_error(tmp_path, data_root, capsys):
    assert medgen_train(tmp_path, data_root, *SHORT, "--max_train_steps", "2",
                        "--resume_from_checkpoint", str(tmp_path / "checkpoint-7")) == 2
    assert "is not a complete checkpoint folder" in capsys.readouterr().err


def test_two_cpu_processes_stay_in_sync_and_only_rank0_writes(tmp_path, data_root):
    # With gradient accumulation: 120 images, 8 per rank -> 7 batches per rank and epoch make 4 updates of 2 (the
    # last accumulates one batch), so epoch 1 starts at step 5.
    args = [*SHORT, "--max_train_samples", "120", "--max_train_steps", "6", "--checkpointing_steps", "3",
            "--train_batch_size", "8", "--gradient_accumulation_steps", "2"]
    single, double = tmp_path / "one", tmp_path / "two"
    train_here(single, data_root, *args)
    run_training(double, data_root, *args, launcher=(sys.executable, "-m", "torch.distributed.run",
                                                     "--nproc_per_node", "2", "--master_port", "29533"))
    summary = json.loads((double / "train_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["global_step"] == 6
    assert len(summary["param_checksums"]) == 2 and summary["ranks_in_sync"], summary
    assert json.loads((double / "run_config.json").read_text())["total_batch_size"] == 8 * 2 * 2
    assert [m["step"] for m in read_metrics(double)] == list(range(1, 7))  # one line per step, not one per rank
    assert [m["epoch"] for m in read_metrics(double)] == [0, 0, 0, 0, 1, 1]
    event_files = lambda d: sorted(p.name.split(".")[0] for p in d.rglob("events.out.tfevents.*"))  # noqa: E731
    assert event_files(double) == event_files(single)  # one tensorboard writer
    ranks_states = sorted(p.name for p in (double / "checkpoint-6").glob("random_states_*"))
    assert ranks_states == ["random_states_0.pkl", "random_states_1.pkl"]  # each rank's RNG, for exact resume
    outside_checkpoints = lambda d: sorted(  # noqa: E731
        p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file() and "logs" not in p.parts
        and not p.parts[len(d.parts)].startswith("checkpoint-"))
    assert outside_checkpoints(double) == outside_checkpoints(single)


def medgen_train(output_dir, data_root, *extra):
    """`medgen train` in this process: its exit code, its errors on stderr as the console script prints them."""
    return main(["train", "--output_dir", str(output_dir), "--data_root", str(data_root), "--model_preset", "tiny",
                 *extra, "--mixed_precision", "no"])


def sha_tree(folder):
    import hashlib

    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sigkill_at_random_moments_then_resume_ends_exactly(tmp_path, data_root, capsys):
    """Kill -9 while training runs (mid-step or mid-save, wherever it falls), resume with `latest` each time: the
    run ends at exactly --max_train_steps with the losses of an uninterrupted run, and never resumes a torn
    checkpoint (verify_checkpoint would stop it). Then a truncated checkpoint file is refused by name."""
    import random

    # fp32: the reference runs in this process (train_here), the killed ones in their own.
    args = [*SHORT, "--max_train_steps", "24", "--checkpointing_steps", "2", "--checkpoints_total_limit", "3",
            "--mixed_precision", "no"]
    reference = tmp_path / "reference"
    train_here(reference, data_root, *args)
    assert sorted(p.name for p in reference.glob("checkpoint-*")) == ["checkpoint-20", "checkpoint-22", "checkpoint-24"]
    killed = tmp_path / "killed"
    cmd = [sys.executable, str(REPO / "train_unconditional.py"), "--output_dir", str(killed), "--data_root",
           str(data_root), "--model_preset", "tiny", *args, "--resume_from_checkpoint", "latest"]
    rng = random.Random(0)
    metrics = killed / "metrics.jsonl"
    steps_before = 0
    for _ in range(2):  # two kills: the second resumes a run that was itself resumed
        process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        # Training is under way once a new step is logged; then a random moment of the next ~0.5 s.
        while process.poll() is None and time.time() < deadline and (
                not metrics.exists() or len(metrics.read_text().splitlines()) <= steps_before):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert not (killed / "model_index.json").exists(), "the run finished before it could be killed"
        steps_before = len(metrics.read_text().splitlines())
    (killed / "checkpoint-999.tmp").mkdir(exist_ok=True)  # a kill during save_state: must never be resumed from
    (killed / "checkpoint-999.tmp" / "optimizer.bin").write_bytes(b"half")
    train_here(killed, data_root, *args, "--resume_from_checkpoint", "latest")
    assert json.loads((killed / "train_summary.json").read_text())["global_step"] == 24
    assert not list(killed.glob("checkpoint-*.tmp"))
    expected, resumed = read_metrics(reference), read_metrics(killed)
    assert [m["step"] for m in resumed] == list(range(1, 25))
    assert [(m["loss"], m["lr"]) for m in resumed] == [(m["loss"], m["lr"]) for m in expected]
    final_ref = BloodMNISTPipeline.from_pretrained(reference).unet.state_dict()
    final_res = BloodMNISTPipeline.from_pretrained(killed).unet.state_dict()
    assert all(torch.equal(final_ref[k], final_res[k]) for k in final_ref)

    # A checkpoint file truncated after the fact: one clear error naming it, nothing changed, no silent restart.
    broken = killed / "checkpoint-24" / "unet_ema" / "diffusion_pytorch_model.safetensors"
    broken.write_bytes(broken.read_bytes()[:1000])
    before = sha_tree(killed)
    assert medgen_train(killed, data_root, *args, "--max_train_steps", "26", "--resume_from_checkpoint", "latest") == 2
    assert f"Checkpoint file {broken} is corrupt" in capsys.readouterr().err
    assert sha_tree(killed) == before


def test_min_snr_weighting_changes_the_loss_as_the_paper_says(tmp_path, data_root, capsys):
    """--snr_gamma weights each image's MSE by min(SNR, gamma) over what the UNet predicts (diffusers' compute_snr).

    Step 1 sees the same batch, noise and timesteps in every run (same seed), so its losses compare directly:
    for v-prediction the weights min(SNR, 5) / (SNR + 1) are all below 1 -> a smaller loss; for epsilon,
    min(SNR, gamma) / SNR is exactly 1 once gamma exceeds every SNR -> the plain loss, bit for bit."""
    def first_loss(name, *extra):  # in-process: five script start-ups cost ~30 s of suite time
        train_unconditional.main(["--output_dir", str(tmp_path / name), "--data_root", str(data_root),
                                  "--model_preset", "tiny", "--max_train_samples", "64", "--train_batch_size", "32",
                                  "--max_train_steps", "1", "--num_sample_images", "0", "--logger", "none",
                                  # fp32 as every in-process run: Accelerate keeps one state per process
                                  "--mixed_precision", "no", *extra])
        return read_metrics(tmp_path / name)[0]["loss"]

    v_plain, v_min_snr = first_loss("v"), first_loss("v_snr", "--snr_gamma", "5")
    assert 0 < v_min_snr < 0.9 * v_plain, (v_min_snr, v_plain)
    eps_plain = first_loss("eps", "--prediction_type", "epsilon")
    assert first_loss("eps_snr", "--prediction_type", "epsilon", "--snr_gamma", "1e9") == eps_plain
    with pytest.raises(SystemExit) as bad:
        medgen_train(tmp_path / "bad", data_root, "--snr_gamma", "0")
    assert bad.value.code == 2 and "--snr_gamma must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_fast_step_defaults_keep_the_fp32_loss(data_root, tmp_path):
    """--mixed_precision auto is bf16 on a CPU with bf16 instructions (fp32 under DP-SGD); in bf16 the UNet's
    attention runs on the math SDPA kernel (not the CPU flash kernel), and the loss on the same real batch, noise and
    timesteps is the fp32 loss to 0.5 % and the flash kernel's bf16 loss to 0.1 % (measured: 7e-5 and 0)."""
    from torch.profiler import profile

    from medgen_diffusers.data import load_medmnist_tensors
    from medgen_diffusers.models import attention_kernels, build_unet, native_cpu_bf16
    from medgen_diffusers.train import diffusion_loss

    base = ["--output_dir", str(tmp_path / "run"), "--cpu"]
    assert train_unconditional.parse_args(base + ["--dp_epsilon", "5"]).mixed_precision == "no"
    args = train_unconditional.parse_args(base)
    assert args.mixed_precision == ("bf16" if native_cpu_bf16() else "no") and args.cpu_bf16_math_attention
    data = load_medmnist_tensors("bloodmnist", "train", root=data_root)
    images, labels = data.images[:32], data.labels[:32]
    torch.manual_seed(0)
    unet = build_unet("tiny", num_classes=8)
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")

    def loss(precision, math_kernel):
        args.mixed_precision, args.cpu_bf16_math_attention = precision, math_kernel
        torch.manual_seed(1)  # the same augmentation, label dropout, noise and timesteps in every arm
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"), profile() as prof:
            value = diffusion_loss(unet, scheduler, images, labels, args, "dihedral", 8).mean().item()
        return value, {event.name for event in prof.events()}

    fp32, fp32_ops = loss("no", True)
    fast, fast_ops = loss("bf16", True)
    flash, flash_ops = loss("bf16", False)
    flash_kernel = "aten::_scaled_dot_product_flash_attention_for_cpu"
    assert flash_kernel in flash_ops and flash_kernel in fp32_ops and flash_kernel not in fast_ops
    print(f"loss fp32 {fp32:.5f}, bf16 math attention {fast:.5f}, bf16 flash {flash:.5f}")
    assert abs(fast - fp32) <= 0.005 * fp32 and abs(fast - flash) <= 0.001 * flash, (fp32, fast, flash)
    assert type(attention_kernels("cuda", "bf16")).__name__ == "nullcontext"  # elsewhere: PyTorch's own choice


FAULT_PROBE = """
import resource, torch
from medgen_diffusers.models import keep_freed_memory
def faults():  # minor page faults of ten 48 MiB allocations, each freed before the next (a step's activations)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.ones(12 * 2**20)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults()
default = faults()
applied = keep_freed_memory()
settling = faults()
print(default, applied, faults(), settling)
"""


def test_keep_freed_memory_stops_the_page_faults_of_reallocated_memory():
    """--keep_freed_memory (on by default): glibc's defaults hand a freed 48 MiB block back to the OS, so every new
    one page-faults all of it in again (~12k faults each); kept, it is reused without faults. One process: before,
    then after the call (it changes the process's allocator for good). Both are counted in the steady state, after
    ten steps of the same kind: right after the switch the heap has to grow to hold the block, and grows once more
    (another ~12k faults) when a small allocation that stays alive lands between a freed block and the heap's top.
    The first version counted those steps and failed in 9 of 40 runs; the steady state is 0 faults in 60 of 60."""
    if not sys.platform.startswith("linux"):
        return
    out = subprocess.run([sys.executable, "-c", FAULT_PROBE], capture_output=True, text=True, cwd=REPO, check=True)
    default, applied, kept, settling = out.stdout.split()
    assert applied == "True", out
    assert int(default) > 10 * 10_000 and int(kept) < 10 * 100, out.stdout

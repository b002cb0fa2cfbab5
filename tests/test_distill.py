"""Few-step distillation (distill_lcm.py): real runs on the shipped teacher and real BloodMNIST, at toy length."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler

from medgen_diffusers import BloodMNISTPipeline
from medgen_diffusers.cli import main
from medgen_diffusers.models import auto_mixed_precision

from conftest import REPO
from test_pipeline import load_without_package


def distill(output_dir, data_root, steps, *extra):
    # One thread: the resume test compares weights bit for bit, and CPU kernels round differently per thread count.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(REPO / "distill_lcm.py"), "--output_dir", str(output_dir), "--data_root",
           str(data_root), "--max_train_steps", str(steps), "--train_batch_size", "8", "--checkpointing_steps", "2",
           *extra]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def medgen_distill(*args) -> int:
    """`medgen distill` in this process (refusals: no interpreter start-up): its exit code, its errors on stderr as
    the console script prints them. fp32, as every in-process run (Accelerate keeps one state per process)."""
    return main(["distill", *map(str, args), "--mixed_precision", "no"])


def test_boundary_scalings_are_the_ones_lcmscheduler_samples_with():
    sys.path.insert(0, str(REPO))
    from distill_lcm import boundary_scalings

    scheduler = LCMScheduler(timestep_scaling=10.0)
    for t in (0, 19, 500, 999):
        c_skip, c_out = boundary_scalings(torch.tensor([t]), 10.0)
        expected = scheduler.get_scalings_for_boundary_condition_discrete(t)
        assert torch.allclose(c_skip.flatten(), torch.tensor([expected[0]], dtype=torch.float32))
        assert torch.allclose(c_out.flatten(), torch.tensor([expected[1]], dtype=torch.float32))
    assert boundary_scalings(torch.tensor([0]), 10.0)[0].item() == 1.0  # f(x, 0) = x: the consistency boundary


def test_distilled_pipeline_samples_in_four_steps_loads_everywhere_and_resumes_exactly(tmp_path, data_root, capsys):
    teacher = BloodMNISTPipeline.from_pretrained()
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    # In this process (three interpreter start-ups saved), all three runs with the same thread count.
    short = ("--data_root", data_root, "--train_batch_size", "8", "--checkpointing_steps", "2")
    # No checkpoint at 2 in the straight run: saving must not shift the RNG.
    assert medgen_distill("--output_dir", straight, *short, "--max_train_steps", "3", "--checkpointing_steps", "3") == 0
    assert medgen_distill("--output_dir", resumed, *short, "--max_train_steps", "2") == 0
    # Resumes from checkpoint-2 (the default is --resume_from_checkpoint latest).
    assert medgen_distill("--output_dir", resumed, *short, "--max_train_steps", "3") == 0
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]

    pipe = BloodMNISTPipeline.from_pretrained(straight)
    again = BloodMNISTPipeline.from_pretrained(resumed)
    for name, tensor in pipe.unet.state_dict().items():
        assert torch.equal(tensor, again.unet.state_dict()[name]), name  # resume = uninterrupted, bit for bit
    changed = [n for n, t in pipe.unet.state_dict().items() if not torch.equal(t, teacher.unet.state_dict()[n])]
    assert changed, "the student never moved away from the teacher"

    assert isinstance(pipe.scheduler, LCMScheduler) and pipe.config.default_num_inference_steps == 4
    for key in ("prediction_type", "beta_schedule", "thresholding", "sample_max_value", "num_train_timesteps"):
        assert pipe.scheduler.config[key] == teacher.scheduler.config[key], key
    assert pipe.scheduler.config.original_inference_steps == 50
    assert "variance_type" not in json.loads((straight / "scheduler" / "scheduler_config.json").read_text())
    batch_sizes = []
    pipe.unet.register_forward_hook(lambda module, inputs, output: batch_sizes.append(inputs[0].shape[0]))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_labels=[0, 3, 7], generator=torch.Generator().manual_seed(0), output_type="np").images
    assert batch_sizes == [3, 3, 3, 3]  # four network evaluations per image, no guidance batch
    assert images.shape == (3, 28, 28, 3) and np.isfinite(images).all() and 0 <= images.min() and images.max() <= 1

    # The student follows its teacher's run: data source, checksum and augmentation (BloodMNIST: dihedral).
    config = json.loads((straight / "distill_config.json").read_text())
    assert config["augmentation"] == "dihedral" and config["data"]["matches_training_data"] is True
    assert json.loads((straight / "run_config.json").read_text())["dataset"] == "bloodmnist"
    # `latest` never continues a student of another teacher: refused before anything is written.
    before = (resumed / "metrics.jsonl").read_bytes()
    assert medgen_distill("--output_dir", resumed, "--teacher", straight, "--max_train_steps", "4",
                          "--train_batch_size", "8") == 2
    err = capsys.readouterr().err
    assert "teacher_sha256" in err and "Traceback" not in err
    assert (resumed / "metrics.jsonl").read_bytes() == before

    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    kind = load_without_package(straight, tmp_path / "out.npy", env, cwd=tmp_path)
    assert kind.endswith("BloodMNISTPipeline") and np.isfinite(np.load(tmp_path / "out.npy")).all()


def test_phased_student_jumps_where_ddim_samples_and_saves_a_two_step_pipeline(tmp_path, data_root, capsys):
    """--phases K: the training target of every timestep is the start of its phase, which must be exactly where the
    saved K-step trailing DDIM sampler goes next -- else the student is trained for jumps the sampler never takes."""
    sys.path.insert(0, str(REPO))
    from distill_lcm import parse_args, phase_start

    for phases in (2, 5):
        sampler = DDIMScheduler(timestep_spacing="trailing")
        sampler.set_timesteps(phases)
        starts = phase_start(sampler.timesteps, phases).tolist()
        assert starts == [t - 1000 // phases for t in sampler.timesteps.tolist()], (phases, starts)
    grid = torch.arange(1, 51) * 20 - 1
    assert phase_start(grid, 2).unique().tolist() == [-1, 499]  # 19..499 -> clean, 519..999 -> 499

    with pytest.raises(SystemExit) as refused:  # 3 phases would put boundaries off the 50-point grid
        parse_args(["--output_dir", str(tmp_path / "bad"), "--phases", "3"])
    assert refused.value.code == 2 and "divisor of --num_ddim_timesteps" in capsys.readouterr().err

    distill(tmp_path / "phased", data_root, 2, "--phases", "2", "--lr_scheduler", "cosine")
    # A cosine rate is a function of the run's length: resuming it to another length is refused, nothing written.
    before = (tmp_path / "phased" / "metrics.jsonl").read_bytes()
    assert medgen_distill("--output_dir", tmp_path / "phased", "--data_root", data_root, "--phases", "2",
                          "--lr_scheduler", "cosine", "--max_train_steps", "4", "--train_batch_size", "8") == 2
    err = capsys.readouterr().err
    assert "max_train_steps" in err and "Traceback" not in err
    assert (tmp_path / "phased" / "metrics.jsonl").read_bytes() == before
    pipe = BloodMNISTPipeline.from_pretrained(tmp_path / "phased")
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.scheduler.config.timestep_spacing == "trailing"
    assert pipe.config.default_num_inference_steps == 2
    config = json.loads((tmp_path / "phased" / "distill_config.json").read_text())
    # --mixed_precision auto (the default) is resolved as training resolves it, and recorded: bf16 only where
    # this CPU has bf16 instructions (emulated bf16 made a distillation step 3x slower than fp32).
    assert config["phases"] == 2 and config["mixed_precision"] == auto_mixed_precision(on_cpu=True)
    timesteps = []
    pipe.unet.register_forward_hook(lambda module, inputs, output: timesteps.append(int(inputs[1].flatten()[0])))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_labels=[0, 7], generator=torch.Generator().manual_seed(0), output_type="np").images
    assert timesteps == [999, 499] and images.shape == (2, 28, 28, 3) and np.isfinite(images).all()


def test_distilling_a_missing_teacher_is_one_clear_error(tmp_path, data_root, capsys):
    assert medgen_distill("--output_dir", tmp_path / "out", "--teacher", tmp_path / "nowhere", "--data_root",
                          data_root) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_distilling_on_other_data_than_the_teachers_is_one_clear_error(tmp_path, data_root, capsys):
    """A 1-channel dataset for the 3-channel shipped teacher: refused before any training, nothing written."""
    real = np.load(data_root / "bloodmnist.npz")
    gray = tmp_path / "gray.npz"
    np.savez(gray, train_images=real["train_images"][:64].mean(-1).astype(np.uint8),
             train_labels=real["train_labels"][:64])
    assert medgen_distill("--output_dir", tmp_path / "out", "--dataset", gray) == 2
    err = capsys.readouterr().err
    assert "1-channel images but the teacher takes 3" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_fast_note_states_both_models_utility_and_says_when_the_default_is_clearly_better(tmp_path, monkeypatch):
    import medgen_diffusers
    from medgen_diffusers.cli import fast_note

    def model(name, acc_mean, acc_std, ratio):
        folder = tmp_path / name
        folder.mkdir()
        source = medgen_diffusers.FAST_MODEL if name == "fast" else medgen_diffusers.DEFAULT_MODEL
        (folder / "evaluation.json").write_text((Path(source) / "evaluation.json").read_text())
        tstr = {"runs": [{}, {}, {}], "acc_mean": acc_mean, "acc_std": acc_std}
        (folder / "utility.json").write_text(json.dumps({"arms": {"tstr": tstr}, "tstr_ratio": {"acc": ratio}}))
        return str(folder)

    monkeypatch.setattr(medgen_diffusers, "FAST_MODEL", model("fast", 0.890, 0.004, 0.925))
    monkeypatch.setattr(medgen_diffusers, "DEFAULT_MODEL", model("default", 0.922, 0.004, 0.959))
    note = fast_note()
    assert "TSTR/TRTR ACC 0.925 (TSTR 0.890 +- 0.004, 3 seeds) vs the default model's 0.959" in note
    assert "clearly better" in note  # the spreads do not overlap
    (Path(medgen_diffusers.FAST_MODEL) / "utility.json").write_text(json.dumps(
        {"arms": {"tstr": {"runs": [{}, {}, {}], "acc_mean": 0.915, "acc_std": 0.006}}, "tstr_ratio": {"acc": 0.95}}))
    assert "clearly better" not in fast_note()  # within the seeds' spread: no verdict

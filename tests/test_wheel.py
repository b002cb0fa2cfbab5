"""An installed wheel can do everything a checkout can: `medgen train` and `medgen distill` from a wheel in a fresh
venv, run outside the checkout (no train_unconditional.py to fall back on), and both shipped models in it."""

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_medgen_train_and_distill_from_a_wheel_in_a_fresh_venv(tmp_path, data_root):
    run = lambda *cmd, **kw: subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)  # noqa: E731
    # Built from a copy: setuptools' build/ folder in the checkout would keep files the source no longer has.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "runs", "site", "*.egg-info",
                                                                "__pycache__", ".pytest_cache"))
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
                str(source))
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("medgen_diffusers-*.whl"))
    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    assert run(base_python, "-m", "venv", "--without-pip", str(venv)).returncode == 0
    # The dependencies come from this environment (no network); the package itself only from the wheel.
    fresh_site = next(venv.glob("lib/python*/site-packages"))
    (fresh_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    installed = run(sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                    "--no-index", str(wheel))
    assert installed.returncode == 0, installed.stderr[-2000:]
    where = run(str(venv / "bin" / "python"), "-c", "import medgen_diffusers; print(medgen_diffusers.__file__)",
                cwd=tmp_path)
    assert where.stdout.startswith(str(fresh_site)), where.stdout + where.stderr

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MEDMNIST_ROOT": str(data_root)}
    trained = run(str(venv / "bin" / "medgen"), "train", "--output_dir", "run", "--max_train_samples", "64",
                  "--train_batch_size", "32", "--max_train_steps", "2", "--lr_warmup_steps", "1",
                  "--num_sample_images", "0", "--logger", "none", cwd=tmp_path, env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["global_step"] == 2
    distilled = run(str(venv / "bin" / "medgen"), "distill", "--output_dir", "student", "--teacher", "run",
                    "--max_train_steps", "1", "--train_batch_size", "8", "--checkpointing_steps", "1",
                    cwd=tmp_path, env=env)
    assert distilled.returncode == 0, distilled.stderr[-3000:]
    assert (tmp_path / "student" / "model_index.json").is_file()
    # Both shipped models are in the wheel: the 4-step one samples from site-packages.
    fast = run(str(venv / "bin" / "medgen"), "sample", "--fast", "--num-images", "2", "--out", "fast.png",
               cwd=tmp_path, env=env)
    assert fast.returncode == 0 and "the shipped 4-step model" in fast.stdout, fast.stderr[-2000:]
    # Bad input from an installed command: one line, exit 2, nothing written.
    refused = run(str(venv / "bin" / "medgen"), "train", "--output_dir", "run", cwd=tmp_path, env=env)
    assert refused.returncode == 2 and "already holds a run" in refused.stderr and "Traceback" not in refused.stderr

import subprocess
import sys
import time
from pathlib import Path

import PIL.Image
import pytest

from medgen_diffusers.cli import main


def test_data_command_verifies_and_summarises(data_root, capsys):
    assert main(["data", "--root", str(data_root), "--no-download"]) == 0
    out = capsys.readouterr().out
    assert "train: 11959 images (3, 28, 28)" in out and "test: 3421 images" in out
    assert "7=platelet" in out and "7053d0359d879ad8a5505303e11de1dc (verified)" in out


def test_sample_writes_a_grid(trained_run, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["sample", str(trained_run), "--num-images", "6", "--steps", "4", "--class", "platelet",
                 "--guidance-scale", "2", "--out", str(out)]) == 0
    assert PIL.Image.open(out).size == (3 * 112, 2 * 112)  # a figure: 28-px tiles enlarged 4x (nearest-neighbour)


def test_bad_inputs_exit_2_with_one_clear_line(trained_run, tmp_path, capsys):
    assert main(["sample", str(trained_run), "--class", "red cell", "--steps", "2", "--out", str(tmp_path / "x.png")]) == 2
    assert "--class: Unknown class name 'red cell'. Valid names: basophil" in capsys.readouterr().err
    assert main(["data", "--root", str(tmp_path), "--no-download"]) == 2
    assert "bloodmnist.npz was not found" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_console_script_is_installed():
    result = subprocess.run([str(Path(sys.executable).parent / "medgen"), "sample", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--scheduler" in result.stdout


def test_help_answers_without_loading_torch():
    # `medgen train --help` took 8 s (torch, diffusers and accelerate imported first); a user's first command. Timed
    # on the console script, and torch must not be imported at all (a timing alone would pass on a fast machine).
    medgen = str(Path(sys.executable).parent / "medgen")
    for command in ("train", "distill", "sample"):
        started = time.perf_counter()
        result = subprocess.run([medgen, command, "--help"], capture_output=True, text=True)
        seconds = time.perf_counter() - started
        assert result.returncode == 0 and f"usage: medgen {command}" in result.stdout, result.stderr
        assert seconds < 2.0, f"medgen {command} --help took {seconds:.1f} s"
    probe = ("import sys; from medgen_diffusers.cli import main\n"
             "try:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'diffusers', 'accelerate') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip().splitlines()
    assert loaded[-1] == "[]"


def test_every_command_has_help(capsys):
    # In-process (the console script itself is run above): each --help exits 0 with the command's usage.
    for command in ("sample", "evaluate", "audit", "utility", "figures", "card", "push", "data", "app"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0 and "usage: medgen " + command in capsys.readouterr().out


def test_figures_of_a_training_run(trained_run):
    assert main(["figures", str(trained_run), "--steps", "10"]) == 0
    for name, min_width in (("loss_curve.png", 400), ("fid_kid_curves.png", 800), ("progressive.png", 400),
                            ("classes.png", 200)):
        image = PIL.Image.open(trained_run / name)
        assert image.width >= min_width, name


def test_evaluate_a_trained_pipeline(trained_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(trained_run), "--num-samples", "16", "--num-real", "16", "--steps", "4",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "FID64" in printed and "floor (train vs real)" in printed and "seed notebook" in printed
    result = __import__("json").loads(out.read_text())
    assert result["num_generated"] == 16 and result["generation"]["steps"] == 4
    assert result["generation"]["timestep_spacing"] == "trailing"  # the training script's scheduler, recorded
    assert {"standard", "seed", "floor", "per_class"} <= set(result)

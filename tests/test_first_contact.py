"""First contact with small, private data: the walk-through of docs/first-private-data.md run command by command on
488 real BloodMNIST images laid out as a private folder (6 test images a class), and the errors a new user meets
first. Each check failed on the code before this round."""

import contextlib
import io
import json
import os
import re
import shlex
import subprocess

import numpy as np
import pydicom
import pytest
from PIL import Image

from conftest import BIN, REPO, write_own_folder
from medgen_diffusers.cli import main
from medgen_diffusers.data import DataError, load_images
from test_medical import gray_images, write_dicom

# Options that only make a command faster; appended, so they win over the document's (argparse: last one wins).
FASTER = {
    "train": ["--max_train_steps", "6", "--train_batch_size", "16", "--lr_warmup_steps", "1", "--num_sample_images",
              "4", "--sample_inference_steps", "2", "--logger", "none", "--mixed_precision", "no"],
    "evaluate": ["--steps", "2", "--protocols", "standard"],
    "audit": ["--steps", "2", "--spaces", "pixel", "--num-mia", "48"],
    "utility": ["--steps", "2", "--num-train", "32", "--epochs", "1"],
    "sample": ["--steps", "2"],
}


def walkthrough_commands():
    text = (REPO / "docs" / "first-private-data.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [shlex.split(line) for block in blocks for line in block.splitlines() if line.startswith("medgen ")]


@pytest.fixture(scope="module")
def walked(tmp_path_factory, data_root):
    """Every command of the walk-through, in a fresh working directory: (folder, run, captured output per step)."""
    work = tmp_path_factory.mktemp("first")
    write_own_folder(work / "my_cells", data_root, per_split=(("train", 50), ("val", 5), ("test", 6)))
    outputs, here = [], os.getcwd()
    os.chdir(work)  # in-process (the console script itself is tested in test_cli.py), from a fresh directory
    try:
        for command in walkthrough_commands():
            argv = [arg.replace("my_cells", str(work / "my_cells")).replace("runs/cells", str(work / "runs" / "cells"))
                    for arg in command[1:]]
            argv += FASTER.get(argv[0], [])
            said = io.StringIO()
            with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
                code = main(argv)
            assert code == 0, f"{' '.join(command)}:\n{said.getvalue()[-3000:]}"
            outputs.append((argv[0], said.getvalue()))
    finally:
        os.chdir(here)
    return work, work / "runs" / "cells", dict(outputs)


def test_the_walkthrough_runs_and_every_result_lands_in_the_run(walked):
    work, run, said = walked
    assert [c[1] for c in walkthrough_commands()] == ["train", "evaluate", "audit", "utility", "card", "sample", "push"]
    # Training says what it does and where the pipeline went; the card names the command that ran.
    assert "medgen train: 400 training images in 8 classes (50-50 images each)" in said["train"]
    assert f"saved the pipeline to {run}" in said["train"]
    card = (run / "README.md").read_text()
    assert "Trained with `medgen train`" in card
    # evaluate, audit and utility wrote into the run folder (the card read them), nothing into the working directory.
    for name in ("evaluation.json", "audit.json", "utility.json"):
        assert (run / name).is_file() and not (work / name).exists(), name
    assert "Not audited yet" not in card and "TSTR/TRTR ACC ratio" in card and "| this model |" in card
    # The seed notebook's BloodMNIST numbers are no reference for someone's own data.
    assert "| seed notebook" not in card and "seed notebook" not in said["evaluate"]
    # A figure a person can look at: 4 samples of 28 px at 112 px each.
    assert Image.open(run / "samples.png").size == (224, 224)
    assert "as a private repository" in said["push"]


def test_small_classes_are_evaluated_with_the_reason_for_what_is_skipped(walked):
    _, run, said = walked
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["num_real"] == 48 and len(evaluation["per_class"]) == 8  # no crash on 6 images a class
    skipped = [c["standard"].get("prdc_skipped", "") for c in evaluation["per_class"].values()]
    assert all("need at least 7 images on each side" in reason for reason in skipped)
    assert "FID is biased upward at small N" in said["evaluate"] and "about" in said["evaluate"]


def test_the_audit_is_sized_to_the_data_and_says_what_it_cannot_tell(walked):
    _, run, said = walked
    audit = json.loads((run / "audit.json").read_text())
    assert audit["num_synthetic"] == 400 and "as many as the 400 training images" in audit["notes"][0]
    assert "medgen audit: 400 synthetic images, membership on 48 + 48 real images: about" in said["audit"]
    assert "held-out test split has 48 images" in said["audit"]
    low, high = audit["membership_inference"]["auc_ci95"]
    assert high - low > 0.15  # 48 vs 48: the interval is wide, and the verdict says so
    assert audit["verdict"]["membership"].startswith(("cannot tell at this N", "evidence"))
    card = (run / "README.md").read_text()
    assert "ROC AUC (95 % CI)" in card and audit["verdict"]["membership"].split(":")[0] in card


def test_three_patients_are_not_split_one_one_one(tmp_path, data_root):
    gray, _ = gray_images(data_root, 12)
    for patient in range(3):
        for k in range(4):
            write_dicom(tmp_path / "ct" / "cells" / f"p{patient}_{k}.dcm", gray[patient * 4 + k:][:1], f"PAT-{patient}")
    with pytest.raises(DataError, match="needs at least 5 patients .* the data has 3"):
        load_images(str(tmp_path / "ct"), "train", split_by="patient")


def test_the_errors_a_new_user_meets_first(tmp_path, data_root, capsys):
    # A path that does not exist is named as such (it was "Unknown dataset ... pass a MedMNIST 2D flag").
    assert main(["evaluate", "--dataset", "./my_cels/", "--no-floor"]) == 2
    assert "--dataset ./my_cels/: no such file or folder" in capsys.readouterr().err
    # A refused start leaves no empty output folder behind (the next try would be refused for it).
    run = tmp_path / "run"
    assert main(["train", "--output_dir", str(run), "--dataset", "./my_cels/", "--mixed_precision", "no"]) == 2
    assert not run.exists()
    # Mixed sizes name both files by their path below the folder (two files called 0.png in different classes).
    for cls, size in (("a", 28), ("b", 32)):
        (tmp_path / "mixed" / cls).mkdir(parents=True)
        Image.new("RGB", (size, size)).save(tmp_path / "mixed" / cls / "0.png")
    with pytest.raises(DataError, match=r"a/0.png is 28x28, b/0.png is 32x32"):
        load_images(str(tmp_path / "mixed"), "train")
    # A mistyped option: the sub-command's usage and a suggestion.
    with pytest.raises(SystemExit):
        main(["audit", "--num-sample", "5", "--spaces", "pixel", "--num-smaples", "3"])
    err = capsys.readouterr().err
    assert "usage: medgen audit" in err and "--num-smaples (did you mean --num-samples?)" in err
    result = subprocess.run([str(BIN / "medgen"), "train", "--max_steps", "3", "--output_dir", str(run)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "usage: medgen train" in result.stderr
    assert "--max_steps (did you mean --max_train_steps?)" in result.stderr and not run.exists()


def test_a_library_error_is_not_reported_as_bad_input(data_root, capsys):
    """numpy's "kth out of bounds" reached users as `error: ...` (exit 2, as if their input were wrong): the command
    runner now tells an error this package raised (bad input, one line) from one raised inside a library (an
    internal error, with its traceback)."""
    from medgen_diffusers.cli import _run

    assert _run("evaluate", lambda: load_images("bloodmnist", "nosuchsplit", root=data_root)) == 2
    assert "error: Unknown split 'nosuchsplit'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="kth"):
        _run("evaluate", lambda: np.partition(np.arange(6), 6))
    assert "internal error (a bug in medgen-diffusers, not your input" in capsys.readouterr().err

"""Your own data, end to end, with a model that copies it: the audit must flag it (its known positive), every command
takes the data from the run (no --dataset after training), and nothing private is published."""

import json

import pytest
from huggingface_hub import metadata_load
from PIL import Image

from medgen_diffusers.cli import main
from medgen_diffusers.hub import GENERATED_FIGURES, push_operations
from medgen_diffusers.provenance import folder_weights_sha256


def medgen(*args) -> int:
    """The command line, in-process (the console script itself is tested in test_cli.py): its exit code."""
    return main([str(a) for a in args])


def test_audit_flags_a_model_that_copies_its_training_images(memorised_run, tmp_path, monkeypatch):
    run, source = memorised_run
    config = json.loads((run / "run_config.json").read_text())
    assert config["dataset"] == str(source.resolve()) and config["augmentation"] == "none"  # own data: no flips
    # The audit's defaults (copy percentile, Gu ratio, MIA timesteps) as for the shipped model; no --dataset: the
    # run says what it was trained on. From another directory, so a relative path could not be found by luck.
    monkeypatch.chdir(tmp_path)
    # No --out: the result goes into the run folder, where `medgen card` and the app find it (not ./audit.json).
    # At --precision bf16 (the fast path for large models on a CPU): the known positive is still flagged.
    assert medgen("audit", run, "--spaces", "pixel", "--num-samples", "64", "--precision", "bf16") == 0
    assert not (tmp_path / "audit.json").exists()
    audit = json.loads((run / "audit.json").read_text())
    pixel, mia = audit["nearest_neighbours"]["pixel"], audit["membership_inference"]
    assert audit["generation"]["precision"] == "bf16"
    print("memorised model:", pixel, {k: mia[k] for k in ("auc", "tpr_at_1pct_fpr")})
    assert pixel["copy_rate"]["synthetic"] >= 0.5 and pixel["copy_rate"]["test"] <= 0.05  # copies, far above
    assert pixel["memorized_gu"]["synthetic"] >= 0.25 and pixel["memorized_gu"]["test"] == 0.0
    assert mia["auc"] >= 0.9 and mia["num_members"] == 8  # every training image is told from held-out ones
    assert mia["class_counts"]["members"] == mia["class_counts"]["nonmembers"] == [1] * 8
    # The known positive, with its uncertainty: the intervals exclude the baseline, so the verdict is evidence.
    assert pixel["copy_rate_ci95"]["synthetic"][0] > pixel["copy_rate_ci95"]["test"][1]
    assert audit["verdict"]["copying_pixel"].startswith("evidence of copying")
    assert mia["auc_ci95"][0] > 0.5 and audit["verdict"]["membership"].startswith("evidence of membership leakage")
    assert medgen("card", run) == 0
    card = (run / "README.md").read_text()
    assert "**evidence of copying**" in card and "copy rate, pixel space (95 % CI)" in card
    # What was audited, against what: this model's weights, the run's own data (checksum matching training).
    assert audit["provenance"]["weights_sha256"] == folder_weights_sha256(run)
    assert audit["provenance"]["data"]["matches_training_data"] is True
    assert audit["dataset"] == source.name  # a name, not this machine's path
    # The closest-pairs figure shows real training images: none is written for own data unless asked for.
    assert not list(tmp_path.glob("*.png"))


def test_own_folder_sample_evaluate_card_push_without_naming_the_data(memorised_run, tmp_path, capsys):
    run, source = memorised_run
    # sample -> evaluate with no --dataset: the npz records which model made it, and that model's data.
    npz = tmp_path / "synthetic.npz"
    assert medgen("sample", run, "--num-images", "32", "--balanced", "--out", npz) == 0
    assert medgen("evaluate", npz, "--num-samples", "16", "--protocols", "seed", "--no-floor", "--out",
                  tmp_path / "eval.json") == 0
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert evaluation["dataset"] == source.name and evaluation["num_real"] == 160  # the folder's test split
    assert evaluation["provenance"]["weights_sha256"] == folder_weights_sha256(run)
    assert len(evaluation["per_class"]) == 8  # the 16 of a class-sorted file are drawn across all its classes
    # The card is the folder's, not BloodMNIST's, and holds no path of this machine.
    (run / "evaluation.json").write_text((tmp_path / "eval.json").read_text())
    assert medgen("card", run) == 0
    card = (run / "README.md").read_text()
    meta = metadata_load(run / "README.md")
    assert meta["license"] == "other" and "datasets" not in meta and "medmnist" not in meta["tags"]
    assert "Acevedo" not in card and "smears" not in card and str(source.parent) not in card
    assert "| this model |" in card  # its own evaluation (same weights) is shown
    # figures: no real image in anything written to the run folder unless asked for.
    assert medgen("figures", run, "--steps", "5") == 0
    assert Image.open(run / "progressive.png").size[0] < 700  # one panel: generated frames only
    # An audit figure written on purpose into the folder, and a stray picture: push --dry-run lists what is sent.
    assert medgen("audit", run, "--spaces", "pixel", "--num-samples", "8", "--num-mia", "8", "--out",
                  tmp_path / "a.json", "--figure", run / "audit_closest_pairs.png") == 0
    Image.new("RGB", (8, 8)).save(run / "patient_scan.png")
    capsys.readouterr()
    assert medgen("push", run, "someone/cells", "--dry-run") == 0
    said = capsys.readouterr().out.splitlines()
    assert "as a private repository (trained on data that is not a public data set" in said[0]
    listed = [line.strip() for line in said[1:]]
    assert listed == [op.path_in_repo for op in push_operations(run)]
    assert "audit_closest_pairs.png" not in listed and "patient_scan.png" not in listed
    assert {name for name in listed if name.endswith(".png")} <= set(GENERATED_FIGURES)
    assert "unet/diffusion_pytorch_model.safetensors" in listed and "run_config.json" in listed
    sent = {op.path_in_repo: op.path_or_fileobj for op in push_operations(run)}
    assert str(source.parent).encode() not in sent["run_config.json"]  # paths cut to a name in pushed JSON
    assert json.loads(sent["run_config.json"])["dataset"] == source.name


def test_explicit_other_data_is_recorded_and_warned_about(memorised_run, tmp_path, data_root, capsys):
    run, source = memorised_run
    with pytest.warns(UserWarning, match="not about the training data"):
        assert medgen("audit", run, "--dataset", "bloodmnist", "--data-root", data_root, "--spaces", "pixel",
                      "--num-samples", "8", "--num-train", "200", "--num-test", "100", "--num-mia", "8",
                      "--out", tmp_path / "a.json", "--figure", "") == 0
    assert "not the recorded training data" in capsys.readouterr().err
    data = json.loads((tmp_path / "a.json").read_text())["provenance"]["data"]
    assert data["source"] == "bloodmnist" and data["named_explicitly"] and data["matches_training_data"] is False
    # A result is never replaced silently: the same --out again is refused before any work, the file unchanged.
    before = (tmp_path / "a.json").read_bytes()
    assert medgen("audit", run, "--dataset", "bloodmnist", "--out", tmp_path / "a.json") == 2
    error = capsys.readouterr().err
    assert "already exists" in error and "--overwrite" in error
    assert (tmp_path / "a.json").read_bytes() == before


def test_rerunning_into_a_run_folder_is_refused_and_loses_nothing(memorised_run, data_root, capsys):
    run, source = memorised_run
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert medgen("train", "--output_dir", run, "--dataset", source, "--data_root", data_root, "--model_preset", "tiny",
                  "--train_batch_size", "8", "--max_train_steps", "2", "--mixed_precision", "no") == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume_from_checkpoint latest" in err and "--overwrite_output_dir" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    # from_pretrained checks only what it loads: a half-written result or checkpoint file beside it blocks nothing.
    from medgen_diffusers import BloodMNISTPipeline

    (run / "checkpoint-600" / "broken.json").write_text("{ half")
    try:
        assert BloodMNISTPipeline.from_pretrained(run).config.class_names[0] == "basophil"
    finally:
        (run / "checkpoint-600" / "broken.json").unlink()

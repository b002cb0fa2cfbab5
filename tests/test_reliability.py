"""Nothing a user runs overwrites, publishes or loads the wrong thing: one test per defect of the reliability issue,
on real files, real pipelines and the shipped model."""

import filecmp
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from diffusers import DDPMScheduler, UNet2DModel

import diffusers
from medgen_diffusers import DEFAULT_MODEL, BloodMNISTPipeline, class_names, load_medmnist_tensors
from medgen_diffusers.cli import SCHEDULERS, main
from medgen_diffusers.generation import generate_images
from medgen_diffusers.hub import push_operations
from medgen_diffusers.model_card import write_card

BIN = Path(sys.executable).parent
SHIPPED = Path(DEFAULT_MODEL)


def tree_digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture
def saved(conditional_pipe, tmp_path):
    folder = tmp_path / "pipeline"
    conditional_pipe.save_pretrained(folder)
    return folder


# 1. ------------------------------------------------------------------------------------------------------------
def test_commands_without_a_path_never_write_into_the_shipped_model(tmp_path, monkeypatch, capsys):
    before = tree_digest(SHIPPED)
    monkeypatch.chdir(tmp_path)  # in-process (the console script is tested in test_cli): same code, no start-up
    monkeypatch.setenv("MEDGEN_CACHE", str(tmp_path / "cache"))
    run = lambda *args: main(list(args))  # noqa: E731
    assert run("figures", "--steps", "10") == 0
    expected = {"classes.png", "progressive.png", "loss_curve.png"}
    if "eval/fid_val" in (SHIPPED / "metrics.jsonl").read_text():  # FID curves only for a run with evaluations
        expected.add("fid_kid_curves.png")
    assert expected <= {p.name for p in tmp_path.iterdir()}  # the current directory, as documented
    assert run("evaluate", "--num-samples", "16", "--num-real", "32", "--no-floor", "--protocols", "seed") == 0
    result = json.loads((tmp_path / "evaluation.json").read_text())
    # 11. No absolute path of this machine in a result that may be committed or pushed.
    assert not re.search(r'"(/|[A-Za-z]:\\\\)', json.dumps(result)), result["inception"]
    assert result["inception"]["file"] == "default_1.pt"

    for args in (["card", str(SHIPPED)], ["figures", "--out-dir", str(SHIPPED)],
                 ["evaluate", "--out", str(SHIPPED / "evaluation.json")],
                 ["sample", "--out", str(SHIPPED / "x.npz")]):
        capsys.readouterr()
        assert run(*args) == 2 and "shipped model's folder" in capsys.readouterr().err, args
    assert tree_digest(SHIPPED) == before


def test_shipped_artifacts_carry_no_local_paths():
    for path in [*SHIPPED.rglob("*"), *(REPO / "benchmarks" / "results").rglob("*")]:
        if path.suffix in (".json", ".jsonl", ".md"):
            text = path.read_text()
            assert not re.search(r"(/work/|/home/|/root/|/tmp/|site-packages|[A-Za-z]:\\)", text), path


# 2. ------------------------------------------------------------------------------------------------------------
def test_save_pretrained_with_push_to_hub_is_refused_before_anything_happens(conditional_pipe, tmp_path):
    with pytest.raises(ValueError, match="medgen push"):
        conditional_pipe.save_pretrained(tmp_path / "out", push_to_hub=True, repo_id="me/model")
    assert not (tmp_path / "out").exists()


# 3. ------------------------------------------------------------------------------------------------------------
def card_images(card: str):
    return re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", card)


def test_push_sends_every_file_the_card_shows(saved):
    shutil.copy(SHIPPED / "samples.png", saved / "samples.png")  # a trained run's grid: what its card shows
    (saved / "samples").mkdir()
    (saved / "samples" / "step_0000100.png").write_bytes((SHIPPED / "samples.png").read_bytes())
    (saved / "checkpoint-5").mkdir()
    (saved / "checkpoint-5" / "config.json").write_text("{}")
    write_card(saved)
    sent = {op.path_in_repo for op in push_operations(saved)}
    shown = card_images((saved / "README.md").read_text())
    assert shown == ["samples.png"] and set(shown) <= sent
    assert not any(name.startswith(("samples/", "checkpoint-")) for name in sent), sent
    shipped_sent = {op.path_in_repo for op in push_operations(SHIPPED)}
    assert set(card_images((SHIPPED / "README.md").read_text())) <= shipped_sent


# 4. ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_offered_scheduler_keeps_thresholding_on_the_shipped_model(name):
    pipe = BloodMNISTPipeline.from_pretrained()
    pipe.set_progress_bar_config(disable=True)
    # The swap as the CLI does it: from the saved model's own scheduler config.
    pipe.scheduler = getattr(diffusers, SCHEDULERS[name]).from_config(pipe.scheduler.config)
    assert pipe.scheduler.config.thresholding is True and pipe.scheduler.config.sample_max_value == 1.0
    steps = 50 if name == "ddpm" else 10
    x0 = pipe(class_labels=list(range(8)), num_inference_steps=steps, output_type="latent",
              generator=torch.Generator().manual_seed(0)).images
    assert torch.isfinite(x0).all() and x0.abs().max() <= 1.05, (name, x0.abs().max())
    images = (x0 / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.abs(np.diff(images, axis=2)).mean() < 0.2  # smooth cells, not noise


def test_euler_is_not_offered_since_it_cannot_threshold(tmp_path, capsys):
    assert "euler" not in SCHEDULERS
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--scheduler", "euler", "--out", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2 and "invalid choice: 'euler'" in capsys.readouterr().err


# 5. ------------------------------------------------------------------------------------------------------------
def test_sample_and_evaluate_generate_the_same_images_for_the_same_seed(saved, data_root, tmp_path):
    # The saved pipeline has no run_config.json: the real data is named explicitly.
    common = ["--steps", "2", "--seed", "3", "--dataset", "bloodmnist", "--data-root", str(data_root)]
    assert main(["sample", str(saved), "--num-images", "12", "--like-split", "test", "--chunk-size", "5", *common,
                 "--out", str(tmp_path / "s.npz")]) == 0
    assert main(["evaluate", str(saved), "--num-samples", "12", "--split", "test", "--chunk-size", "5", "--num-real",
                 "24", "--no-floor", "--protocols", "seed", *common, "--out", str(tmp_path / "e.json")]) == 0
    with np.load(tmp_path / "s.npz") as data:
        sampled = data["train_images"]
    evaluated = json.loads((tmp_path / "e.json").read_text())["generation"]["images_sha256"]
    assert hashlib.sha256(np.ascontiguousarray(sampled).tobytes()).hexdigest() == evaluated
    # ... and the library call that training-time evaluation, figures and the audit use: the same images again.
    pipe = BloodMNISTPipeline.from_pretrained(saved)
    with np.load(tmp_path / "s.npz") as data:
        labels = data["train_labels"][:, 0].astype(np.int64)
    np.testing.assert_array_equal(generate_images(pipe, 12, labels, 2, seed=3, chunk_size=5, progress=False), sampled)


# 6. ------------------------------------------------------------------------------------------------------------
def test_checkpoints_keep_ema_as_safetensors_and_nothing_is_unpickled(trained_run):
    checkpoint = trained_run / "checkpoint-80"
    assert (checkpoint / "unet_ema" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(checkpoint.glob("custom_checkpoint_*"))  # Accelerate's pickled custom objects
    ema = UNet2DModel.from_pretrained(checkpoint / "unet_ema")
    final = BloodMNISTPipeline.from_pretrained(trained_run).unet  # the saved pipeline holds the EMA weights
    assert all(torch.equal(ema.state_dict()[k], v) for k, v in final.state_dict().items())
    sources = [p for folder in ("medgen_diffusers", "pipelines", "benchmarks", "tests") for p in
               (REPO / folder).rglob("*.py")] + [REPO / "train_unconditional.py"]
    forbidden = ["weights_only=" + "False", "allow_pickle=" + "True", "pickle" + ".load", "torch" + ".load("]
    for path in sources:
        text = path.read_text()
        assert not any(word in text for word in forbidden), path


# 8. ------------------------------------------------------------------------------------------------------------
def test_shipped_pipeline_file_is_the_package_pipeline():
    assert filecmp.cmp(SHIPPED / "pipeline_bloodmnist.py", REPO / "pipelines" / "pipeline_bloodmnist.py",
                       shallow=False)


def test_loading_through_our_class_runs_our_code_without_private_hooks(saved):
    # Only public API is overridden (load_config), so newer diffusers releases keep working (the range is tested
    # by benchmarks/check_diffusers_range.sh); loading through our class gives our class, no remote code.
    assert "_dict_from_json_file" not in vars(BloodMNISTPipeline) and "load_config" in vars(BloodMNISTPipeline)
    assert type(BloodMNISTPipeline.from_pretrained(saved)) is BloodMNISTPipeline


# 9. ------------------------------------------------------------------------------------------------------------
def test_evaluate_says_what_a_non_npz_file_should_be(tmp_path, capsys):
    fake = tmp_path / "images.npz"
    fake.write_bytes(b"these are not arrays")  # numpy's own message for it would talk about pickled data
    assert main(["evaluate", str(fake), "--no-floor"]) == 2
    err = capsys.readouterr().err
    assert "is not an .npz archive" in err and "pickle" not in err
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["evaluate", str(tmp_path / "notes.txt"), "--no-floor"]) == 2
    assert "neither an .npz file nor a folder of images" in capsys.readouterr().err


# 10. -----------------------------------------------------------------------------------------------------------
def test_pipeline_builds_from_its_registered_components(conditional_pipe):
    rebuilt = BloodMNISTPipeline(**conditional_pipe.components)
    # Built from the modules alone, no names were saved to go by: an 8-class UNet is not therefore blood cells.
    assert rebuilt.config.class_names == [f"class_{i}" for i in range(8)]
    assert conditional_pipe.config.class_names == class_names("bloodmnist")  # given names are kept
    torch.manual_seed(0)
    three = UNet2DModel(sample_size=28, in_channels=3, out_channels=3, block_out_channels=(16, 32, 32),
                        layers_per_block=1, down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
                        norm_num_groups=8, num_class_embeds=4)
    pipe = BloodMNISTPipeline(unet=three, scheduler=DDPMScheduler())
    assert pipe.config.class_names == ["class_0", "class_1", "class_2"]
    pipe.set_progress_bar_config(disable=True)
    assert len(pipe(class_labels="class_2", batch_size=2, num_inference_steps=2, output_type="np").images) == 2


# Fault tests -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("broken", ["unet/diffusion_pytorch_model.safetensors", "model_index.json",
                                    "scheduler/scheduler_config.json"])
def test_a_truncated_pipeline_file_is_one_clear_error_naming_it(saved, broken, tmp_path, capsys):
    path = saved / broken
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    before = tree_digest(saved)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*corrupt or truncated"):
        BloodMNISTPipeline.from_pretrained(saved)
    assert main(["sample", str(saved), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0]
    assert tree_digest(saved) == before and not (tmp_path / "x.png").exists()


def test_guidance_moves_samples_toward_the_asked_class(data_root):
    """A linear classifier fit on real train pixels recognises guided samples far better than unguided ones. Were the
    conditional and null branches swapped, guidance would push away from the class and this accuracy would fall."""
    train = load_medmnist_tensors("bloodmnist", "train", root=data_root)
    x, y = train.images[:4000].float().div(255).flatten(1), train.labels[:4000]
    torch.manual_seed(0)
    classifier = torch.nn.Linear(x.shape[1], 8)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3)
    for _ in range(150):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(classifier(x), y).backward()
        optimizer.step()
    pipe = BloodMNISTPipeline.from_pretrained()
    labels = np.repeat(np.arange(8), 5)

    def accuracy(guidance_scale):
        images = generate_images(pipe, len(labels), labels, 10, guidance_scale, seed=0, progress=False)
        logits = classifier(torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).flatten(1))
        return float((logits.argmax(1).numpy() == labels).mean())

    plain, guided = accuracy(1.0), accuracy(3.0)
    assert guided >= 0.8 and guided >= plain + 0.15, (plain, guided)

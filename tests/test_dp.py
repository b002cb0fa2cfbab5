"""Differentially private training (privacy.py, train_unconditional.py --dp_epsilon): on real BloodMNIST pixels with
tiny models -- the run end to end, exact resume, epsilon equal to Opacus' accountant, per-unit clipping (image and
patient), noise of the stated std, noise multiplicity at no epsilon cost, and the refusals."""

import json
import shutil

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

import train_unconditional
from medgen_diffusers import BloodMNISTPipeline
from medgen_diffusers.hub import push_operations
from medgen_diffusers.privacy import DP_SECRET_FILE, PrivacyError, PrivateStep, plan_privacy, privacy_units
from medgen_diffusers.provenance import folder_weights_sha256

from conftest import read_metrics, small_unet

DP_ARGS = ["--max_train_samples", "48", "--dp_epsilon", "8", "--dp_batch_size", "8", "--dp_noise_multiplicity", "2",
           "--train_batch_size", "8", "--max_train_steps", "4", "--checkpointing_steps", "2", "--lr_warmup_steps", "1",
           "--num_sample_images", "2", "--sample_inference_steps", "2", "--logger", "none",
           "--save_images_steps", "2"]  # a sample grid on a checkpoint step must not shift the resumed RNG


def train(output_dir, data_root, *extra):
    train_unconditional.main(["--output_dir", str(output_dir), "--data_root", str(data_root), "--model_preset", "tiny",
                              *DP_ARGS, *extra])


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory, data_root):
    run = tmp_path_factory.mktemp("dp") / "run"
    train(run, data_root)
    return run


def test_dp_run_reports_the_accountants_epsilon_and_resumes_exactly(dp_run, data_root, tmp_path):
    config = json.loads((dp_run / "run_config.json").read_text())["privacy"]
    summary = json.loads((dp_run / "train_summary.json").read_text())["privacy"]
    # 48 images, expected 8 per step: q = 1/6; delta = the largest power of ten <= min(1e-5, 1/(10 * 48)) -- 1e-3
    # before, which let N * delta reach 0.05 here (0.1 at N = 10).
    assert (config["unit"], config["num_units"], config["sample_rate"], config["delta"]) == ("image", 48, 8 / 48, 1e-5)
    assert "N x delta = 0.00048" in config["delta_meaning"]
    # BloodMNIST names no patients: the unit is one image, said in the log and on the card (a smear's cells are one
    # person's: k cells -> k x epsilon).
    assert "names no patients, so the privacy unit is one image" in config["unit_note"]
    # The reported epsilon is Opacus' RDP accountant's for the recorded (sigma, q, steps), and within the target.
    accountant = RDPAccountant()
    accountant.history = [(config["noise_multiplier"], config["sample_rate"], summary["steps"])]
    expected = accountant.get_epsilon(delta=config["delta"])
    assert summary["steps"] == 4 and summary["epsilon"] == pytest.approx(expected, rel=0.01)
    assert 0.98 * 8 <= summary["epsilon"] <= 8  # the noise was calibrated to the target, not above it
    # Noise multiplicity costs no epsilon: the same (sigma, q, steps) as with one draw per image.
    one_draw = plan_privacy(8, 48, 8, 4, 1.0, noise_multiplicity=1)
    assert one_draw.noise_multiplier == config["noise_multiplier"] and config["noise_multiplicity"] == 2
    assert read_metrics(dp_run)[-1]["epsilon"] == pytest.approx(summary["epsilon"])
    card = (dp_run / "README.md").read_text()
    assert "## Differential privacy" in card and f"**{summary['epsilon']:.3f}**" in card and "one image" in card
    for not_covered in ("class names and the number of images per class", "intensity window", "training loss",
                        "The unit is one image", "| units in the training data | 48 |"):
        assert not_covered in card
    # The loss curve is a statistic of the private images: a DP model's push leaves it out.
    (dp_run / "loss_curve.png").write_bytes((dp_run / "samples.png").read_bytes())
    sent = {op.path_in_repo for op in push_operations(dp_run)}
    assert "samples.png" in sent and "loss_curve.png" not in sent and "metrics.jsonl" not in sent

    # A kill after checkpoint-2: the folder as it was then. Resuming gives the uninterrupted run's weights and
    # accountant exactly (the units of step s come from (seed, s); noise and RNG states from the checkpoint).
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copytree(dp_run / "checkpoint-2", killed / "checkpoint-2")
    shutil.copy(dp_run / "run_config.json", killed)
    train(killed, data_root, "--resume_from_checkpoint", "latest")
    assert folder_weights_sha256(killed) == folder_weights_sha256(dp_run)
    assert json.loads((killed / "train_summary.json").read_text())["privacy"] == summary

    # The noise and the Poisson draws come from a secret, not from the published --seed: the same command again
    # gives other weights, and the secret stands in no file outside the checkpoint folders (which are never pushed).
    again = tmp_path / "again"
    train(again, data_root)
    assert folder_weights_sha256(again) != folder_weights_sha256(dp_run)
    secret = json.loads((dp_run / "checkpoint-4" / DP_SECRET_FILE).read_text())["secret"]
    assert len(secret) > 30 and json.loads((again / "checkpoint-4" / DP_SECRET_FILE).read_text())["secret"] != secret
    published = [p for p in dp_run.rglob("*") if p.is_file() and not p.relative_to(dp_run).parts[0].startswith(
        "checkpoint-")]
    assert len(published) > 5 and not any(secret.encode() in p.read_bytes() for p in published)
    assert not any(op.path_in_repo.startswith("checkpoint-") for op in push_operations(dp_run))
    assert "secret" in (dp_run / "README.md").read_text()  # the card says where the noise came from

    # Resuming with settings that change the noise would mix two guarantees: refused, nothing written.
    before = sorted(p.name for p in killed.iterdir())
    with pytest.raises(PrivacyError, match="noise multiplier"):
        train(killed, data_root, "--resume_from_checkpoint", "checkpoint-2".join([str(killed) + "/", ""]),
              "--dp_epsilon", "4")
    assert sorted(p.name for p in killed.iterdir()) == before


def test_a_student_of_a_dp_teacher_does_not_inherit_its_guarantee(dp_run, data_root, tmp_path):
    """Distillation noises the real training images without DP-SGD: the student's config and card must not carry
    the teacher's epsilon (the teacher's privacy block used to be copied into it)."""
    from test_distill import distill

    distill(tmp_path / "student", data_root, 1, "--teacher", str(dp_run), "--mixed_precision", "no")
    config = json.loads((tmp_path / "student" / "run_config.json").read_text())
    assert "privacy" not in config and "not differentially private" in config["teacher_privacy"]
    assert "Not trained with differential privacy" in (tmp_path / "student" / "README.md").read_text()


def test_public_prior_fine_tune_trains_only_the_chosen_layers(dp_run, data_root, tmp_path):
    tuned = tmp_path / "tuned"
    # dp_run saw these very images: it is no public prior, and epsilon would not cover what it learned of them.
    with pytest.raises(PrivacyError, match="is not a public prior: it was trained on data with the same checksum"):
        train(tuned, data_root, "--init_from", str(dp_run), "--max_train_steps", "2")
    assert not (tuned / "checkpoint-2").exists()
    train(tuned, data_root, "--init_from", str(dp_run), "--finetune_layers", "decoder", "--max_train_steps", "2",
          "--no-use_ema", "--learning_rate", "1e-2", "--allow_prior_on_private_data", "--overwrite_output_dir")
    prior = BloodMNISTPipeline.from_pretrained(dp_run).unet.state_dict()
    after = BloodMNISTPipeline.from_pretrained(tuned).unet.state_dict()
    changed = {name for name in prior if not torch.equal(prior[name], after[name])}
    assert changed and all(n.startswith(("up_blocks.", "conv_norm_out.", "conv_out.", "time_embedding.",
                                         "class_embedding.")) for n in changed)
    assert any(n.startswith("up_blocks.") for n in changed)
    assert not any(n.startswith(("down_blocks.", "mid_block.", "conv_in.")) for n in changed)
    config = json.loads((tuned / "run_config.json").read_text())
    assert config["privacy"]["init_from"] == str(dp_run) and config["privacy"]["finetune_layers"] == "decoder"
    assert config["num_trainable_parameters"] < config["num_parameters"]
    assert "same checksum" in config["privacy"]["prior_overlap"]
    assert "which is NOT a public prior" in (tuned / "README.md").read_text()


def make_step(data_root, groups, sigma, clip, multiplicity, expected_batch=4):
    """A PrivateStep over 12 real images with a deterministic per-row loss (no random noise or timesteps)."""
    with np.load(data_root / "bloodmnist.npz") as npz:
        images = torch.from_numpy(npz["train_images"][:12]).permute(0, 3, 1, 2).float() / 127.5 - 1
    unet = small_unet(False)
    optimizer = torch.optim.SGD(unet.parameters(), lr=0.0)  # the weights stay, so steps can be compared
    unit, unit_of_image = privacy_units("auto", groups, 12, "test data")
    plan = plan_privacy(10, int(unit_of_image.max()) + 1, expected_batch, 10, clip, multiplicity, unit)
    plan.noise_multiplier = sigma
    private = PrivateStep(unet, optimizer, plan, unit_of_image, max_rows=5, secret=0)
    private.optimizer.noise_multiplier = sigma
    grads = []
    private.optimizer.attach_step_hook(lambda opt: grads.append(torch.cat([p.grad.flatten() for p in opt.params])))
    timesteps = torch.arange(12) * 37 % 1000

    def row_loss(model, rows):
        return ((model(images[rows], timesteps[rows]).sample - images[rows].flip(-1)) ** 2).mean(dim=(1, 2, 3))

    def summed_gradient(units):  # the clipped sum before it is divided by the expected batch
        private.step(0, row_loss, torch.tensor(units, dtype=torch.long))
        return grads[-1] * expected_batch

    return private, summed_gradient


def test_clipping_bounds_what_one_patient_adds(data_root):
    # 12 real images of 4 patients (3 each). Sensitivity of DP-SGD: adding one unit to a step's batch changes the
    # clipped sum by at most C -- for a patient with 3 images and 3 noise draws each (9 rows, split across physical
    # batches of 5 rows), not 3C or 9C. C is small, so every unit's gradient is clipped and the change is C exactly.
    groups = np.repeat(np.array(["p-a", "p-b", "p-c", "p-d"]), 3)
    private, summed = make_step(data_root, groups, sigma=0.0, clip=0.01, multiplicity=3, expected_batch=2)
    assert [len(rows) for rows, _ in private.physical_batches(torch.tensor([0, 1]))] == [9, 9]  # one patient each
    without, with_d = summed([0, 1, 2]), summed([0, 1, 2, 3])
    assert torch.linalg.vector_norm(with_d - without).item() == pytest.approx(0.01, rel=1e-3)
    assert torch.linalg.vector_norm(summed([3])).item() == pytest.approx(0.01, rel=1e-3)
    # The same images as 12 units of one image: one patient's 3 images now add up to 3C.
    private, summed = make_step(data_root, None, sigma=0.0, clip=0.01, multiplicity=3)
    added = torch.linalg.vector_norm(summed(list(range(12))) - summed(list(range(9)))).item()
    assert 0.015 < added <= 0.03 + 1e-6


def test_noise_has_the_stated_std(data_root):
    private, summed = make_step(data_root, None, sigma=2.0, clip=0.5, multiplicity=1)
    noise = summed([]) / 4  # an empty draw: the update is pure noise, N(0, (sigma C / B)^2) per coordinate
    assert noise.numel() > 100_000
    assert noise.std().item() == pytest.approx(2.0 * 0.5 / 4, rel=0.02)
    assert abs(noise.mean().item()) < 0.01


def test_settings_that_cannot_give_the_guarantee_are_refused(data_root, tmp_path):
    with pytest.raises(PrivacyError, match="needs noise multiplier .* above 10"):
        plan_privacy(0.1, 1000, 100, 100_000, 1.0)
    with pytest.raises(PrivacyError, match="too few for an expected batch of 64"):
        plan_privacy(10, 100, 64, 10, 1.0)
    with pytest.raises(PrivacyError, match=r"must be in \(0, 1/N\)"):
        plan_privacy(10, 100, 10, 10, 1.0, delta=0.05)
    with pytest.raises(PrivacyError, match="needs to know each image's patient"):
        privacy_units("patient", None, 10, "bloodmnist")
    for extra, message in [(["--gradient_accumulation_steps", "2"], "gradient_accumulation_steps is not used"),
                           (["--mixed_precision", "bf16"], "must be 'no' with --dp_epsilon")]:
        with pytest.raises(SystemExit):
            train_unconditional.parse_args(["--output_dir", str(tmp_path), "--dp_epsilon", "1", *extra])
    with pytest.raises(SystemExit):
        train_unconditional.parse_args(["--output_dir", str(tmp_path), "--dp_delta", "1e-6"])
    # Refused before training, with the numbers, and nothing written.
    with pytest.raises(PrivacyError, match="48 images are too few"):
        train(tmp_path / "run", data_root, "--dp_batch_size", "32")
    assert not (tmp_path / "run" / "checkpoint-2").exists()

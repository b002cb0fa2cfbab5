"""`medgen audit` on the shipped model and real BloodMNIST: copy detection that finds real copies, membership
inference, the figure, and clear errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medgen_diffusers import BloodMNISTPipeline, load_medmnist_tensors
from medgen_diffusers.cli import main
from medgen_diffusers.data import DataSource
from medgen_diffusers.generation import GenerationError
from medgen_diffusers.audit import (AuditError, auc_ci, copy_statistics, denoising_losses, proportion_ci, roc_auc,
                                    run_audit)


def pixels(data, count, offset=0):
    images = data.images[offset:offset + count].permute(0, 2, 3, 1).numpy()
    return images, images.reshape(len(images), -1).astype(np.float32) / 255


def test_copies_of_training_images_are_caught_and_held_out_images_are_not(data_root):
    train = load_medmnist_tensors("bloodmnist", "train", root=data_root)
    test = load_medmnist_tensors("bloodmnist", "test", root=data_root)
    _, train_vectors = pixels(train, 3000)
    _, test_vectors = pixels(test, 400)
    copies = train_vectors[:40] + np.random.default_rng(0).normal(0, 0.002, train_vectors[:40].shape)  # re-encoded
    stats = copy_statistics(copies.astype(np.float32), train_vectors, test_vectors)
    assert stats["copy_rate"]["synthetic"] == 1.0 and stats["memorized_gu"]["synthetic"] == 1.0
    held_out = copy_statistics(test_vectors[:200], train_vectors, test_vectors[200:])
    assert held_out["copy_rate"]["synthetic"] < 0.05 and held_out["memorized_gu"]["synthetic"] < 0.05
    assert stats["median_nn_distance"]["synthetic"] < 0.1 < held_out["median_nn_distance"]["synthetic"]


def test_nearest_neighbours_in_blocks_are_exact(data_root):
    """The reference set is scanned in blocks (memory: one block, whatever the train size): the same two nearest
    distances and the same nearest index as one full distance matrix."""
    from medgen_diffusers.audit import nearest_two, pixel_vectors

    train = load_medmnist_tensors("bloodmnist", "train", root=data_root)
    refs = pixel_vectors(train.images, np.arange(300))
    queries = pixel_vectors(train.images, np.arange(300, 340))
    whole = torch.cdist(torch.from_numpy(queries), torch.from_numpy(refs)).topk(2, dim=1, largest=False)
    d1, d2, nearest = nearest_two(queries, refs, batch_size=16, ref_batch=37)
    np.testing.assert_allclose(d1, whole.values[:, 0].numpy(), rtol=1e-5)
    np.testing.assert_allclose(d2, whole.values[:, 1].numpy(), rtol=1e-5)
    np.testing.assert_array_equal(nearest, whole.indices[:, 0].numpy())
    # Images larger than PIXEL_SIDE are compared area-downsampled: 28 px -> 14 px here, as 256 -> 64 would be.
    import medgen_diffusers.audit as audit

    small = audit.PIXEL_SIDE
    try:
        audit.PIXEL_SIDE = 14
        assert pixel_vectors(train.images, np.arange(3)).shape == (3, 3 * 14 * 14)
    finally:
        audit.PIXEL_SIDE = small


def test_roc_auc_and_tpr():
    assert roc_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0]))["auc"] == 1.0
    assert roc_auc(np.array([1.0, 2.0]), np.array([3.0, 4.0]))["auc"] == 0.0
    assert roc_auc(np.array([1.0, 2.0]), np.array([1.0, 2.0]))["auc"] == 0.5
    scores = np.random.default_rng(0).normal(size=(2, 5000))
    result = roc_auc(scores[0] + 10, scores[1])
    assert result["auc"] == 1.0 and result["tpr_at_1pct_fpr"] == 1.0 and result["auc_ci95"] == [1.0, 1.0]


def test_intervals_are_delong_and_clopper_pearson():
    """The AUC's 95 % interval is DeLong's (checked against the pairwise definition written out here); a rate's is
    the exact binomial one (Clopper-Pearson: 0 of 12 has upper bound 1 - 0.025^(1/12))."""
    from scipy.stats import norm

    rng = np.random.default_rng(1)
    members, nonmembers = rng.normal(0.2, 1, 160), rng.normal(0, 1, 150)
    psi = (members[:, None] > nonmembers[None]) + 0.5 * (members[:, None] == nonmembers[None])
    v10, v01 = psi.mean(1), psi.mean(0)
    se = np.sqrt(v10.var(ddof=1) / 160 + v01.var(ddof=1) / 150)
    expected = [psi.mean() - norm.ppf(0.975) * se, psi.mean() + norm.ppf(0.975) * se]
    np.testing.assert_allclose(auc_ci(members, nonmembers), expected, rtol=1e-12)
    assert 0.025 < se < 0.04  # ~0.03 at 160 vs 150: why 0.508 there cannot be told from chance
    assert proportion_ci(0, 12)[1] == pytest.approx(1 - 0.025 ** (1 / 12)) and proportion_ci(0, 12)[0] == 0.0
    low, high = proportion_ci(40, 1000)
    assert low < 0.04 < high and high - low < 0.03


def test_audit_of_the_shipped_model_small(data_root, tmp_path):
    pipe = BloodMNISTPipeline.from_pretrained()
    train = load_medmnist_tensors("bloodmnist", "train", root=data_root)
    images = train.images[:6].permute(0, 2, 3, 1).numpy()
    labels = train.labels[:6].numpy()
    first, again = denoising_losses(pipe, images, labels), denoising_losses(pipe, images, labels)
    np.testing.assert_array_equal(first, again)  # fixed noise: the same image, the same loss
    # --precision bf16: the UNet's passes under autocast (not the same numbers), within a percent or two of fp32,
    # and the UNet's memory layout is given back (a later fp32 pass is bit-identical again).
    fast = denoising_losses(pipe, images, labels, precision="bf16")
    assert not np.array_equal(fast, first) and np.allclose(fast, first, rtol=0.03)
    assert pipe.unet.conv_in.weight.is_contiguous()
    np.testing.assert_array_equal(denoising_losses(pipe, images, labels), first)
    with pytest.raises(GenerationError, match="precision 'fp16': choose one of fp32, bf16"):
        denoising_losses(pipe, images, labels, precision="fp16")
    result = run_audit(pipe, DataSource("bloodmnist", str(data_root)), num_samples=16, num_train=500, num_test=120,
                       num_mia=60, spaces=("pixel",), seed=0, figure=tmp_path / "pairs.png", progress=False)
    pixel = result["nearest_neighbours"]["pixel"]
    # The shipped model copies nothing: none of its 16 images is closer to a training image than held-out real ones
    # are (the memorising model of test_privacy.py scores ~0.8 with these settings), and Gu's criterion is silent.
    assert pixel["copy_rate"]["synthetic"] == 0.0 and pixel["memorized_gu"]["synthetic"] == 0.0
    assert pixel["median_nn_distance"]["synthetic"] > 1.0  # the shipped model does not reproduce train images
    mia = result["membership_inference"]
    assert mia["num_members"] == mia["num_nonmembers"] == 60 and abs(mia["auc"] - 0.5) < 0.2
    # 60 vs 60 cannot rule out a leak of a few AUC points: the verdict says so instead of "nothing learned".
    assert mia["auc_ci95"][1] - mia["auc_ci95"][0] > 0.15
    assert result["verdict"]["membership"].startswith("cannot tell at this N")
    # Members and non-members are drawn class-matched, so the attack cannot tell them apart by class alone.
    assert mia["class_counts"]["members"] == mia["class_counts"]["nonmembers"]
    assert Image.open(tmp_path / "pairs.png").size[0] > 500


def test_audit_bad_inputs_are_clear_errors(data_root, tmp_path, conditional_pipe, capsys):
    with pytest.raises(AuditError, match=r"--num-train 20000 but only 11959"):
        run_audit(conditional_pipe, DataSource("bloodmnist", str(data_root)), num_samples=4, num_train=20000,
                  progress=False)
    gray = tmp_path / "gray"
    for split in ("train", "test"):
        (gray / split / "a").mkdir(parents=True)
        for i in range(4):
            Image.new("L", (28, 28), 10 * i).save(gray / split / "a" / f"{i}.png")
    with pytest.raises(AuditError, match="3-channel images but .* has 1 channels"):
        run_audit(conditional_pipe, str(gray), num_samples=4, progress=False)
    assert main(["audit", "--num-samples", "4", "--num-mia", "99999", "--data-root", str(data_root), "--out",
                 str(tmp_path / "a.json")]) == 2
    assert "--num-mia 99999" in capsys.readouterr().err
    assert not (tmp_path / "a.json").exists()


def test_utility_protocol_small(data_root):
    """The TSTR/augmentation protocol end to end at toy scale (real ResNet-18s, real test split); the official
    medmnist.Evaluator and the metric functions on our copy of the labels agree."""
    import torch

    from medgen_diffusers.utility import UtilityError, medmnist_resnet18, metrics_from_scores, run_utility

    model = medmnist_resnet18(3, 8)
    assert model.conv1.stride == (1, 1) and isinstance(model.maxpool, torch.nn.Identity)
    pipe = BloodMNISTPipeline.from_pretrained()
    # A train split above the cap is subsampled (seeded), with the numbers recorded: bounded memory at large N.
    result = run_utility(pipe, DataSource("bloodmnist", str(data_root)), max_train=96, fractions=(0.01,), seeds=(0,),
                         epochs=1, num_inference_steps=4, progress=False, num_added=32, num_test=160)
    assert set(result["arms"]) == {"trtr", "tstr", "real_0.01", "real_0.01+syn"}
    assert result["num_train"] == 96 and result["num_train_available"] == 11959
    assert result["arms"]["trtr"]["runs"][0]["num_images"] == 96
    counts = np.bincount(load_medmnist_tensors("bloodmnist", "train", root=data_root).labels.numpy())
    few = int(sum(max(1, round(0.01 * c)) for c in counts))
    assert result["arms"]["real_0.01"]["runs"][0]["num_images"] == few
    assert result["arms"]["real_0.01+syn"]["runs"][0]["num_images"] == few + 32
    assert result["arms"]["tstr"]["runs"][0]["num_images"] == 96
    assert result["classifier_steps"] == 1 and result["split"] == "test"  # 1 epoch of N=96 at batch 128, every arm
    for bad, message in ((dict(arms=["tstr"]), "always with trtr and tstr"),
                         (dict(arms=["trtr", "tstr", "real_0.5"]), "choose among"),
                         (dict(split="train"), "score on 'test'")):
        with pytest.raises(UtilityError, match=message):  # refused before any image is generated
            run_utility(pipe, DataSource("bloodmnist", str(data_root)), num_train=96, fractions=(0.01,), **bad)
    from medmnist import Evaluator

    labels = load_medmnist_tensors("bloodmnist", "test", root=data_root).labels.numpy()
    scores = np.random.default_rng(0).dirichlet(np.ones(8), len(labels))
    scores[np.arange(len(labels))[::2], labels[::2]] += 1  # half of them right: ACC well above chance
    official = metrics_from_scores(scores, labels, Evaluator("bloodmnist", "test", root=str(data_root)))
    assert official == metrics_from_scores(scores, labels) and official["acc"] > 0.5


def test_utility_seeds_run_apart_merge_into_the_run_with_all_seeds(data_root, tmp_path, capsys):
    """Seeds run in separate processes (`--seeds 1`) and merged (`--merge`) give the very result of one run with
    every seed: the same classifiers, means and ratios; files of different protocols or repeated seeds are refused."""
    import json

    from medgen_diffusers.utility import UtilityError, merge_utility, run_utility

    pipe = BloodMNISTPipeline.from_pretrained()
    small = dict(num_train=64, fractions=(), epochs=1, num_inference_steps=2, progress=False, num_test=64,
                 arms=["trtr", "tstr"])
    blood = DataSource("bloodmnist", str(data_root))
    both = run_utility(pipe, blood, seeds=(0, 1), **small)
    apart = [run_utility(pipe, blood, seeds=(seed,), **small) for seed in (1, 0)]
    for part, seed in zip(apart, (1, 0)):
        json.dump(part, open(tmp_path / f"seed{seed}.json", "w"))
    out = tmp_path / "merged.json"
    assert main(["utility", "--merge", str(tmp_path / "seed0.json"), str(tmp_path / "seed1.json"), "--out",
                 str(out)]) == 0
    merged = json.loads(out.read_text())
    assert merged["seeds"] == [0, 1] and merged["arms"]["tstr"]["runs"] == both["arms"]["tstr"]["runs"]
    for key in ("tstr_ratio", "classifier_steps", "generation"):
        assert merged[key] == both[key]
    assert merged["arms"]["trtr"]["acc_std"] == both["arms"]["trtr"]["acc_std"]
    with pytest.raises(UtilityError, match=r"seed\(s\) \[1\] in more than one file"):
        merge_utility([both, apart[0]])
    other = {**apart[0], "epochs": 2, "classifier_steps": 2}  # what `--epochs 2 --seeds 1` records
    with pytest.raises(UtilityError, match=r"differ in \['epochs', 'classifier_steps'\]"):
        merge_utility([both, other])
    before = (tmp_path / "seed0.json").read_bytes()
    capsys.readouterr()
    assert main(["utility", "--merge", str(tmp_path / "seed0.json"), str(tmp_path / "seed1.json"), "--out",
                 str(tmp_path / "seed0.json")]) == 2
    assert "is one of the --merge inputs" in capsys.readouterr().err
    assert (tmp_path / "seed0.json").read_bytes() == before  # nothing lost
    assert main(["utility", "--seeds", "1,1", "--out", str(tmp_path / "x.json")]) == 2
    assert "--seeds '1,1': give distinct integers" in capsys.readouterr().err


def test_card_shows_utility_and_privacy_once_audited(conditional_pipe, tmp_path):
    from medgen_diffusers.model_card import write_card
    from medgen_diffusers.provenance import folder_weights_sha256

    folder = tmp_path / "pipe"
    conditional_pipe.save_pretrained(folder)
    assert "Not audited yet" in write_card(folder).read_text()
    mine = {"weights_sha256": folder_weights_sha256(folder)}
    stats = {"copy_rate": {"synthetic": 0.0123, "test": 0.0099}, "memorized_gu": {"synthetic": 0.0, "test": 0.0015},
             "median_nn_distance": {"synthetic": 5.09, "test": 5.21}}
    audit = {"num_synthetic": 1000, "num_train": 11959, "num_test": 3421, "nearest_neighbours": {"pixel": stats},
             "membership_inference": {"auc": 0.5151, "tpr_at_1pct_fpr": 0.008}, "provenance": mine}
    (folder / "audit.json").write_text(json.dumps(audit))
    card = write_card(folder).read_text()
    assert "## Utility and privacy" in card and "| copy rate, pixel space | 0.0123 | 0.0099 |" in card
    assert "ROC AUC | 0.515" in card and str(tmp_path) not in card  # no local path in the usage snippets
    assert "TSTR/TRTR ACC ratio" not in card  # no utility run yet: no utility claim
    run = lambda seed, acc: {"seed": seed, "num_images": 100, "acc": acc, "auc": 0.99}  # noqa: E731
    arms = {"trtr": [run(0, 0.96), run(1, 0.962)], "tstr": [run(0, 0.92), run(1, 0.924)],
            "real_0.01": [run(0, 0.70), run(1, 0.71)], "real_0.01+syn": [run(0, 0.905), run(1, 0.907)]}
    from medgen_diffusers.utility import _summarize

    utility = _summarize({"dataset": "bloodmnist", "split": "test", "num_train": 100, "classifier_steps": 10,
                          "fractions": [0.01], "num_synthetic_added": 100}, arms)
    utility.update(device="NVIDIA H200, torch 2.14", provenance=mine)
    (folder / "utility.json").write_text(json.dumps(utility))
    card = write_card(folder).read_text()
    assert f"TSTR/TRTR ACC ratio **{0.922 / 0.961:.3f}**" in card and "| real_0.01+syn | 0.906 ± 0.001 |" in card
    assert "1% real: +0.201" in card and "NVIDIA H200" in card
    # A one-seed headline run (trtr and tstr only): no "± 0.000", no legend for augmentation arms it does not have.
    one = _summarize({"dataset": "bloodmnist", "split": "test", "num_train": 100, "classifier_steps": 10,
                      "fractions": []}, {"trtr": [run(0, 0.96)], "tstr": [run(0, 0.92)]})
    (folder / "utility.json").write_text(json.dumps({**one, "provenance": mine}))
    card = write_card(folder).read_text()
    assert "1 seed, scored" in card and "| tstr | 0.920 | 0.990 |" in card and "real_f =" not in card
    # Results of other weights are not this model's: they leave the card.
    (folder / "utility.json").write_text(json.dumps({**one, "provenance": {"weights_sha256": "f" * 64}}))
    assert "TSTR/TRTR" not in write_card(folder).read_text()


def test_shipped_utility_is_the_merge_of_its_committed_seed_runs():
    """The shipped model's 3-seed utility was run one seed per CPU process; the committed per-seed files merge into
    exactly the numbers the package (and its card) ship."""
    import json

    from medgen_diffusers import DEFAULT_MODEL
    from medgen_diffusers.utility import merge_utility

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "utility"
    merged = merge_utility([json.loads((results / f"round2_seed{s}_test.json").read_text()) for s in (0, 1, 2)])
    shipped = json.loads((Path(DEFAULT_MODEL) / "utility.json").read_text())
    assert shipped["seeds"] == [0, 1, 2] and shipped["arms"] == merged["arms"]
    assert shipped["tstr_ratio"] == merged["tstr_ratio"]

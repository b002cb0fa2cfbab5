"""FID/KID with the real FID Inception network on real BloodMNIST images, checked against clean-fid and torchmetrics."""

import numpy as np
import pytest
import torch
from cleanfid.fid import get_folder_features, kernel_distance
from cleanfid.inception_torchscript import InceptionV3W
from PIL import Image

from medgen_diffusers import evaluation
from medgen_diffusers import inception as inception_module
from medgen_diffusers.data import DataSource, load_medmnist_tensors
from medgen_diffusers.evaluation import evaluate_images
from medgen_diffusers.scoring import read_images
from medgen_diffusers.inception import EvaluationError, InceptionFeatures

N = 24  # images per side: enough for non-degenerate statistics, ~10 s of CPU Inception per protocol


@pytest.fixture(scope="module")
def inception():
    return InceptionFeatures(batch_size=32)


@pytest.fixture(scope="module")
def real_sets(data_root):
    """N real test images and N real train images, uint8 (N, 28, 28, 3), with their labels."""
    test = load_medmnist_tensors("bloodmnist", "test", root=data_root)
    train = load_medmnist_tensors("bloodmnist", "train", root=data_root)
    as_nhwc = lambda data: data.images[:N].numpy().transpose(0, 2, 3, 1).copy()
    return as_nhwc(test), test.labels[:N].numpy(), as_nhwc(train), train.labels[:N].numpy()


def write_folder(images, folder):
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return folder


def cleanfid_extractor(inception):
    """clean-fid's own InceptionV3W (its forward: (x - 128) / 128 -> layers) around the same TorchScript network;
    built by hand only because clean-fid's constructor insists on downloading NVIDIA's file."""
    model = InceptionV3W.__new__(InceptionV3W)
    torch.nn.Module.__init__(model)
    model.layers, model.resize_inside = inception.layers, False
    return model.eval()


def test_standard_fid_and_kid_equal_cleanfid_on_folders(inception, real_sets, tmp_path):
    test_images, _, train_images, _ = real_sets
    test_dir = write_folder(test_images, tmp_path / "test")
    train_dir = write_folder(train_images, tmp_path / "train")
    model = cleanfid_extractor(inception)

    # clean-fid's folder features (its reading and clean resize) are ours, to float tolerance. compute_fid is these
    # features -> mean/covariance -> frechet_distance; our formula equals that one on the same features (both paths:
    # test_fid_below_the_feature_dimension_equals_cleanfids_sqrtm), so it is not recomputed here at d = 2048, where
    # scipy's sqrtm costs ~13 s of a 2-core CPU and is the less accurate of the two.
    folder_features = lambda folder: get_folder_features(  # noqa: E731
        str(folder), model, num_workers=0, batch_size=N, device=torch.device("cpu"), mode="clean", verbose=False)
    feats_test, feats_train = folder_features(test_dir), folder_features(train_dir)
    ours_test, ours_train = inception.standard(test_images), inception.standard(train_images)
    # The FID of our features is the FID of clean-fid's folder features (and not zero: two different real sets).
    reference_fid = evaluation.fid(feats_test, feats_train)
    assert reference_fid > 1.0 and abs(evaluation.fid(ours_test, ours_train) - reference_fid) / reference_fid < 1e-4

    # compute_kid's path: clean-fid folder features + kernel_distance, with the same subsets.
    np.testing.assert_allclose(ours_test, feats_test, rtol=0, atol=1e-4 * np.abs(feats_test).max())
    np.random.seed(0)
    reference_kid = kernel_distance(feats_test, feats_train, num_subsets=100)
    ours = evaluation.kid(ours_test, ours_train, subset_size=1000, num_subsets=100, seed=0)
    assert abs(ours["mean"] - reference_kid) <= 1e-4 * abs(reference_kid) + 1e-9
    assert ours["std"] is None  # both sets are smaller than a subset: every subset is the whole set, no spread


def test_kid_equals_torchmetrics_on_the_same_features():
    """Subsets, estimator and spread exactly as torchmetrics' KernelInceptionDistance (std with unbiased=False)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    class Given(torch.nn.Module):  # the "images" are the features themselves
        def forward(self, x):
            return x

    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(120, 16)), rng.normal(0.3, 1.1, size=(90, 16))
    metric = KernelInceptionDistance(feature=Given(), subsets=30, subset_size=50)
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    torch.manual_seed(7)
    reference_mean, reference_std = (float(x) for x in metric.compute())
    ours = evaluation.kid(real, fake, subset_size=50, num_subsets=30, seed=7)
    assert abs(ours["mean"] - reference_mean) < 1e-10 and abs(ours["std"] - reference_std) < 1e-12
    assert ours["std"] > 1e-4  # distinct subsets: a real spread


def test_seed_protocol_fid_equals_torchmetrics(inception, real_sets):
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Seed64(torch.nn.Module):
        """The seed's 64-d feature extractor as a torchmetrics custom feature module (uint8 NCHW in)."""

        def forward(self, images):
            return torch.from_numpy(inception.seed(images.permute(0, 2, 3, 1).numpy()))

    test_images, _, train_images, _ = real_sets
    metric = FrechetInceptionDistance(feature=Seed64(), normalize=False, input_img_size=(3, 28, 28))
    metric.update(torch.from_numpy(test_images).permute(0, 3, 1, 2), real=True)
    metric.update(torch.from_numpy(train_images).permute(0, 3, 1, 2), real=False)
    reference = float(metric.compute())
    ours = evaluation.fid(inception.seed(test_images), inception.seed(train_images))
    assert abs(ours - reference) / reference < 1e-3


def test_seed_features_are_the_first_maxpool_channels(inception, real_sets):
    features = inception.seed(real_sets[0][:4])
    assert features.shape == (4, 64) and np.isfinite(features).all()
    # Post-ReLU max-pooled activations: non-negative, and different images give different features.
    assert (features >= 0).all() and np.abs(features[0] - features[1]).max() > 1e-3


def test_evaluate_images_reports_both_protocols_floor_and_classes(inception, real_sets, data_root, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setenv("MEDGEN_CACHE", str(tmp_path / "cache"))
    _, _, train_images, train_labels = real_sets
    result = evaluate_images(train_images, train_labels, split="test", num_real=N, extractor=inception,
                             data=DataSource("bloodmnist", str(data_root)))
    assert result["num_real"] == N and result["num_generated"] == N
    assert result["standard"]["fid"] > 0 and result["seed"]["fid64"] > 0
    assert result["floor"]["num_train"] == N and result["floor"]["standard"]["fid"] > 0
    assert set(result["per_class"]) <= set(load_medmnist_tensors("bloodmnist", "test", root=data_root).class_names)
    assert result["seed_reference"]["fid64"] == 5.039

    cached = sorted((tmp_path / "cache" / "features").glob("*.npy"))
    assert len(cached) == 4  # test and train subset, two protocols each
    mtimes = [path.stat().st_mtime_ns for path in cached]
    again = evaluate_images(train_images, train_labels, split="test", num_real=N, extractor=inception,
                            data=DataSource("bloodmnist", str(data_root)))
    assert [path.stat().st_mtime_ns for path in cached] == mtimes  # real features came from the cache
    assert again["standard"] == result["standard"] and again["floor"] == result["floor"]
    # Balanced labels (3 per class): a rare class has more generated images than the floor's random train subset
    # holds of it; its floor is still computed at the model side's N (it was at the subset's smaller N).
    balanced = evaluate_images(train_images, np.arange(N) % 8, split="test", num_real=N, extractor=inception,
                               data=DataSource("bloodmnist", str(data_root)), protocols=("standard",))
    floors = {name: (c["num_generated"], c.get("floor_num_train")) for name, c in balanced["per_class"].items()}
    assert floors and all(generated == floor for generated, floor in floors.values()), floors


def test_fid_orders_sets_by_how_far_they_are_from_the_real_ones(inception, real_sets):
    """0 for the set itself, smaller for other real images than for those images with the cells washed out: a
    metric that returned a constant, or ignored the images, fails here."""
    test, _, train, _ = real_sets
    rng = np.random.default_rng(0)
    washed = (train.astype(np.float32) + rng.normal(0, 80, train.shape)).clip(0, 255).astype(np.uint8)  # noise
    real = inception.standard(test)
    same, other_real, corrupted = (evaluation.fid(real, features) for features in
                                   (real, inception.standard(train), inception.standard(washed)))
    print(f"FID same {same:.4f}, other real {other_real:.1f}, washed-out {corrupted:.1f} (N = {N})")
    assert abs(same) < 1e-9 and other_real < corrupted



def test_fid_below_the_feature_dimension_equals_cleanfids_sqrtm():
    """The exact small-N path (singular values of the centred cross-product) against clean-fid's sqrtm formula on
    the same features, and the full-rank path is clean-fid's own."""
    from cleanfid.fid import fid_from_feats

    rng = np.random.default_rng(0)
    real, fake = rng.gamma(2.0, size=(40, 64)), rng.gamma(2.2, size=(30, 64)) + 0.1
    small = evaluation.fid(real, fake)  # 30 < 64: rank-deficient covariances
    assert abs(small - fid_from_feats(real, fake)) <= 1e-6 * small and small > 1.0
    big_real, big_fake = rng.gamma(2.0, size=(200, 64)), rng.gamma(2.2, size=(150, 64))
    assert evaluation.fid(big_real, big_fake) == float(fid_from_feats(big_real, big_fake))
    with pytest.raises(evaluation.EvaluationError, match="at least 2 images"):
        evaluation.fid(real, fake[:1])


def test_precision_recall_density_coverage_tell_fidelity_from_diversity():
    """On features with known answers: a matching set scores high on all four; a shifted (unrealistic) set loses
    precision and density; a collapsed set (one point repeated) keeps precision but loses recall and coverage."""
    rng = np.random.default_rng(0)
    real, matching = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    shifted, collapsed = matching + 3.0, np.repeat(matching[:1] * 0, 400, axis=0)
    good, bad, narrow = (evaluation.fidelity_and_diversity(real, fake) for fake in (matching, shifted, collapsed))
    assert min(good["precision"], good["recall"], good["coverage"]) > 0.8 and good["density"] > 0.7
    assert bad["precision"] < 0.1 and bad["density"] < 0.1 and good["recall"] > 0.8
    assert narrow["precision"] == 1.0 and narrow["recall"] < 0.05 and narrow["coverage"] < 0.5 * good["coverage"]


def test_bad_inputs_give_one_clear_error(inception, real_sets, data_root, tmp_path):
    images, blood = real_sets[2], DataSource("bloodmnist", str(data_root))
    with pytest.raises(EvaluationError, match="32x32 but the real split is 28x28: pass --size 32"):
        evaluate_images(np.zeros((4, 32, 32, 3), np.uint8), split="test", extractor=inception, data=blood)
    with pytest.raises(EvaluationError, match=r"\(N, H, W\), \(N, H, W, 1\) or \(N, H, W, 3\)"):
        evaluate_images(images[..., :2], split="test", extractor=inception, data=blood)
    # Grayscale is replicated to 3 channels (as clean-fid does): the same features as the RGB-replicated image.
    gray = images[:2, ..., :1]
    np.testing.assert_array_equal(inception.seed(gray), inception.seed(np.repeat(gray, 3, axis=-1)))
    with pytest.raises(EvaluationError, match="has 3421"):
        evaluate_images(images, split="test", num_real=5000, extractor=inception, data=blood)
    with pytest.raises(EvaluationError, match="right --dataset"):
        evaluate_images(images, np.full(N, 11), split="test", extractor=inception, data=blood)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="no PNG"):
        read_images(tmp_path / "empty")


def test_weights_resolution_and_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv(inception_module.WEIGHTS_ENV, str(tmp_path / "missing.pt"))
    with pytest.raises(EvaluationError, match="do not exist"):
        InceptionFeatures()
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a network")
    with pytest.raises(EvaluationError, match="not a loadable TorchScript"):
        InceptionFeatures(garbage)

    class WrongNetwork(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.Sequential(torch.nn.Conv2d(3, 2048, 3), torch.nn.AdaptiveAvgPool2d(1))

        def forward(self, x):
            return self.layers(x)

    wrong = tmp_path / "wrong.pt"
    torch.jit.script(WrongNetwork()).save(str(wrong))
    with pytest.raises(EvaluationError, match="not the FID Inception network"):
        InceptionFeatures(wrong)

    monkeypatch.delenv(inception_module.WEIGHTS_ENV)
    monkeypatch.setattr(inception_module, "CLEANFID_CACHED", tmp_path / "no-cleanfid-cache.pt")
    resolved = inception_module.resolve_inception_weights()
    assert resolved.name == "default_1.pt" and inception_module.sha256_file(resolved) == inception_module.FID_HELPER_SHA256

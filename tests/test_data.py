import hashlib
import shutil

import datasets
import numpy as np
import pytest
import torch

from medgen_diffusers.data import (
    DataError,
    augment_dihedral,
    class_names,
    load_medmnist,
    load_medmnist_tensors,
    medmnist_path,
    to_model_range,
)

OFFICIAL_MD5 = "7053d0359d879ad8a5505303e11de1dc"
SPLIT_SIZES = {"train": 11959, "val": 1712, "test": 3421}


def test_real_file_is_the_official_one(data_root):
    path = medmnist_path("bloodmnist", 28, data_root, download=False)
    assert hashlib.md5(path.read_bytes()).hexdigest() == OFFICIAL_MD5


@pytest.mark.parametrize("split", sorted(SPLIT_SIZES))
def test_tensors_on_the_real_file(data_root, split):
    data = load_medmnist_tensors("bloodmnist", split, root=data_root, download=False)
    assert data.images.shape == (SPLIT_SIZES[split], 3, 28, 28)
    assert data.images.dtype == torch.uint8 and data.labels.dtype == torch.int64
    assert set(data.labels.unique().tolist()) == set(range(8))
    assert data.md5 == OFFICIAL_MD5
    with np.load(data_root / "bloodmnist.npz") as npz:  # same pixels as the file, channels first
        np.testing.assert_array_equal(data.images[5].permute(1, 2, 0).numpy(), npz[f"{split}_images"][5])


def test_datasets_view_has_image_and_real_class_names(data_root):
    ds = load_medmnist("bloodmnist", "val", root=data_root, download=False)
    assert len(ds) == SPLIT_SIZES["val"]
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds.features["label"].names == class_names("bloodmnist")
    assert ds.features["label"].names[7] == "platelet" and ds.features["label"].num_classes == 8
    first = ds[0]
    assert first["image"].size == (28, 28) and first["image"].mode == "RGB"
    tensors = load_medmnist_tensors("bloodmnist", "val", root=data_root, download=False)
    np.testing.assert_array_equal(np.asarray(first["image"]), tensors.images[0].permute(1, 2, 0).numpy())
    assert first["label"] == tensors.labels[0].item()


def test_root_from_environment_variable(data_root, monkeypatch):
    monkeypatch.setenv("MEDMNIST_ROOT", str(data_root))
    assert medmnist_path("bloodmnist", download=False) == data_root / "bloodmnist.npz"


def test_truncated_copy_is_rejected_and_left_untouched(data_root, tmp_path):
    broken = tmp_path / "bloodmnist.npz"
    with open(data_root / "bloodmnist.npz", "rb") as src:
        broken.write_bytes(src.read(1_000_000))
    before = broken.read_bytes()
    with pytest.raises(DataError) as error:
        load_medmnist_tensors("bloodmnist", "train", root=tmp_path, download=True)
    message = str(error.value)
    assert OFFICIAL_MD5 in message and hashlib.md5(before).hexdigest() in message and "corrupt" in message
    assert broken.read_bytes() == before


def test_corrupted_byte_is_rejected(data_root, tmp_path):
    copy = tmp_path / "bloodmnist.npz"
    shutil.copyfile(data_root / "bloodmnist.npz", copy)
    with open(copy, "r+b") as f:
        f.seek(20_000_000)
        byte = f.read(1)
        f.seek(20_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(DataError, match="MD5"):
        medmnist_path("bloodmnist", 28, tmp_path)


def test_missing_file_without_download_names_file_and_folder(tmp_path):
    with pytest.raises(DataError) as error:
        medmnist_path("bloodmnist", 28, tmp_path, download=False)
    assert "bloodmnist.npz" in str(error.value) and str(tmp_path) in str(error.value)


def test_missing_file_with_no_network_says_how_to_get_it(tmp_path, monkeypatch):
    # A proxy on a closed loopback port makes the download fail at once, online or not.
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    with pytest.raises(DataError) as error:
        medmnist_path("bloodmnist", 28, tmp_path / "new", download=True)
    message = str(error.value)
    assert "bloodmnist.npz" in message and "zenodo" in message and str(tmp_path / "new") in message
    assert not (tmp_path / "new" / "bloodmnist.npz").exists()


@pytest.mark.parametrize(
    "kwargs, valid",
    [({"flag": "bloodmnistx"}, "pathmnist"), ({"split": "training"}, "val"), ({"size": 32}, "224")],
)
def test_bad_request_lists_valid_values(kwargs, valid, tmp_path):
    with pytest.raises(ValueError, match=valid):
        load_medmnist_tensors(**{"flag": "bloodmnist", "split": "train", "size": 28, "root": tmp_path, **kwargs})


def test_dihedral_augmentation_is_a_symmetry_of_each_image(data_root):
    images = load_medmnist_tensors("bloodmnist", "val", root=data_root, download=False).images[:64]
    out = augment_dihedral(images, torch.Generator().manual_seed(0))
    assert out.dtype == images.dtype and out.shape == images.shape
    changed = 0
    for original, augmented in zip(images, out):
        variants = [torch.rot90(v, k, (-2, -1)) for v in (original, original.flip(-1)) for k in range(4)]
        assert any(torch.equal(augmented, v) for v in variants)
        changed += not torch.equal(augmented, original)
    assert changed > 32  # 7 of 8 group elements move the image
    assert to_model_range(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [-1.0, 1.0]

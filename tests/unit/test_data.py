"""DataModules: the real Fashion-MNIST files, splits, subsets, other sources, and clear errors."""

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_gen.data import (
    CIFAR10DataModule,
    DatasetFileError,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    ToyMixtureDataModule,
)
from lightning_gen.data.toy import mixture_means


def test_fashion_mnist_reads_the_real_files_in_the_pixel_convention(fmnist_dir):
    data = FashionMNISTDataModule(data_dir=str(fmnist_dir))
    data.setup("fit")
    data.setup("test")
    assert data.data_shape == (1, 28, 28) and data.num_classes == 10
    assert len(data.train_set) + len(data.val_set) == 60_000 and len(data.val_set) == 6_000
    assert len(data.test_set) == 10_000  # the official test split
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (128, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    assert torch.equal(torch.round(x * 255) / 255, x)  # exactly k / 255
    assert set(y.tolist()) <= set(range(10))
    # every class is present in the official test split, 1000 each
    labels = torch.stack([data.test_set[i][1] for i in range(len(data.test_set))])
    assert torch.bincount(labels).tolist() == [1000] * 10


def test_fashion_mnist_default_folder_is_debians(fmnist_dir, monkeypatch):
    monkeypatch.delenv("LIGHTNING_GEN_DATA", raising=False)
    assert FashionMNISTDataModule().data_dir == fmnist_dir


def test_data_dir_argument_wins_over_the_environment(tiny_idx_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_GEN_DATA", str(tmp_path / "elsewhere"))
    assert FashionMNISTDataModule().data_dir == tmp_path / "elsewhere"
    assert FashionMNISTDataModule(data_dir=str(tiny_idx_dir)).data_dir == tiny_idx_dir


def test_split_is_deterministic_disjoint_and_depends_on_the_seed(tiny_idx_dir):
    def split(seed):
        data = MNISTDataModule(data_dir=str(tiny_idx_dir), split_seed=seed, val_fraction=0.25)
        data.setup("fit")
        return list(data.train_set.indices), list(data.val_set.indices)

    train, val = split(0)
    assert split(0) == (train, val)
    assert not set(train) & set(val) and len(train) + len(val) == 64 and len(val) == 16
    assert split(1)[1] != val


def test_subset_keeps_the_first_n_images(tiny_idx_dir):
    full = MNISTDataModule(data_dir=str(tiny_idx_dir))
    small = MNISTDataModule(data_dir=str(tiny_idx_dir), subset=20)
    for data in (full, small):
        data.setup("fit")
        data.setup("test")
    assert len(small.train_set) + len(small.val_set) == 20 and len(small.test_set) == 20
    torch.testing.assert_close(small.test_set[5][0], full.test_set[5][0])


def test_gzipped_and_torchvision_layouts_are_read(tiny_idx_dir, tmp_path):
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for path in tiny_idx_dir.iterdir():
        (raw / (path.name + ".gz")).write_bytes(gzip.compress(path.read_bytes()))
    plain, nested = MNISTDataModule(data_dir=str(tiny_idx_dir)), MNISTDataModule(data_dir=str(tmp_path / "root"))
    for data in (plain, nested):
        data.setup("test")
    torch.testing.assert_close(plain.test_set[3][0], nested.test_set[3][0])


def test_missing_folder_names_the_path_and_three_fixes(tmp_path):
    data = FashionMNISTDataModule(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetFileError) as error:
        data.setup("fit")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message and "does not exist" in message
    assert "--data.data_dir" in message and "$LIGHTNING_GEN_DATA" in message and "download" in message
    assert "apt-get install dataset-fashion-mnist" in message


@pytest.mark.parametrize("keep_bytes", [3, 10, 5000])
def test_truncated_idx_file_is_a_clear_error(fmnist_dir, tmp_path, keep_bytes):
    for path in fmnist_dir.glob("t10k-*"):
        shutil.copy(path, tmp_path / path.name)
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:keep_bytes]))
    data = FashionMNISTDataModule(data_dir=str(tmp_path))
    with pytest.raises(DatasetFileError, match="t10k-images-idx3-ubyte.gz") as error:
        data.setup("test")
    assert "truncated" in str(error.value) and "$LIGHTNING_GEN_DATA" in str(error.value)


def test_corrupt_gzip_is_a_clear_error(tiny_idx_dir):
    target = tiny_idx_dir / "t10k-images-idx3-ubyte"
    target.rename(target.with_name(target.name + ".gz"))  # not gzip data behind a .gz name
    with pytest.raises(DatasetFileError, match="cannot read .*t10k-images-idx3-ubyte.gz"):
        MNISTDataModule(data_dir=str(tiny_idx_dir)).setup("test")


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    data = FashionMNISTDataModule(data_dir=str(tmp_path), download=True)
    with pytest.raises(DatasetFileError, match="network is unreachable") as error:
        data.prepare_data()
    assert str(tmp_path) in str(error.value) and "--data.data_dir" in str(error.value)


def test_cifar10_without_files_is_a_clear_error(tmp_path):
    data = CIFAR10DataModule(data_dir=str(tmp_path))
    assert data.data_shape == (3, 32, 32)
    with pytest.raises(DatasetFileError) as error:
        data.setup("fit")
    assert str(tmp_path) in str(error.value) and "--data.download true" in str(error.value)


def _write_images(folder: Path, sizes: list[tuple[int, int]], mode: str = "RGB") -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(array).convert(mode).save(folder / f"img{i}.{'png' if i % 2 else 'jpg'}")


def test_image_folder_resizes_crops_and_labels_by_subfolder(tmp_path):
    _write_images(tmp_path / "cats", [(40, 30), (64, 64), (33, 50)] * 4)
    _write_images(tmp_path / "dogs", [(20, 20)] * 8, mode="L")
    data = ImageFolderDataModule(data_dir=str(tmp_path), image_size=16, grayscale=False, batch_size=4)
    assert data.data_shape == (3, 16, 16) and data.num_classes == 2
    data.setup("fit")
    data.setup("test")
    total = len(data.train_set) + len(data.val_set) + len(data.test_set)
    assert total == 20 and len(data.test_set) == 2
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and 0 <= x.min() and x.max() <= 1
    assert set(y.tolist()) <= {0, 1}
    gray = ImageFolderDataModule(data_dir=str(tmp_path), image_size=8, grayscale=True)
    gray.setup("test")
    assert gray.test_set[0][0].shape == (1, 8, 8)


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetFileError, match="does not exist"):
        ImageFolderDataModule(data_dir=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetFileError, match="holds no"):
        ImageFolderDataModule(data_dir=str(tmp_path / "empty"))
    _write_images(tmp_path / "broken", [(8, 8)] * 3)
    (tmp_path / "broken" / "img0.jpg").write_bytes(b"not a jpeg")
    data = ImageFolderDataModule(data_dir=str(tmp_path / "broken"), image_size=8, test_fraction=0.5)
    data.setup("fit")
    data.setup("test")
    every_item = [data.train_set, data.val_set, data.test_set]
    with pytest.raises(DatasetFileError, match="img0.jpg"):
        for dataset in every_item:
            for i in range(len(dataset)):
                dataset[i]


@pytest.mark.parametrize("mixture, modes", [("ring8", 8), ("grid25", 25)])
def test_toy_mixture_points_lie_near_their_component(mixture, modes):
    data = ToyMixtureDataModule(mixture=mixture, std=0.05, num_train=4000, num_test=1000)
    assert data.data_shape == (2,) and data.num_classes == modes
    data.setup("fit")
    points, components = (torch.stack(t) for t in zip(*[data.train_set[i] for i in range(len(data.train_set))]))
    distance = (points - mixture_means(mixture)[components]).norm(dim=1)
    assert distance.max() < 0.05 * 6  # 6 sigma in 2-D
    assert torch.bincount(components, minlength=modes).min() > 0.5 * len(points) / modes


def test_toy_ring_lies_on_a_circle_of_radius_two():
    torch.testing.assert_close(mixture_means("ring8").norm(dim=1), torch.full((8,), 2.0))
    with pytest.raises(ValueError, match="ring8"):
        ToyMixtureDataModule(mixture="spiral")

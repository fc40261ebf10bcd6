"""`evaluate --samples`: images from anywhere scored with the protocol of a checkpoint's evaluation."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import gaussian_blur

from lightning_gen.cli import main
from lightning_gen.data import FashionMNISTDataModule


def _training_images(fmnist_dir, n: int) -> np.ndarray:
    data = FashionMNISTDataModule(data_dir=str(fmnist_dir))
    data.setup("fit")
    images = torch.stack([data.train_set[i][0] for i in range(n)])  # [n, 1, 28, 28] in [0, 1]
    return (images * 255).round().to(torch.uint8).numpy()


def _score(capsys, samples, fmnist_dir, *options) -> dict[str, float]:
    main(["evaluate", "--samples", str(samples), "--data", "vae_fmnist", "--data_dir", str(fmnist_dir), *options])
    assert "results with protocols ->" in capsys.readouterr().out
    record = json.loads((samples.parent / "metrics.json").read_text())[samples.name]
    return {result["name"]: result["value"] for result in record["results"]}


def test_training_images_score_like_the_test_split_and_blurred_ones_do_not(fmnist_dir, tmp_path, capsys):
    """benchmarks/evaluation.py measured FID 1.06 for 10k training images against the test split, and
    554 for the same images blurred with sigma 1 (the control); 5k images (half the time) scored 2.09 and
    555 (FID's bias grows as the sample shrinks)."""
    images = _training_images(fmnist_dir, 5_000)
    np.savez(tmp_path / "train.npz", images=images)
    blurred = gaussian_blur(torch.from_numpy(images).float() / 255, kernel_size=7, sigma=1.0)
    np.savez(tmp_path / "blurred.npz", images=blurred.numpy())  # float in [0, 1]: the other accepted form
    train = _score(capsys, tmp_path / "train.npz", fmnist_dir, "--metrics", "fid,precision_recall")
    control = _score(capsys, tmp_path / "blurred.npz", fmnist_dir, "--metrics", "fid,precision_recall")
    assert train["fid_fmnist_clf"] < 3 and train["recall_fmnist_clf"] > 0.8
    assert control["fid_fmnist_clf"] > 300 and control["recall_fmnist_clf"] < 0.1


def test_a_folder_of_pngs_scores_as_the_npz_of_the_same_images(fmnist_dir, tmp_path, capsys):
    images = _training_images(fmnist_dir, 300)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image[0]).save(folder / f"{i:04d}.png")
    np.savez(tmp_path / "same.npz", images=images)
    options = ("--metrics", "fid", "--max_real", "300")
    main(["evaluate", "--samples", str(folder), "--data", "vae_fmnist", "--data_dir", str(fmnist_dir), *options])
    progress = capsys.readouterr().err  # the bar names what the pass does: images are read, not sampled
    assert "reading the images for fmnist_clf features" in progress and "sampling" not in progress
    assert _score(capsys, folder, fmnist_dir, *options) == _score(capsys, tmp_path / "same.npz", fmnist_dir, *options)


@pytest.mark.parametrize("images, message", [
    (np.zeros((0, 1, 28, 28), np.uint8), "holds no images"),
    (np.zeros((5, 28, 28), np.uint8), "expected [N, C, H, W]"),
    (np.zeros((5, 28, 28, 1), np.uint8), "move the channel axis"),
    (np.full((5, 1, 28, 28), 200.0, np.float32), "divide 0..255 levels by 255"),
    (np.zeros((5, 3, 28, 28), np.uint8), "pick the --data the samples imitate"),
])
def test_unusable_samples_are_one_clear_error(fmnist_dir, tmp_path, capsys, images, message):
    np.savez(tmp_path / "bad.npz", images=images)
    with pytest.raises(SystemExit):
        main(["evaluate", "--samples", str(tmp_path / "bad.npz"), "--data", "vae_fmnist",
              "--data_dir", str(fmnist_dir)])
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("lightning-gen: error: --samples") and message in error[0]


def test_a_missing_key_an_empty_folder_and_an_unknown_data_name_say_so(fmnist_dir, tmp_path, capsys):
    np.savez(tmp_path / "points.npz", points=np.zeros((5, 2), np.float32))
    (tmp_path / "empty").mkdir()
    cases = [(["--samples", str(tmp_path / "points.npz"), "--data", "vae_fmnist"], "holds points, not `images`"),
             (["--samples", str(tmp_path / "empty"), "--data", "vae_fmnist"], "holds no .png files"),
             (["--samples", str(tmp_path / "points.npz"), "--data", "vae_fmnst"], "--data vae_fmnst: the file does not "
                                                                                   "exist")]
    for options, message in cases:
        with pytest.raises(SystemExit):
            main(["evaluate", *options, "--data_dir", str(fmnist_dir)])
        assert message in capsys.readouterr().err

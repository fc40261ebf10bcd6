"""PixelCNN: causality of the masks, an exact likelihood that normalises, samplers that agree, learning."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml

from lightning_gen.data import FashionMNISTDataModule
from lightning_gen.data.pixels import NUM_LEVELS
from lightning_gen.errors import ConfigValueError
from lightning_gen.losses.autoregressive import CategoricalPixels, DiscretizedLogisticMixture
from lightning_gen.models import VAE, PixelCNN
from lightning_gen.nets.masked import CausalConv2d
from lightning_gen.nets.pixelcnn import ClassicPixelCNN, GatedPixelCNN
from tests.support.contract import GenerativeModelContract
from tests.support.paths import CONFIGS

PIXELCNN_TEST_METRICS, PIXELCNN_PREDICTIONS = ("test/nll", "test/nll_bpd"), ("nll", "nll_bpd")


class TestPixelCNNContract(GenerativeModelContract):
    other_model_class = VAE
    config, test_metrics, predictions = "pixelcnn_fmnist.yaml", PIXELCNN_TEST_METRICS, PIXELCNN_PREDICTIONS

    def make_model(self):
        return PixelCNN(data_shape=(1, 8, 8), hidden=8, layers=2, kernel_size=3)


class TestRGBMixturePixelCNNContract(GenerativeModelContract):
    other_model_class = VAE
    # no RGB data offline: the mixture runs on grayscale images
    config, test_metrics, predictions = "pixelcnn_fmnist.yaml", PIXELCNN_TEST_METRICS, PIXELCNN_PREDICTIONS

    def make_model(self):
        return PixelCNN(data_shape=(3, 8, 8), distribution="logistic_mixture", mixture_components=2, hidden=12,
                        layers=2, kernel_size=3)


# --- causality ------------------------------------------------------------------------------------------
def _input_gradients(net, x: torch.Tensor, row: int, col: int, params: slice) -> torch.Tensor:
    """|d params of pixel (row, col) / d x| summed over the batch and the parameters -> ``[C, H, W]``.
    (Several images, so that a ReLU that happens to be off for one input does not hide a connection.)"""
    x = x.clone().requires_grad_(True)
    net(x)[:, params, row, col].sum().backward()
    return x.grad.abs().sum(0)


def _raster_index(c: int, i: int, j: int, width: int, channels: int) -> int:
    return (i * width + j) * channels + c


@pytest.mark.parametrize(
    "channels, distribution",
    [(1, CategoricalPixels(1)), (3, CategoricalPixels(3)), (3, DiscretizedLogisticMixture(3, 2))],
    ids=["gray-categorical", "rgb-categorical", "rgb-mixture"],
)
def test_each_output_depends_only_on_earlier_sub_pixels(channels, distribution):
    torch.manual_seed(0)
    shape = (channels, 5, 6)
    net = GatedPixelCNN(shape, distribution.params_per_pixel, distribution.groups, hidden=24, layers=4,
                        kernel_size=3).double()
    x = torch.rand(8, *shape, dtype=torch.float64)
    per_group = distribution.params_per_pixel // distribution.groups
    _, height, width = shape
    for i, j, group in itertools.product(range(height), range(width), range(distribution.groups)):
        grads = _input_gradients(net, x, i, j, slice(group * per_group, (group + 1) * per_group))
        # the first sub-pixel this output predicts: channel `group` (one channel per group) or channel 0
        first = _raster_index(group if distribution.groups > 1 else 0, i, j, width, channels)
        for c, r, s in itertools.product(range(channels), range(height), range(width)):
            if _raster_index(c, r, s, width, channels) >= first:
                assert grads[c, r, s] == 0, f"output ({group}, {i}, {j}) sees input ({c}, {r}, {s})"
        if first > 0:
            assert grads.sum() > 0, f"output ({group}, {i}, {j}) sees nothing"


def test_gated_network_has_no_blind_spot_where_the_classic_one_has():
    torch.manual_seed(0)
    shape, i, j = (1, 7, 9), 5, 4
    gated = GatedPixelCNN(shape, NUM_LEVELS, hidden=8, layers=3, kernel_size=3).double()
    classic = ClassicPixelCNN(shape, NUM_LEVELS, hidden=8, layers=3, first_kernel_size=3).double()
    x = torch.rand(4, *shape, dtype=torch.float64)
    # earlier pixels within two rows above and two columns either side, and two to the left
    window = [(r, s) for r in (i - 2, i - 1) for s in range(j - 2, j + 3)] + [(i, j - 2), (i, j - 1)]
    gated_grads = _input_gradients(gated, x, i, j, slice(None))[0]
    classic_grads = _input_gradients(classic, x, i, j, slice(None))[0]
    assert all(gated_grads[r, s] > 0 for r, s in window)
    blind = [(r, s) for r, s in window if classic_grads[r, s] == 0]
    assert (i - 1, j + 2) in blind, blind  # the wedge above and to the right that 3x3 masked stacks never reach


def test_a_larger_first_kernel_widens_the_context_and_stays_causal():
    torch.manual_seed(0)
    shape, i, j = (3, 9, 9), 7, 4
    nets = {size: GatedPixelCNN(shape, 3 * NUM_LEVELS, groups=3, hidden=12, layers=2, kernel_size=3,
                                first_kernel_size=size).double() for size in (3, 7)}
    x = torch.rand(2, *shape, dtype=torch.float64)
    grads = {size: _input_gradients(net, x, i, j, slice(0, NUM_LEVELS)) for size, net in nets.items()}
    # two layers: the vertical stack reaches k1 // 2 + 2 rows above (one more row per layer, one from the
    # shift into the horizontal stack), the horizontal one k1 // 2 + 1 columns to the left
    for size, rows, columns in ((3, 3, 2), (7, 5, 4)):
        seen = grads[size].sum(0) > 0
        assert seen[i - rows, j] and not seen[: i - rows].any(), size
        assert seen[i, j - columns] and not seen[i, : j - columns].any(), size
        assert not seen[i, j:].any() and not seen[i + 1:].any(), size  # nothing at or after the pixel


def test_dilated_vertical_stacks_reach_further_up_without_gaps_and_stay_causal():
    torch.manual_seed(0)
    shape, i, j = (1, 16, 16), 15, 8
    x = torch.rand(2, *shape, dtype=torch.float64)
    # rows reached: 1 (the shift into the horizontal stack) + each layer's spacing; a cycle repeats
    for layers, dilations, rows in ((3, [1, 1, 1], 4), (3, [1, 2, 4], 8), (5, [1, 2], 1 + 1 + 2 + 1 + 2 + 1)):
        net = GatedPixelCNN(shape, NUM_LEVELS, hidden=8, layers=layers, kernel_size=3, dilations=dilations).double()
        seen = _input_gradients(net, x, i, j, slice(None))[0] > 0
        column = seen[:, j]
        assert column[i - rows: i].all() and not column[: i - rows].any(), (dilations, column)  # no holes
        assert not seen[i, j:].any() and not seen[i + 1:].any(), dilations
    for bad in ([], [2, 0]):
        with pytest.raises(ConfigValueError, match="dilations must be a non-empty list of spacings >= 1"):
            GatedPixelCNN(shape, NUM_LEVELS, layers=2, dilations=bad)


def test_mask_type_a_hides_the_current_sub_pixel_and_type_b_shows_it():
    a = CausalConv2d(3, 6, (3, 3), (1, 1), "A", groups=3)
    b = CausalConv2d(6, 6, (3, 3), (1, 1), "B", groups=3)
    # group of input channel c: c (image); of 6 features: [0, 0, 1, 1, 2, 2]
    assert a.mask[:, :, 1, 1].tolist() == [[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 0]]
    assert b.mask[2, :, 1, 1].tolist() == [1, 1, 1, 1, 0, 0]
    assert a.mask[:, :, 0].eq(1).all() and a.mask[:, :, 2].eq(0).all() and a.mask[:, :, 1, 2].eq(0).all()
    with pytest.raises(ValueError, match="divisible"):
        CausalConv2d(5, 6, (1, 1), (0, 0), "B", groups=3)


# --- the likelihood -------------------------------------------------------------------------------------
def _all_images(shape) -> torch.Tensor:
    """Every 8-bit image of a 2-sub-pixel shape: ``[65536, *shape]`` in [0, 1]."""
    levels = torch.cartesian_prod(torch.arange(NUM_LEVELS), torch.arange(NUM_LEVELS))
    return (levels.double() / (NUM_LEVELS - 1)).view(-1, *shape)


@pytest.mark.parametrize(
    "shape, distribution",
    [((1, 1, 2), "categorical"), ((2, 1, 1), "categorical"), ((1, 2, 1), "logistic_mixture"),
     ((2, 1, 1), "logistic_mixture")],
    ids=["two-pixels-categorical", "two-channels-categorical", "two-pixels-mixture", "two-channels-mixture"],
)
def test_likelihood_of_every_possible_image_sums_to_one(shape, distribution):
    torch.manual_seed(0)
    model = PixelCNN(data_shape=shape, distribution=distribution, mixture_components=3, hidden=8, layers=2,
                     kernel_size=3).double()
    for parameter in model.parameters():  # a sharp, far-from-uniform model, so the sum is a real check
        parameter.data.normal_(0, 0.5)
    log_p = torch.cat([model.log_likelihood(chunk) for chunk in _all_images(shape).split(8192)])
    assert torch.logsumexp(log_p, 0).exp().item() == pytest.approx(1.0, abs=1e-9)
    assert log_p.max() - log_p.min() > 5  # far from uniform


@pytest.mark.parametrize("distribution", [CategoricalPixels(1), DiscretizedLogisticMixture(1, 3)],
                         ids=["categorical", "mixture"])
def test_sample_pixel_draws_from_the_distribution_log_prob_scores(distribution):
    torch.manual_seed(0)
    params = torch.randn(1, distribution.params_per_pixel, dtype=torch.float64) * 2
    levels = torch.arange(NUM_LEVELS, dtype=torch.float64).view(-1, 1, 1, 1) / (NUM_LEVELS - 1)
    expected = distribution.log_prob(params.view(1, -1, 1, 1).expand(NUM_LEVELS, -1, 1, 1), levels).exp()
    n = 40_000
    noise = torch.rand(n, distribution.noise_per_pixel, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)
    drawn = distribution.sample_pixel(params.expand(n, -1), noise, group=0)[:, 0]
    observed = torch.bincount((drawn * 255).round().long(), minlength=NUM_LEVELS).double() / n
    assert expected.sum().item() == pytest.approx(1.0, abs=1e-9)
    assert 0.5 * (observed - expected).abs().sum() < 0.03  # total variation; a wrong sampler is far off


def test_class_conditional_likelihood_marginalises_over_a_uniform_prior():
    torch.manual_seed(0)
    model = PixelCNN(data_shape=(1, 4, 4), hidden=8, layers=2, kernel_size=3, num_classes=3).double()
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.3)
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64)
    per_class = torch.stack([model.log_likelihood(x, torch.full((5,), y)) for y in range(3)])
    assert not torch.allclose(per_class[0], per_class[1])  # the labels matter
    expected = torch.log(per_class.exp().mean(0))
    assert torch.allclose(model.log_likelihood(x), expected)


@pytest.mark.parametrize("channels, distribution", [(1, CategoricalPixels(1)), (3, CategoricalPixels(3))],
                         ids=["gray", "rgb"])
def test_categorical_log_prob_reads_nhwc_logits_as_it_reads_nchw_ones(channels, distribution):
    """The NHWC branch permutes the logits instead of viewing them: a wrong axis order would pair a pixel's
    level with another pixel's or channel's logits."""
    torch.manual_seed(0)
    params = torch.randn(4, distribution.params_per_pixel, 5, 6, dtype=torch.float64, requires_grad=True)
    x = torch.randint(0, NUM_LEVELS, (4, channels, 5, 6)).double() / (NUM_LEVELS - 1)
    nhwc = params.contiguous(memory_format=torch.channels_last)
    assert not nhwc.is_contiguous()  # the NHWC branch, not the plain one
    expected = distribution.log_prob(params, x)
    (gradient,) = torch.autograd.grad(expected.sum(), params)
    observed = distribution.log_prob(nhwc, x)
    (nhwc_gradient,) = torch.autograd.grad(observed.sum(), params)
    assert torch.allclose(observed, expected, rtol=1e-12)
    assert torch.allclose(nhwc_gradient, gradient, rtol=1e-12)
    shuffled = params.flip(2).contiguous(memory_format=torch.channels_last)  # the control: other pixels' logits
    assert not torch.allclose(distribution.log_prob(shuffled, x), expected)


@pytest.mark.parametrize("kwargs", [dict(data_shape=(1, 7, 6)), dict(data_shape=(3, 5, 5), hidden=12),
                                    dict(data_shape=(1, 9, 8), layers=4, first_kernel_size=5, dilations=[1, 2])],
                         ids=["gray", "rgb", "dilated"])
def test_a_channels_last_network_gives_the_same_likelihood_gradients_and_samples(kwargs):
    torch.manual_seed(0)
    model = PixelCNN(**{"hidden": 8, "layers": 3, "kernel_size": 3, **kwargs})
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.3)
    nhwc = PixelCNN(**{"hidden": 8, "layers": 3, "kernel_size": 3, **kwargs}, channels_last=True)
    nhwc.load_state_dict(model.state_dict())
    assert nhwc.net.layers[1].vertical.weight.is_contiguous(memory_format=torch.channels_last)
    assert not nhwc.net.layers[1].vertical.weight.is_contiguous()
    x = torch.randint(0, NUM_LEVELS, (4, *model.data_shape)).float() / (NUM_LEVELS - 1)
    expected, observed = model.conditional_log_likelihood(x), nhwc.conditional_log_likelihood(x)
    assert torch.allclose(observed, expected, rtol=1e-5)
    expected.sum().backward()
    observed.sum().backward()
    for (name, parameter), other in zip(model.named_parameters(), nhwc.parameters()):
        assert torch.allclose(other.grad, parameter.grad, rtol=1e-4, atol=1e-5), name
    for sampler in ("fast", "reference"):
        drawn = [m.sample(3, generator=torch.Generator().manual_seed(5), sampler=sampler) for m in (model, nhwc)]
        assert torch.equal(*drawn), sampler


# --- sampling ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [dict(data_shape=(1, 7, 6)), dict(data_shape=(3, 5, 5), hidden=12),
     dict(data_shape=(3, 5, 5), hidden=12, distribution="logistic_mixture", mixture_components=3),
     dict(data_shape=(1, 6, 6), num_classes=4), dict(data_shape=(1, 6, 6), kernel_size=5, layers=4),
     dict(data_shape=(3, 6, 7), hidden=12, first_kernel_size=7),
     dict(data_shape=(1, 9, 8), layers=4, first_kernel_size=5, dilations=[1, 2, 3, 2])],
    ids=["gray", "rgb-categorical", "rgb-mixture", "class-conditional", "kernel-5", "rgb-first-kernel-7",
         "dilated"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_and_reference_samplers_draw_identical_images(kwargs, dtype):
    torch.manual_seed(0)
    model = PixelCNN(**{"hidden": 8, "layers": 3, "kernel_size": 3, **kwargs}).to(dtype)
    for parameter in model.parameters():  # trained-looking, peaked conditionals rather than near-uniform ones
        parameter.data.normal_(0, 0.3)
    fast = model.sample(6, generator=torch.Generator().manual_seed(5), sampler="fast")
    reference = model.sample(6, generator=torch.Generator().manual_seed(5), sampler="reference")
    assert torch.equal(fast, reference)
    assert fast.unique().numel() > 10  # not a degenerate all-zero image


def test_fast_sampler_computes_the_reference_parameters_on_a_config_sized_model():
    """Teacher forcing: run the incremental generator along a fixed image and compare every pixel's
    parameters with one full forward pass (float32 rounding only)."""
    torch.manual_seed(0)
    # deeper and wider than the config's, and a first layer of another size: more cache to get wrong
    model = PixelCNN(hidden=32, layers=6, kernel_size=5, first_kernel_size=7, dilations=[1, 1, 2, 4, 8, 1])
    image = torch.randint(0, 256, (2, 1, 28, 28)).float() / 255
    with torch.no_grad():
        full = model.net(image)
    worst = torch.zeros(())

    def pick(i, j, group, params):
        nonlocal worst
        worst = torch.maximum(worst, (params - full[:, :, i, j]).abs().max())
        return image[:, :, i, j]

    model.net.generate(2, pick)
    assert worst < 1e-4, worst


# --- learning --------------------------------------------------------------------------------------------
def test_pixelcnn_learns_fashion_mnist(fmnist_dir, tmp_path):
    pl.seed_everything(0)
    data = FashionMNISTDataModule(data_dir=str(fmnist_dir), subset=1200, batch_size=32)
    model = PixelCNN(data_shape=data.data_shape, hidden=16, layers=4, kernel_size=5)
    options = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
                   enable_model_summary=False, default_root_dir=tmp_path)
    before = pl.Trainer(**options).validate(model, datamodule=data, verbose=False)[0]["val/nll_bpd"]
    trainer = pl.Trainer(max_epochs=2, **options)
    trainer.fit(model, datamodule=data)
    after = trainer.validate(model, datamodule=data, verbose=False)[0]["val/nll_bpd"]
    assert 7.5 < before < 8.5, before  # near the 8 bits/dim of a uniform model over 256 levels
    # 4.81 measured (4.68-4.88 over seeds 1-3): 2 epochs of 1080 images move a small model most of the way
    # from uniform; a likelihood, not a chaotic trajectory, so other CPUs' rounding stays far from 5.2
    assert after < 5.2, (before, after)


# --- the launcher -----------------------------------------------------------------------------------------
def test_default_config_fits_tests_evaluates_and_samples_through_the_cli(fmnist_dir, tmp_path):
    """`fit` of configs/pixelcnn_fmnist.yaml on a subset, then `evaluate` and `sample` from its checkpoint:
    the exact likelihood that `evaluate` reports equals the `test/nll_bpd` logged by Lightning on the
    same images (no estimator noise), and the samples come from the fast sampler."""
    config = yaml.safe_load((CONFIGS / "pixelcnn_fmnist.yaml").read_text())
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("EvaluationCallback"):
            callback["init_args"]["num_samples"] = 32  # budget only (at val and at test): the default takes 3000
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(config))
    run = lambda *args: subprocess.run([sys.executable, "-m", "lightning_gen", *args], cwd=tmp_path,  # noqa: E731
                                       capture_output=True, text=True, timeout=600,
                                       env={**os.environ, "LIGHTNING_GEN_CACHE": str(tmp_path / "cache")})
    fit = run("fit", "--config", "small.yaml", "--data.init_args.subset", "320", "--trainer.max_epochs", "2",
              "--model.init_args.hidden", "12", "--model.init_args.layers", "2", "--test_after_fit", "true",
              # 10 steps of a 2-layer net, for speed (the wiring is under test), at a learning rate that
              # moves it clearly below the 8 bits/dim of a uniform model (at the config's 2e-3: 7.95)
              "--model.init_args.kernel_size", "5", "--model.init_args.optimizer.init_args.lr", "0.01",
              "--trainer.enable_progress_bar", "false",
              # Lightning's test step then computes in float32 as `evaluate` does, so the two agree to float
              # rounding (under the config's bf16-mixed they agree to ~3e-3 bits/dim: test_mixed_precision)
              "--trainer.precision", "32-true")
    assert fit.returncode == 0, fit.stderr[-3000:]
    logged = float(re.search(r"test/nll_bpd\s*[:=]?\s*([0-9.]+)", fit.stdout[fit.stdout.rindex("run folder:"):])[1])
    (ckpt,) = tmp_path.glob("runs/pixelcnn_fmnist/version_0/checkpoints/last.ckpt")
    evaluated = run("evaluate", "--ckpt_path", str(ckpt), "--metrics", "nll_bpd", "--max_real", "320")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    (record,) = json.loads((ckpt.parent / "metrics.json").read_text()).values()
    (result,) = record["results"]
    assert result["protocol"]["estimator"] == "exact autoregressive likelihood"
    assert result["protocol"]["num_images"] == 320
    assert result["value"] == pytest.approx(logged, rel=1e-4) and 4 < logged < 8
    sampled = run("sample", "--ckpt_path", str(ckpt), "--num_samples", "3", "--out", "samples")
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    images = np.load(tmp_path / "samples" / "samples.npz")["images"]
    assert images.shape == (3, 1, 28, 28) and len(np.unique(images)) > 10


def test_class_count_that_differs_from_the_data_is_refused_with_the_fix(tiny_idx_dir, tmp_path):
    from lightning_gen.data import MNISTDataModule

    data = MNISTDataModule(data_dir=str(tiny_idx_dir), batch_size=16)
    model = PixelCNN(data_shape=data.data_shape, hidden=8, layers=1, kernel_size=3, num_classes=3)
    trainer = pl.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False,
                         default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="num_classes: 10"):
        trainer.fit(model, datamodule=data)
    conditional = PixelCNN(data_shape=data.data_shape, hidden=8, layers=1, kernel_size=3, num_classes=10)
    trainer = pl.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False,
                         default_root_dir=tmp_path)
    trainer.fit(conditional, datamodule=data)
    assert trainer.global_step == 1

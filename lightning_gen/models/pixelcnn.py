"""PixelCNN: an autoregressive model with an exact likelihood (van den Oord et al. 2016).

    log p(x) = sum_t log p(x_t | x_<t)     (pixels t in raster order; channels R -> G -> B within a pixel)

The network (``lightning_gen.nets.pixelcnn.GatedPixelCNN``) is masked so that the parameters of pixel t
depend only on x_<t; one forward pass gives every conditional at once, so training and evaluation are
as cheap as for any convolutional network and the likelihood is exact (no bound). Sampling must go
pixel by pixel. ``sampler="fast"`` (the default) caches every layer's activations and computes only what
the next pixel needs; ``sampler="reference"`` runs the whole network once per pixel and channel group.
Both consume the same pre-drawn uniform noise, so they draw the same images up to floating-point
rounding of the parameters (tested). On a CUDA device the fast sampler's thousands of small kernels are
launch-bound, so "fast" records the whole generation once as a CUDA graph and replays it; "fast_eager" keeps
launching them one by one (``samplers/autoregressive.py``, shared with the VQ-VAE prior).

Units: ``*/nll`` in nats per image, ``*/nll_bpd`` in bits per dimension (the VAE's names).
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from lightning_gen.data.base import batch_images
from lightning_gen.errors import ConfigValueError, check_range
from lightning_gen.losses.autoregressive import DISTRIBUTIONS, build_pixel_distribution
from lightning_gen.models.base import GenerativeModule, nats_to_bits_per_dim
from lightning_gen.nets.conv import check_image_shape
from lightning_gen.nets.pixelcnn import GatedPixelCNN
from lightning_gen.samplers.autoregressive import check_autoregressive_sampler, draw_autoregressively


class PixelCNN(GenerativeModule):
    """Gated PixelCNN over 8-bit images, trained by maximum likelihood (minimising -log p(x) in nats).

    Args:
        distribution: "categorical" (a 256-way softmax per sub-pixel, the grayscale default) or
            "logistic_mixture" (PixelCNN++'s discretised logistic mixture, for RGB).
        mixture_components: components of the logistic mixture.
        hidden, layers, kernel_size: width, number of gated layers and kernel size of the network.
        first_kernel_size: kernel size of the first layer (None: ``kernel_size``); it reads the image
            itself, so a larger one widens the context cheaply.
        dilations: tap spacings of the vertical stacks, repeated over the layers (None: all 1); e.g.
            [1, 2, 4, 8] lets 4 layers of 3x3 see 16 rows above a pixel instead of 5, for the same compute.
        num_classes: class-conditional model with this many classes (None: unconditional). It must equal
            the DataModule's ``num_classes``. Without labels, ``log_likelihood`` marginalises over a uniform
            class prior and ``sample`` draws the classes uniformly.
        sampler: "fast" (cached activations; replayed from a CUDA graph on a CUDA device), "fast_eager" (the
            same, never graphed) or "reference" (a full pass per pixel).
        compile: compile the network's forward with ``torch.compile`` (training and likelihoods).
        channels_last: keep the network's weights, and so its activations, in NHWC memory order (oneDNN's
            preferred layout for CPU convolutions; the categorical softmax then runs along memory). The same
            maths: the Fashion-MNIST config trained 1.14-1.18x the images/s in float32 on a 2-core CPU, no
            measurable change under ``bf16-mixed`` (benchmarks/history.md).
    """

    speed_samplers = ("reference",)  # compare measures it beside the default: the cost caching saves

    def __init__(
        self,
        data_shape: tuple[int, int, int] = (1, 28, 28),
        distribution: str = "categorical",
        mixture_components: int = 5,
        hidden: int = 64,
        layers: int = 8,
        kernel_size: int = 5,
        num_classes: int | None = None,
        sampler: str = "fast",
        optimizer: OptimizerCallable = torch.optim.Adam,
        compile: bool = False,
        first_kernel_size: int | None = None,
        dilations: list[int] | None = None,
        channels_last: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        if distribution not in DISTRIBUTIONS:
            raise ConfigValueError(f"unknown distribution {distribution!r}; choose one of {DISTRIBUTIONS}")
        check_autoregressive_sampler(sampler)
        if num_classes is not None and num_classes < 1:
            raise ConfigValueError(f"num_classes must be >= 1 or None (unconditional), got {num_classes}")
        check_range(at_least=1, mixture_components=mixture_components, hidden=hidden, layers=layers)
        self.data_shape = check_image_shape(tuple(data_shape), multiple_of=1)
        self.distribution = build_pixel_distribution(distribution, self.data_shape[0], mixture_components)
        self.net = GatedPixelCNN(self.data_shape, self.distribution.params_per_pixel, self.distribution.groups,
                                 hidden, layers, kernel_size, num_classes, first_kernel_size,
                                 dilations)
        self.use_channels_last(channels_last)
        self.num_classes, self.sampler = num_classes, sampler
        self.optimizer_factory = optimizer
        self.compile_networks = compile

    def use_channels_last(self, enabled: bool) -> None:
        """Put the network's weights in NHWC (``enabled``) or NCHW memory; inputs follow in the likelihood."""
        self.memory_format = torch.channels_last if enabled else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)

    def configure_optimizers(self):
        return self.optimizer_factory(self.parameters())

    def networks_to_compile(self):
        return [self.net]  # its forward (training, likelihood); the incremental sampler stays eager

    def setup(self, stage: str) -> None:
        self.check_data_classes()

    # --- likelihood ------------------------------------------------------------------------------------
    def conditional_log_likelihood(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """log p(x | labels) = sum_t log p(x_t | x_<t, labels): ``[N]`` nats, differentiable."""
        return self.distribution.log_prob(self.net(x.contiguous(memory_format=self.memory_format), labels), x)

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Exact log p(x), ``[N]`` nats per image, for images in [0, 1] (8-bit levels).

        A class-conditional model without ``labels`` gives the marginal
        log p(x) = logsumexp_y log p(x | y) - log K under a uniform prior over its K classes.
        """
        if self.num_classes is None or labels is not None:
            return self.conditional_log_likelihood(x, labels)
        per_class = [self.conditional_log_likelihood(x, torch.full((len(x),), y, device=x.device))
                     for y in range(self.num_classes)]
        return torch.logsumexp(torch.stack(per_class), dim=0) - math.log(self.num_classes)

    def likelihood_protocol(self) -> dict:
        return {"estimator": "exact autoregressive likelihood", "likelihood": self.distribution.name,
                "dequantization": "none: discrete likelihood over the 256 levels of 8-bit pixels",
                "class_prior": "uniform" if self.num_classes else "unconditional"}

    def sampling_protocol(self) -> dict:
        """How ``sample`` draws: autoregressively, one step per pixel and channel group (compare's report)."""
        channels, height, width = self.data_shape
        return {"order": "autoregressive", "step": "pixel and channel group", "steps": height * width * self.net.groups,
                "sampler": self.sampler}

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x = batch_images(batch)
        nll = -self.conditional_log_likelihood(x, self.batch_labels(batch))
        loss = nll.mean()
        self.guard_finite(loss=loss)
        if self.logging_this_batch():
            self.log("train/loss", loss, prog_bar=True)
            self.log("train/nll_bpd", nats_to_bits_per_dim(loss, self.num_dims), prog_bar=True)
        return loss

    def evaluation_step(self, batch, batch_idx: int, stage: str) -> None:
        x = batch_images(batch)
        nll = -self.conditional_log_likelihood(x, self.batch_labels(batch))
        self.log(f"{stage}/nll", nll.mean(), sync_dist=True)
        self.log(f"{stage}/nll_bpd", nats_to_bits_per_dim(nll, self.num_dims).mean(), prog_bar=stage == "val",
                 sync_dist=True)

    def predict_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        """Each image's exact -log p(x) of the predict split (the test set): ``nll`` ``[N]`` nats and
        ``nll_bpd`` ``[N]`` bits/dim (given its label for a class-conditional model, as in ``test``)."""
        x = batch_images(batch)
        nll = -self.conditional_log_likelihood(x, self.batch_labels(batch))
        return {"nll": nll, "nll_bpd": nats_to_bits_per_dim(nll, self.num_dims)}

    # --- sampling --------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, labels: Tensor | None = None,
               sampler: str | None = None, progress: bool = False) -> Tensor:
        """``n`` images ``[n, C, H, W]`` in [0, 1], drawn pixel by pixel.

        Every random number is drawn up front from ``generator`` (labels, then one block of uniform noise
        ``[n, noise_per_pixel, H, W]``), so the fast and the reference sampler see the same noise.
        """
        sampler = check_autoregressive_sampler(sampler or self.sampler)
        channels, height, width = self.data_shape
        if self.num_classes is not None and labels is None:
            labels = torch.randint(self.num_classes, (n,), generator=generator, device=self.device)
        noise = torch.rand(n, self.distribution.noise_per_pixel, height, width, generator=generator,
                           device=self.device, dtype=self.dtype)

        def picker(noise: Tensor):
            def pick(i: int, j: int, group: int, params: Tensor) -> Tensor:
                return self.distribution.sample_pixel(params, noise[:, :, i, j], group)
            return pick

        return draw_autoregressively(self.net, self.data_shape, noise, picker, labels, sampler, progress)

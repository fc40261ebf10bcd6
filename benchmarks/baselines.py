"""The benchmarks' baselines: one hand-written network and training loop per family, and the peer libraries'
recipes of the two families that have one. ``quality_at_budget.py`` trains each against the family's default
config for the same wall-clock budget; every benchmark that needs a hand-written baseline takes it from here.

Every baseline trains for a wall-clock budget from the moment its function is called (data loading and
building the nets count; the data is the configs' split, ``FashionMNISTDataModule``, 54k training images, no
workers) and comes back as a ``Trained``: a model that offers ``sample(n, generator) -> [n, 1, 28, 28]`` in
[0, 1] and, where it has one, ``log_likelihood(x)`` in nats per image of the DISCRETE 8-bit data (with
``prepare_input(images, generator)`` before it), so that ``lightning_gen.metrics`` turns it into bits/dim.
Two standard settings per family, A and B, written as a competent user would write them:

gan: DCGAN (Radford et al. 2016) sized for 28x28: G z(100) -> linear 128x7x7 -> BN, ReLU -> 4x4 stride-2
  transposed conv 64 -> BN, ReLU -> transposed conv 1 -> tanh; D 4x4 stride-2 conv 64 -> LeakyReLU(0.2) ->
  conv 128 -> BN, LeakyReLU -> linear logit; weights N(0, 0.02); non-saturating BCE; Adam 2e-4, betas
  (0.5, 0.999). A: batch 64; B: batch 128. Samples from G in eval mode (BN running stats).

vae: a Bernoulli decoder (BCE with logits against the [0, 1] pixels, summed per image) plus the closed-form
  KL, one reparameterised sample, Adam 1e-3, batch 128, 20 latents. A: the PyTorch example's MLP 784-400-20;
  B: a small conv net (4x4 stride-2 convs 32, 64 channels, then linear; the decoder mirrors it). Samples:
  z ~ N(0, I) through the decoder, its Bernoulli probabilities as the image. (The Bernoulli model is of [0, 1]
  intensities, not 8-bit levels: no bits/dim.)

ae: the vae's nets and loss without the KL (a deterministic 20-d code). Sampled like the package's AE: decode
  draws from a full-covariance Gaussian fitted to training codes (here the codes of the first 10,000 training
  images after training, outside the budget; the package's AE uses those of its last training epoch).

pixelcnn: the classic PixelCNN (van den Oord et al. 2016a): 7x7 mask-A conv, then ReLU + 3x3 mask-B convs,
  then ReLU, 1x1 conv, ReLU, 1x1 conv to a 256-way softmax per pixel; cross-entropy, Adam 1e-3, batch 64 (the
  config's). A: 32 wide, 5 mask-B layers; B: 64 wide, 7 mask-B layers. Exact log-likelihood; sampling is 784
  network passes, each over the window the next pixel can see.

flow matching (issue 35; no likelihood):
- plain A / B: a small time-conditioned conv U-Net (``PlainUNet``), the rectified-flow loss
  x_t = (1 - t) x0 + t x1, x0 ~ N(0, I), x1 the image in [-1, 1], t ~ U[0, 1], target x1 - x0 (MSE);
  a U-Net 32 wide (as wide as the default config's), Adam 1e-3, no EMA; Euler sampling at ``PLAIN_NFE`` = 50
  evaluations. A: batch 64; B: batch 128. (Not widths 32 vs 64: a 64-wide U-Net costs 4x the FLOPs, so it
  would see a quarter of the images in the budget and take 4x as long to sample on this CPU.)
- peer torchcfm: the recipe of torchcfm's MNIST notebook (atong01/conditional-flow-matching,
  examples/images/mnist_example.ipynb, "OT-CFM" cells): ``ExactOptimalTransportConditionalFlowMatcher(sigma=0)``,
  ``torchcfm.models.unet.UNetModel(dim=(1, 28, 28), num_channels=32, num_res_blocks=1)``, Adam with torch's
  defaults (lr 1e-3), batch 128, images normalised to [-1, 1]; sampling with torchdyn's
  ``NeuralODE(solver="dopri5", atol=1e-4, rtol=1e-4)`` from t=0 to 1 (adaptive: the NFE it used is recorded).

normalizing flow (issue 35; bits/dim of the 8-bit data):
- plain A / B: RealNVP (Dinh et al. 2017): uniform dequantisation y = (k + u) / 256, logit preprocessing
  v = logit(a + (1 - 2a) y) with a = 0.05, then per scale 3 checkerboard affine couplings, a squeeze, 3
  channel-wise couplings and half the channels factored out; 4 checkerboard couplings at the last scale
  (28x28 -> 14x14 -> 7x7). Coupling nets: conv 3x3 -> ReLU -> conv 1x1 -> ReLU -> conv 3x3 (zero-initialised),
  scales s = scale * tanh(.) (no batch norm, unlike the paper: its running statistics would make the
  likelihood depend on the mode). Adam 1e-3, batch 64. A: 32 hidden channels; B: 64.
- peer normflows: the Glow of normflows' example (VincentStimper/normalizing-flows, examples/glow.ipynb):
  ``nf.MultiscaleFlow`` of ``nf.flows.GlowBlock``s (K = 16 per level, 256 hidden channels, split_mode
  "channel", scale=True), ``nf.flows.Squeeze`` / ``nf.flows.Merge``, diagonal Gaussian bases, Adamax(lr 1e-3,
  weight_decay 1e-5), batch 128, data ``(k + u) / 256`` (their ``Scale(255/256)`` + ``Jitter(1/256)``),
  skipping a step whose loss is not finite, as they do. Two changes forced by the data: L = 2 levels instead
  of 3 (28 = 7 * 2^2 has only two halvings), and unconditional ``DiagGaussian`` bases instead of their
  class-conditional ``ClassCondDiagGaussian`` (every contender here is unconditional). Why normflows and not
  zuko: zuko's flows act on flat vectors (MAF, NSF, RealNVP with MLP conditioners) and it has no
  convolutional multi-scale image flow.
  The peers need the ``bench`` extra (torchcfm, normflows).

Bits/dim of a flow with uniform dequantisation (Theis et al. 2016): for 8-bit levels k and the density p_Y of
y = (k + u) / 256, log P(k) >= E_u[log p_Y(y)] - D log 256; ``log_likelihood`` returns log p_Y(y) - D log 256
for one draw of u (``prepare_input``), with the log-determinant of every rescaling (the logit preprocessing)
in log p_Y.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from budget import batches_until, descend, train_plain  # noqa: E402  (benchmarks/ is the script's folder)
from torch import Tensor, nn

from lightning_gen.data import FashionMNISTDataModule

SHAPE = (1, 28, 28)
NUM_DIMS = math.prod(SHAPE)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # what the configs' accelerator auto picks


@dataclass
class Trained:
    """One contender after its budget."""

    model: nn.Module  # offers sample(n, generator) -> [n, 1, 28, 28] in [0, 1]; log_likelihood(x) where defined
    images: int  # training images seen
    train_seconds: float  # launch -> the end of the last training batch (the budget plus at most one batch)
    wall_seconds: float  # launch -> ready to sample (adds lightning-gen's final validation, the AE's code fit)
    in_batches: float | None = None  # lightning-gen: seconds inside training steps, the rest being overhead
    evaluation_seconds: float | None = None  # lightning-gen: its config's EvaluationCallback, inside the budget


def fashion_mnist(batch_size: int) -> FashionMNISTDataModule:
    data = FashionMNISTDataModule(batch_size=batch_size)  # the configs' 54k/6k split of the training set
    data.setup("fit")
    return data


def train_plain_model(seconds: float, seed: int, batch_size: int, build: Callable[[], nn.Module],
                      loss: Callable[[nn.Module, Tensor], Tensor],
                      optimizer: Callable = functools.partial(torch.optim.Adam, lr=1e-3),
                      finish: Callable[[nn.Module, FashionMNISTDataModule], nn.Module] | None = None) -> Trained:
    """The plain scripts' loop: inside the budget the seed, the data, ``build()`` and ``optimizer(parameters)``,
    then ``loss(model, batch on DEVICE)`` -> zero_grad, backward, step until ``seconds`` have passed; then
    ``finish(model, data)`` (the model to sample from, e.g. after the AE's code fit; outside the budget)."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    data = fashion_mnist(batch_size)
    model = build().to(DEVICE)
    images, train_seconds = train_plain(seconds, data.train_dataloader, lambda x: loss(model, x.to(DEVICE)),
                                        optimizer(model.parameters()), started=started)
    model.eval()
    trained = finish(model, data) if finish else model
    return Trained(trained, images, train_seconds, time.perf_counter() - started)


# ================================================================================================
# GAN: DCGAN
# ================================================================================================
LATENT_GAN = 100


def dcgan_init(module: nn.Module) -> None:
    """Radford et al.: conv and linear weights from N(0, 0.02), batch-norm scales from N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def dcgan_generator() -> nn.Module:
    return nn.Sequential(
        nn.Linear(LATENT_GAN, 128 * 7 * 7), nn.BatchNorm1d(128 * 7 * 7), nn.ReLU(),
        nn.Unflatten(1, (128, 7, 7)),
        nn.ConvTranspose2d(128, 64, 4, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),  # (N, 64, 14, 14)
        nn.ConvTranspose2d(64, 1, 4, stride=2, padding=1), nn.Tanh(),  # (N, 1, 28, 28) in [-1, 1]
    )


def dcgan_discriminator() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 64, 4, stride=2, padding=1), nn.LeakyReLU(0.2),  # (N, 64, 14, 14)
        nn.Conv2d(64, 128, 4, stride=2, padding=1), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),  # (N, 128, 7, 7)
        nn.Flatten(), nn.Linear(128 * 7 * 7, 1), nn.Flatten(0),  # (N,) logits
    )


class GeneratorSamples(nn.Module):
    data_shape = SHAPE

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, LATENT_GAN, generator=generator, device=DEVICE)
        return (self.generator(z) + 1) / 2


def train_plain_gan(seconds: float, seed: int, batch_size: int) -> Trained:
    """One D step and one G step per batch, G's on the batch of fakes D just saw."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    data = fashion_mnist(batch_size)
    g, d = dcgan_generator().to(DEVICE), dcgan_discriminator().to(DEVICE)
    g.apply(dcgan_init)
    d.apply(dcgan_init)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    images = 0
    for x, _ in batches_until(started + seconds, data.train_dataloader):
        real = x.to(DEVICE) * 2 - 1  # the generator's tanh range
        ones, zeros = torch.ones(len(real), device=DEVICE), torch.zeros(len(real), device=DEVICE)
        fake = g(torch.randn(len(real), LATENT_GAN, device=DEVICE))
        # D: -log D(x) - log(1 - D(G(z))); then G, non-saturating: -log D(G(z)) through the updated D
        descend(opt_d, F.binary_cross_entropy_with_logits(d(real), ones)
                + F.binary_cross_entropy_with_logits(d(fake.detach()), zeros))
        descend(opt_g, F.binary_cross_entropy_with_logits(d(fake), ones))
        images += len(real)
    seconds_used = time.perf_counter() - started
    return Trained(GeneratorSamples(g), images, seconds_used, seconds_used)


# ================================================================================================
# AE and VAE: Bernoulli autoencoders
# ================================================================================================
LATENT_AE = 20


def mlp_nets(code_size: int) -> tuple[nn.Module, nn.Module]:
    """The PyTorch example's VAE nets: 784-400-code, and 20-400-784 logits."""
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, code_size))
    decoder = nn.Sequential(nn.Linear(LATENT_AE, 400), nn.ReLU(), nn.Linear(400, 784), nn.Unflatten(1, SHAPE))
    return encoder, decoder


def conv_nets(code_size: int) -> tuple[nn.Module, nn.Module]:
    encoder = nn.Sequential(
        nn.Conv2d(1, 32, 4, stride=2, padding=1), nn.ReLU(),  # (N, 32, 14, 14)
        nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ReLU(),  # (N, 64, 7, 7)
        nn.Flatten(), nn.Linear(64 * 7 * 7, code_size),
    )
    decoder = nn.Sequential(
        nn.Linear(LATENT_AE, 64 * 7 * 7), nn.ReLU(), nn.Unflatten(1, (64, 7, 7)),
        nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU(),  # (N, 32, 14, 14)
        nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1),  # (N, 1, 28, 28) logits
    )
    return encoder, decoder


class BernoulliAutoencoder(nn.Module):
    """decoder(z) are the logits of p(x|z), one Bernoulli per pixel, fitted to the [0, 1] intensities.

    ``variational``: the encoder gives q(z|x) = N(mean, diag(exp(logvar))) and the prior is N(0, I) (a
    VAE); otherwise the code is deterministic (an AE), sampled from a Gaussian fitted to training codes.
    """

    data_shape = SHAPE

    def __init__(self, nets: Callable[[int], tuple[nn.Module, nn.Module]], variational: bool):
        super().__init__()
        self.variational = variational
        self.encoder, self.decoder = nets(2 * LATENT_AE if variational else LATENT_AE)
        self.register_buffer("code_mean", torch.zeros(LATENT_AE))
        self.register_buffer("code_scale_tril", torch.eye(LATENT_AE))

    def loss(self, x: Tensor) -> Tensor:
        """-ELBO (VAE) or the reconstruction cross-entropy (AE), nats per image, mean over the batch."""
        if self.variational:
            mean, logvar = self.encoder(x).chunk(2, dim=1)  # (N, 20) each
            z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(1)  # KL(q(z|x) || N(0, I)), (N,)
        else:
            z, kl = self.encoder(x), 0.0
        reconstruction = F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").sum((1, 2, 3))
        return (reconstruction + kl).mean()

    @torch.no_grad()
    def fit_code_gaussian(self, images: Tensor) -> None:
        codes = torch.cat([self.encoder(chunk) for chunk in images.split(1000)]).double()  # (M, 20)
        covariance = torch.cov(codes.T, correction=0) + 1e-6 * torch.eye(LATENT_AE, dtype=torch.float64,
                                                                         device=codes.device)
        self.code_mean.copy_(codes.mean(0).float())
        self.code_scale_tril.copy_(torch.linalg.cholesky(covariance).float())

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        eps = torch.randn(n, LATENT_AE, generator=generator, device=DEVICE)
        z = eps if self.variational else self.code_mean + eps @ self.code_scale_tril.T
        return torch.sigmoid(self.decoder(z))


def fit_codes(model: BernoulliAutoencoder, data: FashionMNISTDataModule) -> BernoulliAutoencoder:
    """An AE's code Gaussian from the codes of the first 10,000 training images (a VAE samples its prior)."""
    if not model.variational:
        first = torch.stack([data.train_set[i][0] for i in range(min(10_000, len(data.train_set)))])
        model.fit_code_gaussian(first.to(DEVICE))
    return model


def train_plain_autoencoder(seconds: float, seed: int, nets: Callable[[int], tuple[nn.Module, nn.Module]],
                            variational: bool) -> Trained:
    return train_plain_model(seconds, seed, 128, lambda: BernoulliAutoencoder(nets, variational),
                             lambda model, x: model.loss(x), finish=fit_codes)


# ================================================================================================
# PixelCNN: the classic masked-convolution net
# ================================================================================================
class MaskedConv2d(nn.Conv2d):
    """A convolution that sees only the pixels above and left of the centre; mask "B" also the centre."""

    def __init__(self, mask: str, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        centre = kernel_size // 2
        allowed = torch.ones_like(self.weight)
        allowed[:, :, centre, centre + (mask == "B"):] = 0
        allowed[:, :, centre + 1:] = 0
        self.register_buffer("allowed", allowed)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.allowed, self.bias, padding=self.padding)


class ClassicPixelCNN(nn.Module):
    """images [N, 1, 28, 28] in [0, 1] -> logits [N, 256, 28, 28] of each pixel's 8-bit level."""

    data_shape = SHAPE

    def __init__(self, width: int, b_layers: int):
        super().__init__()
        layers = [MaskedConv2d("A", 1, width, 7)]
        for _ in range(b_layers):
            layers += [nn.ReLU(), MaskedConv2d("B", width, width, 3)]
        layers += [nn.ReLU(), nn.Conv2d(width, width, 1), nn.ReLU(), nn.Conv2d(width, 256, 1)]
        self.net = nn.Sequential(*layers)
        # the receptive field reaches this many rows up and columns to either side: 3 from the 7x7 conv,
        # 1 per 3x3 conv
        self.reach = 3 + b_layers

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def prepare_input(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return images

    def loss(self, x: Tensor) -> Tensor:
        """Cross-entropy of the 8-bit levels: nats per pixel, mean over the batch."""
        return F.cross_entropy(self(x), torch.round(x[:, 0] * 255).long())

    def log_likelihood(self, x: Tensor) -> Tensor:
        """Exact log p(x), ``[N]`` nats per image."""
        levels = torch.round(x[:, 0] * 255).long()  # (N, 28, 28)
        return -F.cross_entropy(self(x), levels, reduction="none").sum((1, 2))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        x = torch.zeros(n, *SHAPE, device=DEVICE)
        for i in range(SHAPE[1]):
            for j in range(SHAPE[2]):
                # one pass over the window pixel (i, j) sees gives its exact logits, at a fraction of the cost
                top, left = max(0, i - self.reach), max(0, j - self.reach)
                window = x[:, :, top: i + 1, left: j + self.reach + 1]
                logits = self(window)[:, :, -1, j - left]  # (n, 256)
                level = torch.multinomial(logits.softmax(1), 1, generator=generator)  # (n, 1)
                x[:, 0, i, j] = level[:, 0] / 255
        return x


def train_plain_pixelcnn(seconds: float, seed: int, width: int, b_layers: int) -> Trained:
    return train_plain_model(seconds, seed, 64, lambda: ClassicPixelCNN(width, b_layers),
                             lambda model, x: model.loss(x))


# ================================================================================================
# shared by the flows
# ================================================================================================
def dequantize(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """8-bit images k / 255 in [0, 1] -> y = (k + u) / 256 in [0, 1), u ~ U[0, 1) per sub-pixel."""
    noise = torch.rand(images.shape, generator=generator, device=images.device)
    return (torch.round(images * 255) + noise) / 256


def standard_normal_log_density(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over all but the first dimension: ``[N]`` nats."""
    return -0.5 * (z.pow(2) + math.log(2 * math.pi)).flatten(1).sum(1)


class DequantizedFlow(nn.Module):
    """The likelihood surface of a flow over dequantised images y = (k + u) / 256: ``prepare_input`` draws u,
    ``log_likelihood`` is the bound on log P(k). A subclass gives ``continuous_log_likelihood(y)`` (log p_Y)."""

    likelihood_name = "a flow"

    def continuous_log_likelihood(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def prepare_input(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return dequantize(images, generator)

    def log_likelihood(self, y: Tensor) -> Tensor:
        """log p_Y(y) - D log 256: the dequantisation bound on log P(k), ``[N]`` nats per image."""
        return self.continuous_log_likelihood(y) - NUM_DIMS * math.log(256)

    def likelihood_protocol(self) -> dict:
        return {"estimator": "exact change of variables", "likelihood": self.likelihood_name,
                "dequantization": "uniform (k+u)/256, lower bound on the discrete likelihood"}


# ================================================================================================
# flow matching
# ================================================================================================
PLAIN_WIDTH = 32  # channels of the plain U-Net's first level
PLAIN_NFE = 50  # Euler steps of the plain scripts' sampler, one network evaluation each
PEER_TOLERANCE = 1e-4  # torchcfm's MNIST notebook: dopri5 with atol = rtol = 1e-4


class TimeBlock(nn.Module):
    """h -> shortcut(h) + conv(SiLU(GN(conv(SiLU(GN(h))) + W e))), e the time embedding ``[N, E]``."""

    def __init__(self, in_channels: int, out_channels: int, embedding: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, in_channels), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time = nn.Linear(embedding, out_channels)
        self.norm2, self.conv2 = nn.GroupNorm(8, out_channels), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        out = self.conv1(F.silu(self.norm1(h))) + self.time(e)[:, :, None, None]
        return self.shortcut(h) + self.conv2(F.silu(self.norm2(out)))


class PlainUNet(nn.Module):
    """v = net(x, t): x ``[N, 1, 28, 28]``, t ``[N]`` in [0, 1] -> velocity ``[N, 1, 28, 28]``.

    Two resolutions below the input (28 -> 14 -> 7), widths w, 2w, 2w, one residual block per level on the
    way down and up, skips by concatenation; t enters every block through sinusoidal features and an MLP.
    """

    def __init__(self, width: int):
        super().__init__()
        w, e = width, 4 * width
        self.register_buffer("frequencies", torch.exp(torch.linspace(0, math.log(1000), w // 2)))  # 1 .. 1000
        self.embed = nn.Sequential(nn.Linear(w, e), nn.SiLU(), nn.Linear(e, e), nn.SiLU())
        self.stem = nn.Conv2d(1, w, 3, padding=1)
        self.down1, self.down2, self.mid = TimeBlock(w, w, e), TimeBlock(w, 2 * w, e), TimeBlock(2 * w, 2 * w, e)
        self.up2, self.up1 = TimeBlock(4 * w, 2 * w, e), TimeBlock(3 * w, w, e)
        self.head = nn.Sequential(nn.GroupNorm(8, w), nn.SiLU(), nn.Conv2d(w, 1, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        angles = t[:, None] * self.frequencies  # (N, w/2)
        e = self.embed(torch.cat([angles.sin(), angles.cos()], 1))  # (N, 4w)
        h1 = self.down1(self.stem(x), e)  # (N, w, 28, 28)
        h2 = self.down2(F.avg_pool2d(h1, 2), e)  # (N, 2w, 14, 14)
        h = self.mid(F.avg_pool2d(h2, 2), e)  # (N, 2w, 7, 7)
        h = self.up2(torch.cat([F.interpolate(h, scale_factor=2.0), h2], 1), e)  # (N, 2w, 14, 14)
        h = self.up1(torch.cat([F.interpolate(h, scale_factor=2.0), h1], 1), e)  # (N, w, 28, 28)
        return self.head(h)


def rectified_flow_loss(net: nn.Module, x1: Tensor, x0: Tensor | None = None, t: Tensor | None = None) -> Tensor:
    """Mean over pixels and batch of (v(x_t, t) - (x1 - x0))^2, x_t = (1 - t) x0 + t x1.

    x1: images ``[N, 1, 28, 28]`` in [-1, 1]; x0 ~ N(0, I) and t ~ U[0, 1] ``[N]`` unless given.
    """
    x0 = torch.randn_like(x1) if x0 is None else x0
    t = torch.rand(len(x1), device=x1.device) if t is None else t
    tt = t[:, None, None, None]
    return F.mse_loss(net((1 - tt) * x0 + tt * x1, t), x1 - x0)


class EulerSampler(nn.Module):
    """Integrates dx/dt = v(x, t) from noise at t = 0 to an image at t = 1 in ``nfe`` Euler steps."""

    data_shape = SHAPE

    def __init__(self, net: nn.Module, nfe: int = PLAIN_NFE):
        super().__init__()
        self.net, self.nfe = net, nfe

    def sampling_protocol(self) -> dict:
        return {"solver": "euler", "nfe": self.nfe}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        x = torch.randn(n, *SHAPE, generator=generator, device=DEVICE)  # t = 0
        for step in range(self.nfe):
            t = torch.full((n,), step / self.nfe, device=DEVICE)
            x = x + self.net(x, t) / self.nfe
        return ((x + 1) / 2).clamp(0, 1)  # t = 1, [-1, 1] -> [0, 1]


def train_plain_flow_matching(seconds: float, seed: int, batch_size: int, nfe: int = PLAIN_NFE) -> Trained:
    return train_plain_model(seconds, seed, batch_size, lambda: PlainUNet(PLAIN_WIDTH),
                             lambda net, x: rectified_flow_loss(net, x * 2 - 1),
                             finish=lambda net, data: EulerSampler(net, nfe))


def torchcfm_loss(net: nn.Module, matcher, x1: Tensor, x0: Tensor | None = None, t: Tensor | None = None) -> Tensor:
    """torchcfm's training step: the matcher pairs x0 ~ N(0, I) with the images x1 (for exact OT: draws
    pairs from the minibatch OT plan) and gives t, x_t and u_t = x1 - x0; the loss is mean((v(t, x_t) - u_t)^2)."""
    x0 = torch.randn_like(x1) if x0 is None else x0
    t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1, t)
    return torch.mean((net(t, xt) - ut) ** 2)


class TorchCFMPeer(nn.Module):
    """torchcfm's U-Net sampled as its MNIST notebook does: torchdyn ``NeuralODE`` with dopri5."""

    data_shape = SHAPE

    def __init__(self):
        super().__init__()
        from torchcfm.models.unet import UNetModel  # the bench extra

        self.net = UNetModel(dim=SHAPE, num_channels=32, num_res_blocks=1)
        self.evaluations: list[int] = []  # NFE of each sample() call

    def sampling_protocol(self) -> dict:
        mean = statistics.fmean(self.evaluations) if self.evaluations else None
        return {"solver": "dopri5 (torchdyn)", "atol": PEER_TOLERANCE, "rtol": PEER_TOLERANCE,
                "nfe": None if mean is None else round(mean, 1), "nfe_per_call": list(self.evaluations)}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        from torchdyn.core import NeuralODE

        node = NeuralODE(self.net, solver="dopri5", sensitivity="adjoint", atol=PEER_TOLERANCE, rtol=PEER_TOLERANCE)
        x0 = torch.randn(n, *SHAPE, generator=generator, device=DEVICE)
        trajectory = node.trajectory(x0, t_span=torch.linspace(0, 1, 2, device=DEVICE))  # (2, n, 1, 28, 28)
        self.evaluations.append(int(node.vf.nfe))
        return (trajectory[-1].clip(-1, 1) + 1) / 2


def train_torchcfm(seconds: float, seed: int, batch_size: int = 128) -> Trained:
    from torchcfm.conditional_flow_matching import ExactOptimalTransportConditionalFlowMatcher

    np.random.seed(seed)  # the OT plan's pairs are drawn with numpy
    matcher = ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)
    return train_plain_model(seconds, seed, batch_size, TorchCFMPeer,
                             lambda model, x: torchcfm_loss(model.net, matcher, x * 2 - 1),
                             optimizer=torch.optim.Adam)  # torch's defaults, as their notebook


# ================================================================================================
# normalizing flow
# ================================================================================================
LOGIT_MARGIN = 0.05  # RealNVP's alpha: v = logit(alpha + (1 - 2 alpha) y) keeps the logit finite at y = 0


def squeeze(x: Tensor) -> Tensor:
    """[N, C, H, W] -> [N, 4C, H/2, W/2]: each 2x2 patch becomes 4 channels (volume-preserving)."""
    n, c, h, w = x.shape
    return x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)


def unsqueeze(x: Tensor) -> Tensor:
    n, c, h, w = x.shape
    return x.view(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c // 4, 2 * h, 2 * w)


class AffineCoupling(nn.Module):
    """x_b' = x_b * exp(s) + t with (s, t) = net(x_a), x_a unchanged; log|det| = sum of s (nats).

    ``mask``: "checkerboard" (x_a: the pixels with (i + j) % 2 == parity, the net sees x with x_b zeroed) or
    "channel" (x_a: the first half of the channels if parity is 0, else the second).
    """

    def __init__(self, channels: int, hidden: int, mask: str, parity: int):
        super().__init__()
        self.mask, self.parity = mask, parity
        given, changed = (channels, channels) if mask == "checkerboard" else (channels // 2, channels - channels // 2)
        self.net = nn.Sequential(nn.Conv2d(given, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, 2 * changed, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)  # starts as the identity
        nn.init.zeros_(self.net[-1].bias)
        self.scale = nn.Parameter(torch.ones(changed, 1, 1))

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(what the net sees, the mask of the changed entries: 1 there, broadcastable to x)."""
        if self.mask == "checkerboard":
            i, j = torch.meshgrid(torch.arange(x.shape[2], device=x.device), torch.arange(x.shape[3], device=x.device),
                                  indexing="ij")
            changed = ((i + j) % 2 != self.parity).to(x.dtype)  # (H, W)
            return x * (1 - changed), changed
        half = x.shape[1] // 2
        return (x[:, :half], None) if self.parity == 0 else (x[:, half:], None)

    def _params(self, given: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self.net(given).chunk(2, dim=1)
        return self.scale * torch.tanh(s), t

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x -> (x', log|det dx'/dx| ``[N]``)."""
        given, changed = self._split(x)
        s, t = self._params(given)
        if changed is not None:  # checkerboard: s and t act on the changed pixels only
            s, t = s * changed, t * changed
            return x * torch.exp(s) + t, s.flatten(1).sum(1)
        a, b = x.chunk(2, dim=1) if self.parity == 0 else x.chunk(2, dim=1)[::-1]
        b = b * torch.exp(s) + t
        return torch.cat([a, b] if self.parity == 0 else [b, a], 1), s.flatten(1).sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        given, changed = self._split(y)  # the given entries are unchanged, so the net sees the same input
        s, t = self._params(given)
        if changed is not None:
            s, t = s * changed, t * changed
            return (y - t) * torch.exp(-s)
        a, b = y.chunk(2, dim=1) if self.parity == 0 else y.chunk(2, dim=1)[::-1]
        b = (b - t) * torch.exp(-s)
        return torch.cat([a, b] if self.parity == 0 else [b, a], 1)


class RealNVP(DequantizedFlow):
    """RealNVP for ``[N, 1, 28, 28]`` images: y in [0, 1) -> latents (x = the logit-space image).

    scale 1 (1x28x28): 3 checkerboard couplings, squeeze (4x14x14), 3 channel couplings, factor out 2 channels;
    scale 2 (2x14x14): 3 checkerboard couplings, squeeze (8x7x7), 3 channel couplings, factor out 4 channels;
    last (4x7x7): 4 checkerboard couplings. Every latent is N(0, I).
    """

    data_shape = SHAPE
    likelihood_name = "RealNVP (plain baseline)"

    def __init__(self, hidden: int):
        super().__init__()

        def couplings(channels: int, mask: str, count: int) -> nn.ModuleList:
            return nn.ModuleList(AffineCoupling(channels, hidden, mask, k % 2) for k in range(count))

        self.scales = nn.ModuleList(nn.ModuleList([couplings(c, "checkerboard", 3), couplings(4 * c, "channel", 3)])
                                    for c in (1, 2))
        self.last = couplings(4, "checkerboard", 4)

    # y <-> v: the logit preprocessing and its log-determinant
    @staticmethod
    def to_logits(y: Tensor) -> tuple[Tensor, Tensor]:
        """y in [0, 1) -> v = logit(p), p = a + (1 - 2a) y; log|dv/dy| = log(1 - 2a) - log p - log(1 - p), summed."""
        p = LOGIT_MARGIN + (1 - 2 * LOGIT_MARGIN) * y
        v = torch.log(p) - torch.log1p(-p)
        return v, (math.log(1 - 2 * LOGIT_MARGIN) - torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)

    @staticmethod
    def from_logits(v: Tensor) -> Tensor:
        return (torch.sigmoid(v) - LOGIT_MARGIN) / (1 - 2 * LOGIT_MARGIN)

    def forward(self, y: Tensor) -> tuple[list[Tensor], Tensor]:
        """Dequantised images ``[N, 1, 28, 28]`` in [0, 1) -> (latents [2x14x14, 4x7x7, 4x7x7], log|det| ``[N]``
        of the whole map y -> latents, nats)."""
        x, log_det = self.to_logits(y)
        latents = []
        for checkerboard, channel in self.scales:
            for layer in checkerboard:
                x, d = layer(x)
                log_det = log_det + d
            x = squeeze(x)
            for layer in channel:
                x, d = layer(x)
                log_det = log_det + d
            out, x = x.chunk(2, dim=1)  # factor out half the channels
            latents.append(out)
        for layer in self.last:
            x, d = layer(x)
            log_det = log_det + d
        return [*latents, x], log_det

    def inverse(self, latents: list[Tensor]) -> Tensor:
        """Latents as ``forward`` gives them -> y in [0, 1)."""
        x = latents[-1]
        for layer in reversed(self.last):
            x = layer.inverse(x)
        for (checkerboard, channel), out in zip(reversed(self.scales), reversed(latents[:-1])):
            x = torch.cat([out, x], 1)
            for layer in reversed(channel):
                x = layer.inverse(x)
            x = unsqueeze(x)
            for layer in reversed(checkerboard):
                x = layer.inverse(x)
        return self.from_logits(x)

    def continuous_log_likelihood(self, y: Tensor) -> Tensor:
        """log p_Y(y) ``[N]`` nats of dequantised images y ``[N, 1, 28, 28]`` in [0, 1)."""
        latents, log_det = self(y)
        return sum(standard_normal_log_density(z) for z in latents) + log_det

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        shapes = [(2, 14, 14), (4, 7, 7), (4, 7, 7)]
        y = self.inverse([torch.randn(n, *shape, generator=generator, device=DEVICE) for shape in shapes])
        return (torch.floor(y * 256).clamp(0, 255) / 255)  # the dequantisation undone: 8-bit levels


def train_plain_flow(seconds: float, seed: int, hidden: int, batch_size: int = 64) -> Trained:
    # the loss in nats per dimension of y: the scale of bits/dim, times log 2
    return train_plain_model(seconds, seed, batch_size, lambda: RealNVP(hidden),
                             lambda model, x: -model.continuous_log_likelihood(dequantize(x)).mean() / NUM_DIMS)


class NormflowsGlow(DequantizedFlow):
    """normflows' multi-scale Glow over y in [0, 1) (no logit: as in their example), unconditional.

    Level 0 is the coarsest: K GlowBlocks on 8x7x7, then ``Squeeze`` (normflows' forward, latent -> data, is
    the 2x2 un-squeeze) to 2x14x14, ``Merge`` with the level-1 latent 2x14x14 -> 4x14x14, K GlowBlocks, and
    ``Squeeze`` to 1x28x28.
    """

    data_shape = SHAPE
    likelihood_name = "normflows Glow (peer)"  # their bits/dim: nll / (D log 2) + 8, our log_likelihood's

    def __init__(self, levels: int = 2, blocks: int = 16, hidden: int = 256):
        super().__init__()
        import normflows as nf  # the bench extra

        # normflows 1.7.3's invertible 1x1 convolution calls the deprecated torch.lu: a warning, not our concern
        warnings.filterwarnings("ignore", message="torch.lu is deprecated")

        channels, height, width = SHAPE
        bases, flows, merges = [], [], []
        for i in range(levels):
            flows.append([*(nf.flows.GlowBlock(channels * 2 ** (levels + 1 - i), hidden, split_mode="channel",
                                               scale=True) for _ in range(blocks)), nf.flows.Squeeze()])
            if i == 0:  # the coarsest latent: 2^(L+1) C channels at 1/2^L of the side
                latent = (channels * 2 ** (levels + 1), height // 2 ** levels, width // 2 ** levels)
            else:  # the latent merged in at level i: 2^(L-i) C channels at 1/2^(L-i) of the side
                latent = (channels * 2 ** (levels - i), height // 2 ** (levels - i), width // 2 ** (levels - i))
                merges.append(nf.flows.Merge())
            bases.append(nf.distributions.DiagGaussian(latent))
        self.flow = nf.MultiscaleFlow(bases, flows, merges, class_cond=False)

    def continuous_log_likelihood(self, y: Tensor) -> Tensor:
        return self.flow.log_prob(y, None)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Their ``MultiscaleFlow.sample`` with the base noise drawn from ``generator``; clamped to [0, 1] as
        their example shows samples."""
        latents = [base.loc + base.log_scale.exp() * torch.randn(n, *base.shape, generator=generator, device=DEVICE)
                   for base in self.flow.q0]
        x, _ = self.flow.forward_and_log_det(latents)
        return x.clamp(0, 1)


def train_normflows_glow(seconds: float, seed: int, batch_size: int = 128) -> Trained:
    started = time.perf_counter()
    torch.manual_seed(seed)
    data = fashion_mnist(batch_size)
    model = NormflowsGlow().to(DEVICE)
    optimizer = torch.optim.Adamax(model.parameters(), lr=1e-3, weight_decay=1e-5)
    images = 0
    for x, _ in batches_until(started + seconds, data.train_dataloader):
        loss = model.flow.forward_kld(dequantize(x.to(DEVICE)))  # mean -log p_Y(y), nats per image
        optimizer.zero_grad()
        if torch.isfinite(loss):  # their loop skips a non-finite step
            loss.backward()
            optimizer.step()
        images += len(x)
    seconds_used = time.perf_counter() - started
    return Trained(model.eval(), images, seconds_used, seconds_used)


# ================================================================================================
# the settings quality_at_budget trains: family -> [(setting, description, train(seconds, seed) -> Trained)]
# ================================================================================================
def _autoencoder(nets: Callable[[int], tuple[nn.Module, nn.Module]], variational: bool) -> Callable[..., Trained]:
    return functools.partial(train_plain_autoencoder, nets=nets, variational=variational)


PLAIN_SETTINGS = {
    "gan": [("A", "DCGAN, batch 64", functools.partial(train_plain_gan, batch_size=64)),
            ("B", "DCGAN, batch 128", functools.partial(train_plain_gan, batch_size=128))],
    "vae": [("A", "MLP 784-400-20, Bernoulli decoder", _autoencoder(mlp_nets, variational=True)),
            ("B", "conv 32-64, 20 latents, Bernoulli decoder", _autoencoder(conv_nets, variational=True))],
    "ae": [("A", "MLP 784-400-20, BCE", _autoencoder(mlp_nets, variational=False)),
           ("B", "conv 32-64, 20-d code, BCE", _autoencoder(conv_nets, variational=False))],
    "pixelcnn": [("A", "classic, 32 wide, 5 mask-B layers", functools.partial(train_plain_pixelcnn, width=32,
                                                                               b_layers=5)),
                 ("B", "classic, 64 wide, 7 mask-B layers", functools.partial(train_plain_pixelcnn, width=64,
                                                                               b_layers=7))],
    "flow_matching": [("A", "rectified flow, U-Net 32 wide, batch 64",
                       functools.partial(train_plain_flow_matching, batch_size=64)),
                      ("B", "rectified flow, U-Net 32 wide, batch 128",
                       functools.partial(train_plain_flow_matching, batch_size=128))],
    "flow": [("A", "RealNVP, 32 hidden channels, batch 64", functools.partial(train_plain_flow, hidden=32)),
             ("B", "RealNVP, 64 hidden channels, batch 64", functools.partial(train_plain_flow, hidden=64))],
}
# family -> (the peer library, its recipe, train(seconds, seed) -> Trained)
PEER_RECIPES = {
    "flow_matching": ("torchcfm", "their MNIST example: exact-OT CFM, sigma 0, their U-Net 32 wide, batch 128",
                      train_torchcfm),
    "flow": ("normflows", "their Glow example: L=2, K=16, 256 hidden, Adamax 1e-3, batch 128", train_normflows_glow),
}

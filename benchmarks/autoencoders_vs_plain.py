"""lightning-gen's AE and VAE against hand-written plain-PyTorch MLP autoencoders, same CPU wall-clock budget.

    python benchmarks/autoencoders_vs_plain.py [--minutes 3] [--num_samples 5000] [--nll_images 2000] [--k 128]
    python benchmarks/autoencoders_vs_plain.py --quick     # 1 s of training each, 100 samples: a crash check

Four runs, one after another on this machine, each trained for ``--minutes`` of wall-clock time on the
Fashion-MNIST train split (54k images, the same ``FashionMNISTDataModule`` loader; batch 128 for the plain
loops, the config's own batch size for lightning-gen's, as it is part of the recipe), seed 0:

1. plain MLP VAE: a loop written by hand around an MLP VAE in the style of Kingma & Welling (2014), one hidden
   layer of 500 ReLU units in the encoder and in the decoder, 16 latents, loss -ELBO with one reparameterised
   sample, no KL warm-up, Adam lr 1e-3;
2. lightning-gen configs/vae_fmnist.yaml's model (whatever the config holds: its nets, β, KL warm-up, optimizer
   and sampling path) fitted by ``lightning.pytorch.Trainer`` (no validation, logger or checkpoints);
3. plain MLP AE: the same MLP with a deterministic 16-d code, loss -log p(x | decoder(encoder(x)));
4. lightning-gen configs/ae_fmnist.yaml's model (the VAE's nets with a deterministic code).

Likelihood: every run, plain ones included, uses the package's ``DiscretizedLogisticLikelihood`` (one logistic
per pixel integrated over its 8-bit bin) on the 8-bit pixels, so NLLs are discrete and comparable in bits/dim
(uniform pixels: 8). Test NLL: ``lightning_gen.metrics.evaluate_model``'s ``nll_bpd`` (IWAE bound with ``--k``
importance samples, the first ``--nll_images`` test images, the same seeds for every model; the plain VAE's
IWAE is written here with the package's Gaussian helpers). An AE has no likelihood: "n/a". Test recon bits/dim:
-log p(x | decoder(code of x)), the posterior mean for the VAEs, over the same images. FID: ``evaluate_model``'s
``fid`` in the package's Fashion-MNIST classifier features (fmnist_clf), ``--num_samples`` samples vs as many
test images. Samples are the decoder's mean image; the plain VAE decodes z ~ N(0, I), the package's VAE follows its
config's sampling path (its fitted posterior mixture by default); the AEs decode draws from a
full-covariance Gaussian fitted to training codes (the package's AE: the codes of its last training epoch; the
plain AE: the codes of the first 10k train images after training, outside the budget).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml
from budget import StopAfter, train_plain  # noqa: E402  (benchmarks/ is the script's folder)
from torch import Tensor, nn

from lightning_gen.data import FashionMNISTDataModule
from lightning_gen.losses import DiscretizedLogisticLikelihood, log_normal, reparameterize
from lightning_gen.losses.gaussian import gaussian_kl_to_standard, log_standard_normal
from lightning_gen.metrics import EvaluationSettings, evaluate_model
from lightning_gen.models import AE, VAE

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHAPE, BATCH, LR, LATENT, HIDDEN = (1, 28, 28), 128, 1e-3, 16, 500
PIXELS = math.prod(SHAPE)


class PlainMLPAutoencoder(nn.Module):
    """MLP encoder 784 -> 500 -> code and decoder code -> 500 -> (mean, log scale) of each pixel's logistic.

    ``variational``: the code is q(z|x) = N(mean, diag(exp(logvar))) and the prior N(0, I) (a VAE);
    otherwise a deterministic code (an AE), sampled from a Gaussian fitted to training codes.
    Exposes what ``evaluate_model`` asks for: ``data_shape``, ``sample``, ``prepare_input`` and, for the
    VAE, ``log_likelihood(x, k)`` in nats per image.
    """

    def __init__(self, variational: bool):
        super().__init__()
        self.data_shape, self.variational = SHAPE, variational
        self.likelihood = DiscretizedLogisticLikelihood()
        outputs = 2 * LATENT if variational else LATENT
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(PIXELS, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, outputs))
        self.decoder = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2 * PIXELS),
                                     nn.Unflatten(1, (2 * SHAPE[0], *SHAPE[1:])))  # (N, 2C, H, W): means, log scales
        self.register_buffer("code_mean", torch.zeros(LATENT))
        self.register_buffer("code_scale_tril", torch.eye(LATENT))
        if variational:
            self.log_likelihood = self._iwae  # only the VAE offers the likelihood surface

    def prepare_input(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return images

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.encoder(x).chunk(2, dim=1)  # (N, d) each
        return mean, logvar

    def encode(self, x: Tensor) -> Tensor:
        return self.posterior(x)[0] if self.variational else self.encoder(x)

    def loss(self, x: Tensor) -> Tensor:
        """-ELBO (VAE) or -log p(x | decoder(encoder(x))) (AE), mean over the batch, nats per image."""
        if not self.variational:
            return -self.likelihood.log_prob(self.decoder(self.encoder(x)), x).mean()
        mean, logvar = self.posterior(x)
        z = reparameterize(mean, logvar)
        return (gaussian_kl_to_standard(mean, logvar) - self.likelihood.log_prob(self.decoder(z), x)).mean()

    @torch.no_grad()
    def _iwae(self, x: Tensor, k: int = 128) -> Tensor:
        """log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x): ``[N]`` nats per image."""
        mean, logvar = self.posterior(x)
        log_weights = []
        for _ in range(k):
            z = reparameterize(mean, logvar)  # (N, d)
            log_weights.append(self.likelihood.log_prob(self.decoder(z), x) + log_standard_normal(z)
                               - log_normal(z, mean, logvar))
        return torch.logsumexp(torch.stack(log_weights), dim=0) - math.log(k)

    @torch.no_grad()
    def fit_code_gaussian(self, images: Tensor) -> None:
        codes = torch.cat([self.encoder(chunk) for chunk in images.split(1000)]).double()  # (M, d)
        covariance = torch.cov(codes.T, correction=0) + 1e-6 * torch.eye(LATENT, dtype=torch.float64)
        self.code_mean.copy_(codes.mean(0).float())
        self.code_scale_tril.copy_(torch.linalg.cholesky(covariance).float())

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        eps = torch.randn(n, LATENT, generator=generator)
        z = eps if self.variational else self.code_mean + eps @ self.code_scale_tril.T
        return self.likelihood.mean(self.decoder(z))


def train_data() -> FashionMNISTDataModule:
    data = FashionMNISTDataModule(batch_size=BATCH, val_fraction=0.1, split_seed=0)
    data.setup("fit")
    return data


def plain(variational: bool, seconds: float) -> tuple[PlainMLPAutoencoder, int, float]:
    pl.seed_everything(0, verbose=False)
    model, data = PlainMLPAutoencoder(variational), train_data()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    images, elapsed = train_plain(seconds, data.train_dataloader, model.loss, optimizer)
    if not variational:
        pool = data.train_set
        model.fit_code_gaussian(torch.stack([pool[i][0] for i in range(min(10_000, len(pool)))]))
    return model.eval(), images, elapsed


def lightning_default(config_name: str, model_class, seconds: float):
    """The config's model (its init args and optimizer) fitted by the Trainer for ``seconds``."""
    config = yaml.safe_load((CONFIGS / config_name).read_text())
    init_args = dict(config["model"]["init_args"])
    optimizer = init_args.pop("optimizer")
    assert optimizer["class_path"] == "torch.optim.Adam", optimizer
    data_args = config["data"]["init_args"]
    pl.seed_everything(config.get("seed_everything", 0), verbose=False)
    model = model_class(data_shape=SHAPE, optimizer=functools.partial(torch.optim.Adam, **optimizer["init_args"]),
                        **init_args)
    clock = StopAfter(seconds)
    trainer = pl.Trainer(max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[clock], logger=False,
                         accelerator="cpu", devices=1, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(model, datamodule=FashionMNISTDataModule(**data_args))
    return model.eval(), clock.images, clock.seconds


@torch.no_grad()
def recon_bits_per_dim(model, data: FashionMNISTDataModule, limit: int) -> float:
    """Mean -log p(x | decoder(encode(x))) over the first ``limit`` test images, bits/dim."""
    total, seen = 0.0, 0
    for x, _ in data.split_dataloader("test", batch_size=500):
        x = x[: limit - seen]
        total -= model.likelihood.log_prob(model.decoder(model.encode(x)), x).sum().item()
        seen += len(x)
        if seen >= limit:
            break
    return total / seen / (PIXELS * math.log(2))


def scores(model, data, args) -> dict[str, float]:
    fid = EvaluationSettings(metrics=["fid"], num_samples=args.num_samples, split="test", max_real=args.num_samples,
                             progress=False)
    out = {r.name: r.value for r in evaluate_model(model, data, fid, "cpu")}
    if callable(getattr(model, "log_likelihood", None)):
        nll = EvaluationSettings(metrics=["nll_bpd"], split="test", max_real=args.nll_images,
                                 importance_samples=args.k, progress=False)
        out.update({r.name: r.value for r in evaluate_model(model, data, nll, "cpu")})
    out["recon_bpd"] = recon_bits_per_dim(model, data, args.nll_images)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="training wall-clock budget of each run")
    parser.add_argument("--num_samples", type=int, default=5000, help="FID: samples and test images")
    parser.add_argument("--nll_images", type=int, default=2000, help="test images for the NLL and recon columns")
    parser.add_argument("--k", type=int, default=128, help="importance samples of the IWAE bound")
    parser.add_argument("--quick", action="store_true", help="1 s each, 100 samples, 100 images at k=4: a crash check")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.num_samples, args.nll_images, args.k = 1 / 60, 100, 100, 4
    seconds = args.minutes * 60
    load_before = os.getloadavg()
    runs = {
        "plain MLP VAE (K&W style, 500 hidden)": lambda: plain(True, seconds),
        "lightning-gen vae_fmnist.yaml": lambda: lightning_default("vae_fmnist.yaml", VAE, seconds),
        "plain MLP AE (500 hidden)": lambda: plain(False, seconds),
        "lightning-gen ae_fmnist.yaml": lambda: lightning_default("ae_fmnist.yaml", AE, seconds),
    }
    data = FashionMNISTDataModule(batch_size=BATCH, val_fraction=0.1, split_seed=0)
    rows = []
    for name, run in runs.items():
        start = time.perf_counter()
        model, images, elapsed = run()
        trained = time.perf_counter()
        rows.append((name, sum(p.numel() for p in model.parameters()), images, elapsed, scores(model, data, args)))
        print(f"done: {name} (training run {trained - start:.1f} s, scoring {time.perf_counter() - trained:.1f} s)",
              file=sys.stderr, flush=True)
    load_after = os.getloadavg()

    print(f"\nAE and VAE on Fashion-MNIST, {seconds:g} s of training each, batch {BATCH}, Adam {LR:g}, seed 0"
          f"{' (quick: not meaningful)' * args.quick}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load average (1/5/15 min) {' '.join(f'{x:.2f}' for x in load_before)} at the start, "
          f"{' '.join(f'{x:.2f}' for x in load_after)} at the end")
    print(f"likelihood: discretised logistic on 8-bit pixels for every run; test NLL = IWAE bound, k={args.k}, "
          f"first {args.nll_images} test images; FID in fmnist_clf features, {args.num_samples} samples vs "
          f"{args.num_samples} test images\n")
    print("| run | params | images seen | epochs | images/s | test nll bits/dim | test recon bits/dim | FID |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    data.setup("fit")
    train_images = len(data.train_set)
    for name, params, images, elapsed, s in rows:
        nll = f"{s['nll_bpd']:.4f}" if "nll_bpd" in s else "n/a (no likelihood)"
        print(f"| {name} | {params:,} | {images:,} | {images / train_images:.2f} | {images / elapsed:.0f} | {nll} "
              f"| {s['recon_bpd']:.4f} | {s['fid_fmnist_clf']:.1f} |")


if __name__ == "__main__":
    main()

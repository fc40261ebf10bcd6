"""What the registry's metrics compute: ``MetricResult``, one compute function per metric, and
``EvaluationRun``, the passes over samples and over a real split that several metrics share.

A compute function takes the run and returns its results; it asks the run for what it needs, so
features are extracted, and the split is read, once however many metrics use them.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.aggregation import MeanMetric
from torchmetrics.image.kid import KernelInceptionDistance
from tqdm import tqdm

from lightning_gen.data.base import batch_images
from lightning_gen.data.toy import mixture_means
from lightning_gen.errors import LightningGenError
from lightning_gen.metrics.density_coverage import DensityCoverage
from lightning_gen.metrics.features import FeatureExtractor, build_feature_extractor, default_features
from lightning_gen.metrics.finite import count_nonfinite, raise_if_nonfinite
from lightning_gen.metrics.frechet import BOOTSTRAP_DRAWS, FIDInfinity, GuardedFrechetInceptionDistance
from lightning_gen.metrics.memorisation import Memorisation
from lightning_gen.metrics.mode_coverage import coverage_from_counts, high_quality_counts
from lightning_gen.metrics.precision_recall import PrecisionRecall
from lightning_gen.metrics.real_features import cached_real_features
from lightning_gen.metrics.spectrum import NYQUIST_SHARE, PowerSpectrum, high_frequency_ratio
from lightning_gen.models.base import has_surface

if TYPE_CHECKING:
    from lightning_gen.metrics.registry import EvaluationSettings, MetricSpec


class MetricError(LightningGenError):
    """An unknown metric, a metric the model cannot support, or settings that cannot produce it."""


@dataclass
class MetricResult:
    name: str
    value: float
    protocol: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def samples_per_rank(num_samples: int, rank: int, world: int) -> int:
    return num_samples // world + (1 if rank < num_samples % world else 0)


class _GivenFeatures(nn.Module):
    """Lets torchmetrics' FID/KID take features we extracted once, instead of images."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


@dataclass
class SampleFeatures:
    """This process's share of the real images' features and its samples' features (float64, ``[N, dim]``)."""

    name: str  # the extractor's: result names end with it
    dim: int
    real: Tensor
    fake: Tensor
    num_real: int  # over all processes
    protocol: dict

    def fill(self, metric: Metric) -> Metric:
        """``metric`` updated once with the real share and once with the samples. torchmetrics gathers a
        list state element by element, so equal update counts on every process keep KID's gathered order
        (and the collectives) aligned, and the order equals the single-process one."""
        metric = metric.to(self.real.device)
        metric.update(self.real, real=True)
        metric.update(self.fake, real=False)
        return metric


class EvaluationRun:
    """One ``evaluate_model`` call as compute functions see it: model, data, settings, device, and the
    passes that several metrics share, each made on first use."""

    def __init__(self, model, datamodule, settings: EvaluationSettings, specs: list[MetricSpec], device):
        self.model, self.datamodule, self.settings, self.specs, self.device = model, datamodule, settings, specs, device
        self.rank, self.world = rank_and_world()

    @cached_property
    def extractor(self) -> FeatureExtractor:
        settings = self.settings
        return build_feature_extractor(settings.features or default_features(self.model.data_shape),
                                       settings.features_weights, self.device)

    def _real_features(self, split: str) -> tuple[Tensor, dict]:
        """All real features of ``split`` (up to ``max_real``) on every process, and their cache key: process
        0 computes (or reads from the cache) and broadcasts them."""
        settings = self.settings
        if self.rank == 0:
            real, key, _ = cached_real_features(self.datamodule, split, self.extractor, settings.max_real,
                                                settings.cache_dir, self.device, settings.progress)
            payload = [real.cpu(), key]
        else:
            payload = [None, None]
        if self.world > 1:
            dist.broadcast_object_list(payload, src=0)
        return payload[0], payload[1]

    @cached_property
    def train_features(self) -> tuple[Tensor, dict]:
        """Features of up to ``max_real`` training images (all of them on every process, float64) and what
        chose them: the memorisation check's reference."""
        real, key = self._real_features("train")
        return real.to(self.device, torch.float64), key

    @cached_property
    def features(self) -> SampleFeatures:
        settings, device, rank, world, extractor = self.settings, self.device, self.rank, self.world, self.extractor
        # Each process feeds a contiguous share of the real features, so every metric state is filled on every
        # process (an empty list state is skipped by torchmetrics' sync and would desynchronise the processes).
        real, key = self._real_features(settings.split)
        start = sum(samples_per_rank(len(real), r, world) for r in range(rank))
        share = real[start : start + samples_per_rank(len(real), rank, world)]

        fake, self._sample_spectrum = [], PowerSpectrum()
        wants_spectrum = any(spec.spectrum for spec in self.specs)

        def consume(images: Tensor) -> None:
            fake.append(extractor(images.to(device)).double())
            if wants_spectrum:  # the same samples serve the sharpness metric
                self._sample_spectrum.update(images)

        self._draw_samples(consume, f"{self._drawing} for {extractor.name} features")
        protocol = {
            **extractor.protocol(),
            "real_dataset": key["dataset"],
            "real_selection": key["args"],  # data_dir, subset, split seed...: what chose the real images
            "real_split": settings.split,
            "num_real": len(real),
            "num_generated": settings.num_samples,
            "sample_seed": settings.seed,
        }
        return SampleFeatures(extractor.name, extractor.num_features, share.to(device, torch.float64),
                              torch.cat(fake), len(real), protocol)

    @property
    def _drawing(self) -> str:
        """What the progress bar says the sample pass does: a model's ``progress_label`` (images read from
        a file are not sampled), else "sampling"."""
        return getattr(self.model, "progress_label", "sampling")

    def _draw_samples(self, consume, description: str) -> None:
        """This process's share of ``num_samples`` samples, batch by batch, to ``consume(images)``. A batch
        with a NaN or inf stops the drawing before it is consumed; then every process raises
        ``NonFiniteSamplesError`` (the counts are summed over processes, so none is left waiting)."""
        settings, rank = self.settings, self.rank
        # a generator per rank: every process draws different samples, reproducibly from the seed
        generator = torch.Generator(device=self.device).manual_seed(settings.seed * 1000 + rank)
        todo = samples_per_rank(settings.num_samples, rank, self.world)
        bad_values = bad_samples = drawn = 0
        with tqdm(total=todo, desc=description, disable=not settings.progress or rank, leave=False) as bar:
            while todo > 0:
                n = min(settings.batch_size, todo)
                images = self.model.sample(n, generator=generator)
                drawn += n
                bad_values, bad_samples = count_nonfinite(images)
                if bad_values:
                    break
                consume(images)
                todo -= n
                bar.update(n)
        counts = torch.tensor([bad_values, bad_samples, drawn], device=self.device)
        if self.world > 1:
            dist.all_reduce(counts)
        bad_values, bad_samples, drawn = counts.tolist()
        raise_if_nonfinite(bad_values, bad_samples, drawn,
                           f"samples of {type(self.model).__name__} (seed {settings.seed})")

    @cached_property
    def sample_spectrum(self) -> PowerSpectrum:
        """The power spectrum of all processes' samples: from the features pass when a metric needs features
        (the same samples), else from a pass of its own."""
        if any(spec.features for spec in self.specs):
            self.features  # noqa: B018  (the pass fills _sample_spectrum)
            spectrum = self._sample_spectrum
        else:
            spectrum = PowerSpectrum()
            self._draw_samples(spectrum.update, f"{self._drawing} for the power spectrum")
        spectrum.all_reduce()
        return spectrum

    @cached_property
    def real_spectrum(self) -> tuple[PowerSpectrum, int]:
        """The power spectrum of up to ``max_real`` images of the real split (each process reads them all: FFTs
        of the images are cheap), and how many images it holds."""
        spectrum, seen, limit = PowerSpectrum(), 0, self.settings.max_real
        for batch in self.datamodule.split_dataloader(self.settings.split):
            images = batch_images(batch)[: None if limit is None else limit - seen]
            spectrum.update(images)
            seen += len(images)
            if seen == limit:
                break
        return spectrum, seen

    @cached_property
    def likelihood_kwargs(self) -> dict:
        """Keyword arguments of ``model.log_likelihood``: ``k``, when the settings choose importance samples."""
        if self.settings.importance_samples is None:
            return {}
        if "k" not in inspect.signature(self.model.log_likelihood).parameters:
            raise MetricError(f"importance_samples applies to latent-variable models; {type(self.model).__name__}'s "
                              "likelihood takes no importance samples")
        return {"k": self.settings.importance_samples}

    def split_mean(self, name: str) -> tuple[float, dict]:
        """The mean of metric ``name``'s ``per_image`` value over the real split, and the pass's protocol."""
        means, protocol = self._split_pass
        return means[name], protocol

    @cached_property
    def _split_pass(self) -> tuple[dict[str, float], dict]:
        model, settings, device, rank, world = self.model, self.settings, self.device, self.rank, self.world
        likelihood_kwargs = self.likelihood_kwargs
        averaged = [spec for spec in self.specs if spec.per_image is not None]
        # float64 sums of ~1e3-nat terms (set_dtype after .to(): .to() resets a metric's dtype)
        means = {spec.name: MeanMetric().to(device).set_dtype(torch.float64) for spec in averaged}
        count = torch.zeros((), device=device)
        loader = self.datamodule.split_dataloader(settings.split)
        limit = min(settings.max_real or len(loader.dataset), len(loader.dataset))
        seen = 0
        # the bar counts the batches this pass reads (it stops at max_real), not the whole split's
        total = math.ceil(limit / loader.batch_size) if loader.batch_size else None
        batches = tqdm(loader, total=total, desc=f"likelihood on {settings.split}",
                       disable=not settings.progress or rank, leave=False)
        for index, batch in enumerate(batches):
            if seen >= limit:
                break
            images = batch_images(batch)[: limit - seen]
            seen += len(images)
            if index % world != rank:  # each process takes every world-th batch
                continue
            # every random draw of this batch (binarisation, importance samples) depends only on (seed, batch),
            # so the result is the same whatever the number of processes
            torch.manual_seed(settings.seed + index)
            generator = torch.Generator(device=device).manual_seed(settings.seed + index)
            x = model.prepare_input(images.to(device), generator)
            count += len(x)
            for spec in averaged:
                means[spec.name].update(spec.per_image(self, x, generator).double())
        if world > 1:
            dist.all_reduce(count)
        protocol = {"split": settings.split, "num_images": int(count.item()), "seed": settings.seed,
                    **(model.likelihood_protocol() if has_surface(model, "likelihood_protocol") else {})}
        if "k" in likelihood_kwargs:
            protocol["importance_samples"] = likelihood_kwargs["k"]
        return {name: float(mean.compute()) for name, mean in means.items()}, protocol


def compute_fid(run: EvaluationRun) -> list[MetricResult]:
    features = run.features
    fid = features.fill(GuardedFrechetInceptionDistance(feature=_GivenFeatures(features.dim)))  # float64 sums
    return [MetricResult(f"fid_{features.name}", float(fid.compute()), features.protocol)]


def compute_kid(run: EvaluationRun) -> list[MetricResult]:
    features, settings = run.features, run.settings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "KID will save all extracted features in buffer"
        kid = KernelInceptionDistance(feature=_GivenFeatures(features.dim), subsets=settings.kid_subsets,
                                      subset_size=settings.kid_subset_size)
    kid = features.fill(kid)
    kid.subset_size = subset_size = min(settings.kid_subset_size, features.num_real, settings.num_samples)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)  # KID draws its subsets from the global generator
        kid_mean, kid_std = kid.compute()
    protocol = {**features.protocol, "kid_subsets": settings.kid_subsets, "kid_subset_size": subset_size,
                "kid_std": float(kid_std)}
    return [MetricResult(f"kid_{features.name}", float(kid_mean), protocol)]


def compute_precision_recall(run: EvaluationRun) -> list[MetricResult]:
    features = run.features
    precision, recall = features.fill(PrecisionRecall(k=run.settings.pr_k)).compute()
    protocol = {**features.protocol, "k": run.settings.pr_k}
    return [MetricResult(f"precision_{features.name}", float(precision), protocol),
            MetricResult(f"recall_{features.name}", float(recall), protocol)]


def nll_per_image(run: EvaluationRun, x: Tensor, generator: torch.Generator) -> Tensor:
    return -run.model.log_likelihood(x, **run.likelihood_kwargs)


def compute_nll_bpd(run: EvaluationRun) -> list[MetricResult]:
    nats, protocol = run.split_mean("nll_bpd")
    bpd = nats / (math.prod(run.model.data_shape) * math.log(2))
    return [MetricResult("nll_bpd", bpd, {**protocol, "nll_nats_per_image": nats})]


def elbo_per_image(run: EvaluationRun, x: Tensor, generator: torch.Generator) -> Tensor:
    log_px_z, kl = run.model.elbo_terms(x, generator)
    return log_px_z - kl


def compute_elbo(run: EvaluationRun) -> list[MetricResult]:
    nats, protocol = run.split_mean("elbo")
    return [MetricResult("elbo", nats, {**protocol, "unit": "nats per image"})]


def compute_mode_coverage(run: EvaluationRun) -> list[MetricResult]:
    datamodule, settings, device = run.datamodule, run.settings, run.device
    if not hasattr(datamodule, "mixture"):
        raise MetricError("mode_coverage needs a toy mixture DataModule (ToyMixtureDataModule)")
    means = mixture_means(datamodule.mixture)
    counts = torch.zeros(len(means), device=device)
    run._draw_samples(lambda points: counts.add_(high_quality_counts(points, means, datamodule.std)),
                      f"sampling the {datamodule.mixture} mixture")
    if run.world > 1:
        dist.all_reduce(counts)
    protocol = {"mixture": datamodule.mixture, "std": datamodule.std, "num_generated": settings.num_samples,
                "sample_seed": settings.seed, "high_quality": "within 3 std of the nearest mode",
                "covered": "a mode with >= 20% of its fair share of high-quality samples"}
    values = coverage_from_counts(counts.cpu(), settings.num_samples)
    return [MetricResult(name, values[name], protocol) for name in ("modes_covered", "high_quality_fraction")]


def compute_sharpness(run: EvaluationRun) -> list[MetricResult]:
    samples, (real, num_real) = run.sample_spectrum, run.real_spectrum
    protocol = {"real_split": run.settings.split, "num_real": num_real, "num_generated": run.settings.num_samples,
                "sample_seed": run.settings.seed, "cutoff": f"radius > {NYQUIST_SHARE} x Nyquist",
                "real_spectrum": [round(float(v), 6) for v in real.radial()],
                "sample_spectrum": [round(float(v), 6) for v in samples.radial()]}
    return [MetricResult("hf_energy_ratio", high_frequency_ratio(samples, real), protocol)]


def compute_density_coverage(run: EvaluationRun) -> list[MetricResult]:
    features, k = run.features, run.settings.pr_k
    density, coverage = features.fill(DensityCoverage(k=k)).compute()
    protocol = {**features.protocol, "k": k}
    return [MetricResult(f"density_{features.name}", density, protocol),
            MetricResult(f"coverage_{features.name}", coverage, protocol)]


def compute_memorisation(run: EvaluationRun) -> list[MetricResult]:
    if run.settings.split == "train":
        raise MetricError("memorisation compares samples with the training images and needs held-out real images "
                          "as the yardstick: evaluate against split val or test, not train")
    features, (train, train_key) = run.features, run.train_features
    found = features.fill(Memorisation(train)).compute()
    protocol = {**features.protocol, "num_train": len(train), "train_selection": train_key["args"],
                "percentile": 1.0, "threshold": found.threshold, "closest_pairs": found.closest_pairs}
    return [MetricResult(f"memorised_share_{features.name}", found.share, protocol)]


def compute_fid_infinity(run: EvaluationRun) -> list[MetricResult]:
    features = run.features
    fit = features.fill(FIDInfinity(seed=run.settings.seed)).compute()
    protocol = {**features.protocol, "estimator": "least squares FID_N = a + b / N, a reported",
                "fid_at_n": [[size, round(fid, 6)] for size, fid in zip(fit.sizes, fit.fids)],
                "fid_slope": fit.slope, "fid_std": fit.fid_std, "bootstrap_draws": BOOTSTRAP_DRAWS}
    return [MetricResult(f"fid_infinity_{features.name}", fit.intercept, protocol)]

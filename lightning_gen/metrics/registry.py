"""The metric registry: one function, ``evaluate_model``, computes every metric for every model, for
both the training-time ``EvaluationCallback`` and the offline ``evaluate`` command.

Metrics (names as logged, with the feature extractor's name appended where features are used):

| name                    | needs                 | unit / direction                                  |
|-------------------------|-----------------------|---------------------------------------------------|
| ``fid_<features>``      | ``sample``            | Fréchet distance of feature Gaussians, lower better |
| ``kid_<features>``      | ``sample``            | unbiased MMD^2, cubic kernel (mean of subsets), lower better |
| ``precision_<features>``| ``sample``            | share of samples on the real manifold (k=3), higher better |
| ``recall_<features>``   | ``sample``            | share of real images on the sample manifold, higher better |
| ``nll_bpd``             | ``log_likelihood``    | bits per dimension, lower better                  |
| ``elbo``                | ``elbo_terms``        | nats per image, higher better                     |
| ``modes_covered`` (``mode_coverage``)         | ``sample`` on a toy mixture | see ``mode_coverage.py`` |
| ``high_quality_fraction`` (``mode_coverage``) | ``sample`` on a toy mixture | see ``mode_coverage.py`` |

Every result carries its protocol (features and weights hash, real split and count, number of
generated samples and their seed, estimator), so two numbers are compared only when protocols match.
FID/KID use torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` on features
extracted once (float64 sums), and all states reduce across processes, so DDP sync is by construction.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchmetrics.aggregation import MeanMetric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from tqdm import tqdm

from lightning_gen.data.base import batch_images
from lightning_gen.data.toy import mixture_means
from lightning_gen.errors import LightningGenError
from lightning_gen.metrics.features import build_feature_extractor, default_features
from lightning_gen.metrics.mode_coverage import coverage_from_counts, high_quality_counts
from lightning_gen.metrics.precision_recall import PrecisionRecall
from lightning_gen.metrics.real_features import cached_real_features
from lightning_gen.models.base import has_surface

SAMPLE_METRICS = ("fid", "kid", "precision_recall")
LIKELIHOOD_METRICS = {"nll_bpd": "log_likelihood", "elbo": "elbo_terms"}
MIXTURE_METRICS = ("mode_coverage",)
METRIC_NAMES = SAMPLE_METRICS + tuple(LIKELIHOOD_METRICS) + MIXTURE_METRICS


class MetricError(LightningGenError):
    """An unknown metric, a metric the model cannot support, or settings that cannot produce it."""


@dataclass
class MetricResult:
    name: str
    value: float
    protocol: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EvaluationSettings:
    """What to compute and on which data. ``num_samples`` generated images are compared with up to
    ``max_real`` images of the real ``split`` (all of it when ``None``)."""

    metrics: Sequence[str] = SAMPLE_METRICS
    num_samples: int = 10_000
    split: str = "test"
    max_real: int | None = None
    features: str | None = None  # None: default_features(data_shape)
    features_weights: str | None = None
    seed: int = 0
    batch_size: int = 500
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = 3
    importance_samples: int | None = None  # k of the IWAE bound for latent-variable models (None: the model's own)
    cache_dir: str | None = None
    progress: bool = True


def parse_metric_names(metrics: str | Sequence[str]) -> list[str]:
    names = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else [str(m) for m in metrics]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in METRIC_NAMES]
    if unknown or not names:
        raise MetricError(f"unknown metric(s) {unknown or names}; choose from {', '.join(METRIC_NAMES)}")
    return names


def supported_metrics(model: nn.Module, metrics: Sequence[str]) -> list[str]:
    """The metrics of ``metrics`` that ``model`` can be scored on: a likelihood metric needs its surface."""
    return [name for name in metrics if name not in LIKELIHOOD_METRICS or has_surface(model, LIKELIHOOD_METRICS[name])]


def check_model_supports(model: nn.Module, metrics: Sequence[str]) -> None:
    """Raise if a metric needs a surface the model lacks (e.g. a likelihood from a GAN)."""
    for name in metrics:
        if name in SAMPLE_METRICS + MIXTURE_METRICS and not has_surface(model, "sample"):
            raise MetricError(f"{name} needs samples, but {type(model).__name__} has no `sample` method")
        needed = LIKELIHOOD_METRICS.get(name)
        if needed and not has_surface(model, needed):
            raise MetricError(
                f"{name} needs an explicit likelihood (`{needed}`), but {type(model).__name__} defines its "
                f"density only implicitly, so there is no such number to report; remove {name} from the metrics"
            )


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GivenFeatures(nn.Module):
    """Lets torchmetrics' FID/KID take features we extracted once, instead of images."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def samples_per_rank(num_samples: int, rank: int, world: int) -> int:
    return num_samples // world + (1 if rank < num_samples % world else 0)


@torch.no_grad()
def _sample_metrics(model, datamodule, settings: EvaluationSettings, wanted: list[str], device) -> list[MetricResult]:
    rank, world = _rank_and_world()
    features_name = settings.features or default_features(model.data_shape)
    extractor = build_feature_extractor(features_name, settings.features_weights, device)
    dim = extractor.num_features
    fid = FrechetInceptionDistance(feature=_GivenFeatures(dim)).to(device)  # float64 sums and covariance sums
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "KID will save all extracted features in buffer"
        kid = KernelInceptionDistance(feature=_GivenFeatures(dim), subsets=settings.kid_subsets,
                                      subset_size=settings.kid_subset_size).to(device)
    precision_recall = PrecisionRecall(k=settings.pr_k).to(device)
    computed = {"fid": fid, "kid": kid, "precision_recall": precision_recall}
    used = [computed[name] for name in wanted]

    # Real features: process 0 computes (or reads from the cache) and broadcasts them; each process then
    # feeds a contiguous share, so every metric state is filled on every process (an empty list state
    # is skipped by torchmetrics' sync and would desynchronise the processes) and the gathered order
    # equals the single-process order.
    if rank == 0:
        real, key, _ = cached_real_features(datamodule, settings.split, extractor, settings.max_real,
                                            settings.cache_dir, device, settings.progress)
        payload = [real.cpu(), key]
    else:
        payload = [None, None]
    if world > 1:
        dist.broadcast_object_list(payload, src=0)
    real, key = payload
    start = sum(samples_per_rank(len(real), r, world) for r in range(rank))
    share = real[start : start + samples_per_rank(len(real), rank, world)]
    # One update per kind and process: torchmetrics gathers a list state element by element, so equal
    # update counts on every process are what keeps KID's gathered order (and the collectives) aligned.
    for metric in used:
        metric.update(share.to(device, torch.float64), real=True)

    # a generator per rank: every process draws different samples, reproducibly from the seed
    generator = torch.Generator(device=device).manual_seed(settings.seed * 1000 + rank)
    todo = samples_per_rank(settings.num_samples, rank, world)
    fake = []
    with tqdm(total=todo, desc=f"sampling for {'/'.join(wanted)}", disable=not settings.progress or rank,
              leave=False) as bar:
        while todo > 0:
            n = min(settings.batch_size, todo)
            images = model.sample(n, generator=generator)
            fake.append(extractor(images.to(device)).double())
            todo -= n
            bar.update(n)
    for metric in used:
        metric.update(torch.cat(fake), real=False)

    protocol = {
        **extractor.protocol(),
        "real_dataset": key["dataset"],
        "real_selection": key["args"],  # data_dir, subset, split seed...: what chose the real images
        "real_split": settings.split,
        "num_real": len(real),
        "num_generated": settings.num_samples,
        "sample_seed": settings.seed,
    }
    results = []
    suffix = extractor.name
    if "fid" in wanted:
        results.append(MetricResult(f"fid_{suffix}", float(fid.compute()), protocol))
    if "kid" in wanted:
        subset_size = min(settings.kid_subset_size, len(real), settings.num_samples)
        kid.subset_size = subset_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)  # KID draws its subsets from the global generator
            kid_mean, kid_std = kid.compute()
        kid_protocol = {**protocol, "kid_subsets": settings.kid_subsets, "kid_subset_size": subset_size,
                        "kid_std": float(kid_std)}
        results.append(MetricResult(f"kid_{suffix}", float(kid_mean), kid_protocol))
    if "precision_recall" in wanted:
        precision, recall = precision_recall.compute()
        pr_protocol = {**protocol, "k": settings.pr_k}
        results += [MetricResult(f"precision_{suffix}", float(precision), pr_protocol),
                    MetricResult(f"recall_{suffix}", float(recall), pr_protocol)]
    return results


@torch.no_grad()
def _likelihood_metrics(model, datamodule, settings: EvaluationSettings, wanted: list[str],
                        device) -> list[MetricResult]:
    rank, world = _rank_and_world()
    likelihood_kwargs = {}
    if settings.importance_samples is not None:
        if "k" not in inspect.signature(model.log_likelihood).parameters:
            raise MetricError(f"importance_samples applies to latent-variable models; {type(model).__name__}'s "
                              "likelihood takes no importance samples")
        likelihood_kwargs["k"] = settings.importance_samples
    # float64 sums of ~1e3-nat terms (set_dtype after .to(): .to() resets a metric's dtype)
    nll, elbo = (MeanMetric().to(device).set_dtype(torch.float64) for _ in range(2))
    count = torch.zeros((), device=device)
    loader = datamodule.split_dataloader(settings.split)
    limit = settings.max_real or len(loader.dataset)
    seen = 0
    batches = tqdm(loader, desc=f"likelihood on {settings.split}", disable=not settings.progress or rank, leave=False)
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
        if "nll_bpd" in wanted:
            nll.update(-model.log_likelihood(x, **likelihood_kwargs).double())
        if "elbo" in wanted:
            log_px_z, kl = model.elbo_terms(x, generator)
            elbo.update((log_px_z - kl).double())
    if world > 1:
        dist.all_reduce(count)
    protocol = {"split": settings.split, "num_images": int(count.item()), "seed": settings.seed,
                **(model.likelihood_protocol() if has_surface(model, "likelihood_protocol") else {})}
    if "k" in likelihood_kwargs:
        protocol["importance_samples"] = likelihood_kwargs["k"]
    results = []
    if "nll_bpd" in wanted:
        nats = float(nll.compute())
        bpd = nats / (math.prod(model.data_shape) * math.log(2))
        results.append(MetricResult("nll_bpd", bpd, {**protocol, "nll_nats_per_image": nats}))
    if "elbo" in wanted:
        results.append(MetricResult("elbo", float(elbo.compute()), {**protocol, "unit": "nats per image"}))
    return results


def evaluate_model(model, datamodule, settings: EvaluationSettings,
                   device: torch.device | str | None = None) -> list[MetricResult]:
    """Compute ``settings.metrics`` for ``model`` against ``datamodule``'s real images.

    Under ``torch.distributed`` every process must call this (the metrics synchronise); each draws
    its own share of the samples with its own generator, and all return the same results.
    """
    metrics = parse_metric_names(settings.metrics)
    check_model_supports(model, metrics)
    _, world = _rank_and_world()
    if settings.num_samples < max(2, world) and any(m in SAMPLE_METRICS for m in metrics):
        raise MetricError(f"num_samples must be at least {max(2, world)} (2, and one per process) for "
                          f"{', '.join(SAMPLE_METRICS)}, got {settings.num_samples}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    # evaluation draws from its own generators; forking keeps it from moving the global RNG streams
    # (data loaders take seeds from them), so training is the same with or without evaluation
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        try:
            return _evaluate(model, datamodule, settings, metrics, device)
        finally:
            model.train(was_training)


@torch.no_grad()
def _mixture_metrics(model, datamodule, settings: EvaluationSettings, device) -> list[MetricResult]:
    if not hasattr(datamodule, "mixture"):
        raise MetricError("mode_coverage needs a toy mixture DataModule (ToyMixtureDataModule)")
    rank, world = _rank_and_world()
    means = mixture_means(datamodule.mixture)
    generator = torch.Generator(device=device).manual_seed(settings.seed * 1000 + rank)
    counts, todo = torch.zeros(len(means), device=device), samples_per_rank(settings.num_samples, rank, world)
    while todo > 0:
        n = min(settings.batch_size, todo)
        counts += high_quality_counts(model.sample(n, generator=generator), means, datamodule.std)
        todo -= n
    if world > 1:
        dist.all_reduce(counts)
    protocol = {"mixture": datamodule.mixture, "std": datamodule.std, "num_generated": settings.num_samples,
                "sample_seed": settings.seed, "high_quality": "within 3 std of the nearest mode",
                "covered": "a mode with >= 20% of its fair share of high-quality samples"}
    values = coverage_from_counts(counts.cpu(), settings.num_samples)
    return [MetricResult(name, values[name], protocol) for name in ("modes_covered", "high_quality_fraction")]


def _evaluate(model, datamodule, settings: EvaluationSettings, metrics: list[str], device) -> list[MetricResult]:
    results = []
    if "mode_coverage" in metrics:
        results += _mixture_metrics(model, datamodule, settings, device)
    sample_wanted = [m for m in metrics if m in SAMPLE_METRICS]
    if sample_wanted:
        results += _sample_metrics(model, datamodule, settings, sample_wanted, device)
    likelihood_wanted = [m for m in metrics if m in LIKELIHOOD_METRICS]
    if likelihood_wanted:
        results += _likelihood_metrics(model, datamodule, settings, likelihood_wanted, device)
    return results

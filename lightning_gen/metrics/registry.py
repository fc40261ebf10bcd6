"""The metric registry: every metric is one ``MetricSpec`` row of ``METRICS``: the name it is asked for
by, the names it logs, the model surface it needs, its unit and better direction, the protocol entries
that describe a model rather than the evaluation, and its compute function (in ``compute.py``).
``evaluate_model`` computes them for every model, for both the training-time ``EvaluationCallback`` and
the offline ``evaluate`` command; ``compare``, its report and the W&B dashboard read directions and
protocols from the same rows. Adding a metric is a compute function and a row.

Every result carries its protocol (features and weights hash, real split and count, number of
generated samples and their seed, estimator), so two numbers are compared only when protocols match.
FID/KID use torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` on features
extracted once (float64 sums), and all states reduce across processes, so DDP sync is by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Literal, Sequence

import torch
from torch import Tensor, nn

from lightning_gen.errors import check_range
from lightning_gen.metrics.compute import (
    EvaluationRun,
    MetricError,
    MetricResult,
    compute_density_coverage,
    compute_elbo,
    compute_fid,
    compute_fid_infinity,
    compute_kid,
    compute_memorisation,
    compute_mode_coverage,
    compute_nll_bpd,
    compute_precision_recall,
    compute_sharpness,
    elbo_per_image,
    nll_per_image,
    rank_and_world,
    samples_per_rank,  # noqa: F401  (re-exported for callers of the registry)
)
from lightning_gen.metrics.features import build_feature_extractor, default_features
from lightning_gen.models.base import has_surface


@dataclass
class EvaluationSettings:
    """The protocol of an evaluation (what to compute, on which data)

    The one type, with the one set of defaults, behind every way to evaluate: the training-time
    ``EvaluationCallback``, ``evaluate``, ``evaluate --samples`` and ``compare`` take these fields as their
    options (jsonargparse reads them, and this docstring for their help). ``num_samples``
    generated images are compared with up to ``max_real`` images of the real ``split`` (all of it when None).
    Metric names are parsed once, here.

    Args:
        metrics: comma-separated names or a list (fid, kid, precision_recall, nll_bpd, elbo, ...); default:
            what the registry picks for the model (``default_metrics``: the sample metrics and, where the
            model has a likelihood, nll_bpd; mode coverage for points).
        num_samples: generated samples for the sample metrics (fid, kid, precision_recall, ...).
        split: the real split to compare with (train, val or test).
        max_real: at most this many real images (default: the whole split).
        features: feature extractor: inception, fmnist_clf or a class path (default: by the data's shape).
        features_weights: weights file of the feature extractor (e.g. Inception offline).
        seed: seed of the sample generator (and of KID's subsets and FID-infinity's draws).
        batch_size: images per sampling and feature batch.
        kid_subsets: subsets KID averages over (its protocol records the number); each costs three kernel
            matrices of kid_subset_size squared entries, so training-time configs may use fewer.
        kid_subset_size: images per KID subset.
        pr_k: the k of the k-nearest-neighbour balls of precision/recall.
        importance_samples: k of the IWAE bound behind nll_bpd for latent-variable models (default: the
            model's own test_importance_samples).
        cache_dir: where real-image features are cached (default: $LIGHTNING_GEN_CACHE or ~/.cache).
        progress: progress bars (the commands take it from --trainer.enable_progress_bar).
    """

    metrics: str | list[str] | None = None
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
    importance_samples: int | None = None
    cache_dir: str | None = None
    progress: bool = True

    def __post_init__(self):
        if self.metrics is not None:
            self.metrics = parse_metric_names(self.metrics)
        check_range(at_least=1, num_samples=self.num_samples, max_real=self.max_real, batch_size=self.batch_size,
                    kid_subsets=self.kid_subsets, kid_subset_size=self.kid_subset_size, pr_k=self.pr_k,
                    importance_samples=self.importance_samples)

    def for_model(self, model: nn.Module) -> "EvaluationSettings":
        """These settings with their metrics named: the registry's ``default_metrics(model)`` when none were."""
        return self if self.metrics is not None else replace(self, metrics=default_metrics(model))


@dataclass(frozen=True)
class MetricSpec:
    """Everything the code knows about one metric."""

    name: str  # as requested: `--metrics fid`, `metrics: [fid]`
    results: tuple[str, ...]  # as logged; `{features}` stands for the feature extractor's name
    needs: str  # the model surface it calls: "sample", "log_likelihood" or "elbo_terms"
    data: Literal["images", "points"]  # images (scored in an extractor's features) or a toy 2-D mixture
    unit: str
    better: Literal["lower", "higher", "nearer 1"]
    compute: Callable[[EvaluationRun], list[MetricResult]]
    features: bool = False  # scored in a feature extractor's space (FID and the like): needs its weights
    spectrum: bool = False  # scored on the power spectrum of the samples (EvaluationRun.sample_spectrum)
    model_specific: frozenset[str] = frozenset()  # protocol entries that may differ between compared models
    # metrics averaged over the real split: the value per image, computed in the split pass the run shares
    per_image: Callable[[EvaluationRun, Tensor, torch.Generator], Tensor] | None = None
    on_dashboard: bool = False  # shown by default on the W&B dashboard of the model families
    default: bool = True  # a features metric computed when none are named (SAMPLE_METRICS); False: on request

    def result_names(self, features: str) -> tuple[str, ...]:
        return tuple(template.format(features=features) for template in self.results)

    def produces(self, result_name: str) -> bool:
        """Whether ``result_name`` (no stage, no prefix) is one of this metric's results."""
        return self.fixed_characters(result_name) >= 0

    def fixed_characters(self, result_name: str) -> int:
        """How many characters of ``result_name`` the best-fitting result template spells out (-1: none fits):
        ``fid_infinity_x`` fits both ``fid_{features}`` and ``fid_infinity_{features}``; the longer wins."""
        return max((len(t) - len("{features}") * ("{features}" in t) for t in self.results if _fits(t, result_name)),
                   default=-1)


def _fits(template: str, name: str) -> bool:
    head, placeholder, tail = template.partition("{features}")
    if not placeholder:
        return name == template
    return len(name) > len(head) + len(tail) and name.startswith(head) and name.endswith(tail)


# what a model's `likelihood_protocol()` records about its estimator (see models/): flow matching's ODE adds its
# solver, evaluations and the Hutchinson estimate's standard error; the flow's keys are among the first five
_ESTIMATOR = frozenset({"estimator", "importance_samples", "likelihood", "dequantization", "class_prior",
                        "solver", "likelihood_nfe", "standard_error_nats", "standard_error_bpd"})

METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in (
    MetricSpec("fid", ("fid_{features}",), "sample", "images", "Fréchet distance of feature Gaussians", "lower",
               compute_fid, features=True, on_dashboard=True),
    MetricSpec("kid", ("kid_{features}",), "sample", "images", "unbiased MMD², cubic kernel, mean of subsets",
               "lower", compute_kid, features=True, model_specific=frozenset({"kid_std"}), on_dashboard=True),
    MetricSpec("precision_recall", ("precision_{features}", "recall_{features}"), "sample", "images",
               "share of samples on the real manifold, of real images on the sample manifold (k-NN balls)",
               "higher", compute_precision_recall, features=True, on_dashboard=True),
    MetricSpec("density_coverage", ("density_{features}", "coverage_{features}"), "sample", "images",
               "samples per real k-NN ball over k (1 for real images, may exceed 1); share of real balls holding "
               "a sample", "higher", compute_density_coverage, features=True, default=False),
    MetricSpec("memorisation", ("memorised_share_{features}",), "sample", "images",
               "share of samples nearer a training image than 99% of held-out images are", "lower",
               compute_memorisation, features=True, model_specific=frozenset({"closest_pairs"}), default=False),
    MetricSpec("fid_infinity", ("fid_infinity_{features}",), "sample", "images",
               "FID extrapolated to infinitely many samples (intercept of FID_N = a + b / N)", "lower",
               compute_fid_infinity, features=True, default=False,
               model_specific=frozenset({"fid_at_n", "fid_slope", "fid_std"})),
    MetricSpec("nll_bpd", ("nll_bpd",), "log_likelihood", "images", "bits per dimension", "lower", compute_nll_bpd,
               model_specific=_ESTIMATOR | {"nll_nats_per_image"}, per_image=nll_per_image, on_dashboard=True),
    MetricSpec("elbo", ("elbo",), "elbo_terms", "images", "nats per image", "higher", compute_elbo,
               model_specific=_ESTIMATOR, per_image=elbo_per_image),
    MetricSpec("sharpness", ("hf_energy_ratio",), "sample", "images",
               "power above half the Nyquist frequency, samples over real images (< 1 blurrier, > 1 noisier)",
               "nearer 1", compute_sharpness, spectrum=True, model_specific=frozenset({"sample_spectrum"})),
    MetricSpec("mode_coverage", ("modes_covered", "high_quality_fraction"), "sample", "points",
               "modes covered (count), share of samples within 3 std of a mode", "higher", compute_mode_coverage),
)}
METRIC_NAMES = tuple(METRICS)
# scored from samples alone, in image features, unless asked otherwise: the callback's, `evaluate`'s and
# `evaluate --samples`'s default (fid, kid, precision_recall)
SAMPLE_METRICS = tuple(name for name, spec in METRICS.items() if spec.features and spec.default)
# everything that images alone can be scored on (`evaluate --samples`)
IMAGE_SAMPLE_METRICS = tuple(name for name, spec in METRICS.items() if spec.needs == "sample" and spec.data == "images")


def parse_metric_names(metrics: str | Sequence[str]) -> list[str]:
    names = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else [str(m) for m in metrics]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise MetricError(f"unknown metric(s) {unknown or names}; choose from {', '.join(METRICS)}")
    return names


def spec_of(result_name: str) -> MetricSpec | None:
    """The spec behind a result name: as logged (``fid_inception``, ``val/nll_bpd``) or as a report derives
    it by a prefix (``prior_fid_inception``); None for a name no metric produces (``train/d_loss``)."""
    words = result_name.rpartition("/")[2].split("_")
    for start in range(len(words)):  # the whole name first, then without its leading words
        name = "_".join(words[start:])
        best = max(METRICS.values(), key=lambda spec: spec.fixed_characters(name))
        if best.produces(name):
            return best
    return None


def better_direction(result_name: str) -> str | None:
    """"lower", "higher" or "nearer 1": which values of ``result_name`` are better (None: not a metric's)."""
    spec = spec_of(result_name)
    return spec.better if spec else None


def best_of(result_name: str, values: Sequence[float]) -> float:
    """The best of ``values`` of ``result_name`` by its spec's direction."""
    direction = better_direction(result_name)
    if direction == "nearer 1":
        return min(values, key=lambda value: abs(math.log(value)) if value > 0 else math.inf)
    return min(values) if direction == "lower" else max(values)


def shared_protocol(result: MetricResult) -> dict:
    """The protocol entries that must agree before ``result`` is compared with another model's: all but
    those its spec calls model-specific (the model's own estimator and the like)."""
    model_specific = spec_of(result.name).model_specific
    return {k: v for k, v in result.protocol.items() if k not in model_specific}


def supported_metrics(model: nn.Module, metrics: Sequence[str]) -> list[str]:
    """The metrics of ``metrics`` that ``model`` can be scored on: those whose surface it has."""
    return [name for name in metrics if has_surface(model, METRICS[name].needs)]


def default_metrics(model: nn.Module) -> list[str]:
    """What ``evaluate`` scores when no metrics are named: mode coverage for points of a toy mixture (no image
    features), else the sample metrics and, where the model has a likelihood, ``nll_bpd``."""
    if len(getattr(model, "data_shape", ())) == 1:
        return ["mode_coverage"]
    return supported_metrics(model, [*SAMPLE_METRICS, "nll_bpd"])


def check_model_supports(model: nn.Module, metrics: Sequence[str]) -> None:
    """Raise if a metric needs a surface the model lacks (e.g. a likelihood from a GAN)."""
    for name in metrics:
        needed = METRICS[name].needs
        if has_surface(model, needed):
            continue
        if needed == "sample":
            raise MetricError(f"{name} needs samples, but {type(model).__name__} has no `sample` method")
        raise MetricError(
            f"{name} needs an explicit likelihood (`{needed}`), but {type(model).__name__} has none: its density "
            f"is defined only implicitly (a GAN) or only bounded (see `elbo`), so there is no such number to "
            f"report; remove {name} from the metrics"
        )


def result_names(model, settings: EvaluationSettings, device: torch.device | str | None = None) -> list[str]:
    """The names ``evaluate_model(model, ..., settings)`` returns results under, in the table's order (the
    feature extractor, built once per device, names the features)."""
    names = settings.for_model(model).metrics
    specs = [spec for name, spec in METRICS.items() if name in names]
    features = ""
    if any(spec.features for spec in specs):
        device = device if device is not None else next(model.parameters()).device
        features = build_feature_extractor(settings.features or default_features(model.data_shape),
                                           settings.features_weights, device).name
    return [name for spec in specs for name in spec.result_names(features)]


def evaluate_model(model, datamodule, settings: EvaluationSettings,
                   device: torch.device | str | None = None) -> list[MetricResult]:
    """Compute ``settings.metrics`` for ``model`` against ``datamodule``'s real images.

    Under ``torch.distributed`` every process must call this (the metrics synchronise); each draws
    its own share of the samples with its own generator, and all return the same results.
    """
    settings = settings.for_model(model)
    names = settings.metrics
    check_model_supports(model, names)
    _, world = rank_and_world()
    if settings.num_samples < max(2, world) and any(name in SAMPLE_METRICS for name in names):
        raise MetricError(f"num_samples must be at least {max(2, world)} (2, and one per process) for "
                          f"{', '.join(SAMPLE_METRICS)}, got {settings.num_samples}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    specs = [spec for name, spec in METRICS.items() if name in names]  # table order: the same on every process
    run = EvaluationRun(model, datamodule, settings, specs, device)
    was_training = model.training
    model.eval()
    # evaluation draws from its own generators; forking keeps it from moving the global RNG streams
    # (data loaders take seeds from them), so training is the same with or without evaluation
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices), torch.no_grad():
        try:
            return [result for spec in specs for result in spec.compute(run)]
        finally:
            model.train(was_training)

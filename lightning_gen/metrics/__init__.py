"""Evaluation shared by every model: sample quality (FID, KID, precision/recall on pluggable features)
and likelihood (bits/dim, ELBO). ``registry.METRICS`` holds each metric's spec: names, needs, unit,
direction, protocol."""

from lightning_gen.metrics.features import (
    FEATURE_EXTRACTORS,
    ClassifierFeatures,
    FeatureError,
    FeatureExtractor,
    InceptionFeatures,
    build_feature_extractor,
    default_features,
)
from lightning_gen.metrics.precision_recall import PrecisionRecall
from lightning_gen.metrics.registry import (
    METRIC_NAMES,
    METRICS,
    EvaluationSettings,
    MetricError,
    MetricResult,
    MetricSpec,
    better_direction,
    evaluate_model,
    parse_metric_names,
    spec_of,
)

__all__ = [
    "FEATURE_EXTRACTORS",
    "METRIC_NAMES",
    "METRICS",
    "ClassifierFeatures",
    "EvaluationSettings",
    "FeatureError",
    "FeatureExtractor",
    "InceptionFeatures",
    "MetricError",
    "MetricResult",
    "MetricSpec",
    "PrecisionRecall",
    "better_direction",
    "build_feature_extractor",
    "default_features",
    "evaluate_model",
    "parse_metric_names",
    "spec_of",
]

"""Evaluation shared by every model: sample quality (FID, KID, precision/recall on pluggable features)
and likelihood (bits/dim, ELBO). See ``registry`` for names, units and protocols."""

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
    EvaluationSettings,
    MetricError,
    MetricResult,
    evaluate_model,
    parse_metric_names,
)

__all__ = [
    "FEATURE_EXTRACTORS",
    "METRIC_NAMES",
    "ClassifierFeatures",
    "EvaluationSettings",
    "FeatureError",
    "FeatureExtractor",
    "InceptionFeatures",
    "MetricError",
    "MetricResult",
    "PrecisionRecall",
    "build_feature_extractor",
    "default_features",
    "evaluate_model",
    "parse_metric_names",
]

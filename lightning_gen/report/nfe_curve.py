"""Sample quality and speed against the number of function evaluations (NFE) of a sampler that integrates.

A model whose ``sample`` takes ``nfe`` (flow matching: an ODE solver's evaluations of the velocity network)
trades quality for time at sampling, after training. ``nfe_curve`` draws ``num_samples`` images at each NFE
of ``nfe_values`` (and at the model's default, from its ``sampling_protocol()``), scores them with the
registry's FID in the comparison's features against the same real images, and times the sampling:

    {"metric": "fid_<features>", "num_samples": N, "solver": ..., "default_nfe": ...,
     "points": [{"nfe": 1, "fid_<features>": ..., "samples_per_second": ..., "batch_size": ...}, ...]}

FID is biased upwards at small N (docs/metrics.md), so the curve's FIDs compare with each other (one N for
every point), not with the main table's FID at the comparison's ``num_samples``. The cost is
N x sum(NFE) network evaluations: 500 samples at NFE 1, 2, 5, 10, 20, 50 are 44,000 image-evaluations.
samples/s is the rate of the curve's own sampling calls (batches of up to the evaluation's batch size).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import replace

import torch
from torch import Tensor, nn

from lightning_gen.errors import ConfigValueError
from lightning_gen.metrics.registry import EvaluationSettings, evaluate_model
from lightning_gen.models.base import has_surface

NFE_VALUES = (1, 2, 5, 10, 20, 50)
NFE_SAMPLES = 500


def samples_by_nfe(model) -> bool:
    """Whether ``model.sample`` takes ``nfe`` (its quality and cost depend on the number of evaluations)."""
    return has_surface(model, "sample") and "nfe" in inspect.signature(model.sample).parameters


def parse_nfe_values(text: str) -> tuple[int, ...]:
    """``"1,2,5"`` -> (1, 2, 5); each at least 1."""
    try:
        values = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        values = ()
    if not values or values[0] < 1:
        raise ConfigValueError(f"nfe_values must be whole numbers of at least 1, comma-separated (e.g. 1,2,5,10), "
                               f"got {text!r}")
    return values


class _AtNFE(nn.Module):
    """``model`` sampled at ``nfe`` evaluations, its sampling time added up: what ``evaluate_model`` scores."""

    def __init__(self, model, nfe: int):
        super().__init__()
        self.model, self.nfe, self.data_shape = model, nfe, model.data_shape
        self.seconds, self.images, self.batch_size = 0.0, 0, 0
        self.train(model.training)  # evaluate_model restores this mode afterwards: keep the model's own

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        start = time.perf_counter()
        images = self.model.sample(n, generator=generator, nfe=self.nfe)
        self.seconds += time.perf_counter() - start
        self.images, self.batch_size = self.images + n, max(self.batch_size, n)
        return images


def nfe_curve(model, datamodule, settings: EvaluationSettings, nfe_values=NFE_VALUES,
              num_samples: int = NFE_SAMPLES, device: torch.device | str | None = None) -> dict:
    """FID of ``num_samples`` samples and samples/s at each NFE of ``nfe_values`` plus the model's default
    (the module docstring's dict). Every NFE draws from the same seed (``settings.seed``)."""
    protocol = model.sampling_protocol() if has_surface(model, "sampling_protocol") else {}
    default = protocol.get("nfe") or protocol.get("nfe_limit")
    values = sorted(set(nfe_values) | ({default} if default else set()))
    fid_only = replace(settings, metrics=["fid"], num_samples=num_samples)
    points, metric = [], None
    for nfe in values:
        at_nfe = _AtNFE(model, nfe)
        (result,) = evaluate_model(at_nfe, datamodule, fid_only, device)
        metric = result.name
        points.append({"nfe": nfe, metric: result.value, "batch_size": at_nfe.batch_size,
                       "samples_per_second": at_nfe.images / at_nfe.seconds if at_nfe.seconds > 0 else None})
    return {"metric": metric, "num_samples": num_samples, "solver": protocol.get("solver"), "default_nfe": default,
            "points": points}

"""The report's claim summary is computed from the numbers: it confirms a claim the runs support, says
"not confirmed" when they contradict it, and "not measured" when the runs needed are missing."""

from __future__ import annotations

from pathlib import Path

import torch

from lightning_gen.metrics.registry import MetricResult
from lightning_gen.models import GAN, VAE, PixelCNN
from lightning_gen.report import claims
from lightning_gen.report.claims import capabilities, claim_summary
from lightning_gen.report.compare import ComparedRun

EXPLICIT = {"likelihood": "explicit: IWAE bound", "encoder": "yes"}
IMPLICIT = {"likelihood": "none (implicit density)", "encoder": "no (generate only)"}
EXACT = {"likelihood": "explicit: exact autoregressive likelihood", "encoder": "no (generate only)"}


def _run(family: str, sharpness: float, capabilities: dict, batch_1: float) -> ComparedRun:
    model_class = {"vae": "VAE", "gan": "GAN", "pixelcnn": "PixelCNN"}[family]
    return ComparedRun(f"{family}/version_0", Path("x.ckpt"), None, f"lightning_gen.models.{model_class}",
                       results=[MetricResult("hf_energy_ratio", sharpness)], capabilities=capabilities,
                       sampling={"batch 1": batch_1})


def test_claims_the_numbers_support_are_confirmed_with_the_numbers():
    blur, density, slow, _ = claim_summary([_run("vae", 0.4, EXPLICIT, 900.0), _run("gan", 0.9, IMPLICIT, 2000.0),
                                         _run("pixelcnn", 0.8, EXACT, 3.0)])
    assert blur.endswith("confirmed: VAE 0.400 (vae/version_0) vs GAN 0.900 (gan/version_0)") and "not" not in blur
    assert ": confirmed: GAN likelihood none (implicit density)" in density
    assert ": confirmed: PixelCNN explicit: exact autoregressive likelihood, 3.0 samples/s vs at least 900.0" in slow


def test_claims_the_numbers_contradict_are_not_confirmed():
    blur, _, slow, _ = claim_summary([_run("vae", 1.1, EXPLICIT, 900.0), _run("gan", 0.9, IMPLICIT, 2000.0),
                                   _run("pixelcnn", 0.8, EXACT, 200.0)])  # sharper VAE; PixelCNN only 4.5x slower
    assert ": not confirmed: VAE 1.100" in blur and ": not confirmed: PixelCNN" in slow


def test_claims_without_their_runs_are_not_measured():
    lines = claim_summary([_run("vae", 0.4, EXPLICIT, 900.0)])
    assert len(lines) == 4 and all(": not measured (needs" in line for line in lines)


def test_capabilities_are_read_from_what_each_model_exposes():
    gan, vae = GAN(latent_dim=8, width=8), VAE(latent_dim=4, channels=4, hidden=8)
    pixelcnn = PixelCNN(hidden=8, layers=2)
    assert capabilities(gan) == {"likelihood": "none (implicit density)", "encoder": "no (generate only)",
                                 "reconstructions": "no", "latent interpolation": "no"}
    assert capabilities(vae) == {"likelihood": "explicit: IWAE bound", "encoder": "yes", "reconstructions": "yes",
                                 "latent interpolation": "yes"}
    assert capabilities(pixelcnn)["likelihood"] == "explicit: exact autoregressive likelihood"


class _FirstCallPaysOnce:
    """A model whose first ``sample`` costs 100 s of a fake clock (a lazily fitted density) and every later
    call 1 s, whatever its batch."""

    device = torch.device("cpu")

    def __init__(self, clock: list[float]):
        self.clock, self.calls = clock, 0

    def sample(self, n, generator=None):
        self.clock[0] += 100.0 if self.calls == 0 else 1.0
        self.calls += 1
        return torch.zeros(n, 1, 28, 28)


def test_sampling_speeds_leave_one_off_costs_of_the_first_call_out(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(claims.time, "perf_counter", lambda: clock[0])
    speeds = claims.sampling_speeds(_FirstCallPaysOnce(clock), batches=(1, 64))
    assert speeds == {"batch 1": 1.0, "batch 64": 64.0}  # without a warm-up call: batch 1 at 1/100 samples/s

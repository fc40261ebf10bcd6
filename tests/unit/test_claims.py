"""The report's claim summary is computed from the numbers: it confirms a claim the runs support, says
"not confirmed" when they contradict it, and "not measured" when the runs needed are missing. The speed
measurement behind the sampling claims keeps to its time cap (a fake clock)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_gen.metrics.registry import MetricResult
from lightning_gen.models import GAN, VAE, Flow, FlowMatching, PixelCNN
from lightning_gen.report import claims
from lightning_gen.report.claims import capabilities, claim_summary
from lightning_gen.report.compare import ComparedRun

EXPLICIT = {"likelihood": "explicit: IWAE bound", "encoder": "yes", "sampling": "one network pass"}
IMPLICIT = {"likelihood": "none (implicit density)", "encoder": "no (generate only)", "sampling": "one network pass"}
EXACT = {"likelihood": "explicit: exact autoregressive likelihood", "encoder": "no (generate only)",
         "sampling": "one step per pixel and channel group (autoregressive: 784 steps; fast sampler)"}
FLOW = {"likelihood": "explicit: exact change of variables", "encoder": "yes", "sampling": "one network pass"}
CLASSES = {"vae": "VAE", "gan": "GAN", "pixelcnn": "PixelCNN", "flow": "Flow", "flowmatching": "FlowMatching"}


def _run(family: str, sharpness: float, capabilities: dict, batch_1: float, batch_64: float | None = None,
         bpd: float | None = None, nfe_curve: dict | None = None) -> ComparedRun:
    results = [MetricResult("hf_energy_ratio", sharpness)] + ([MetricResult("nll_bpd", bpd)] if bpd else [])
    sampling = {"batch 1": batch_1} | ({"batch 64": batch_64} if batch_64 else {})
    return ComparedRun(f"{family}/version_0", Path("x.ckpt"), None, f"lightning_gen.models.{CLASSES[family]}",
                       results=results, capabilities=capabilities, sampling=sampling, nfe_curve=nfe_curve or {})


def _curve(fids: dict[int, float], default: int = 10) -> dict:
    return {"metric": "fid_fmnist_clf", "num_samples": 500, "solver": "heun", "default_nfe": default,
            "points": [{"nfe": nfe, "fid_fmnist_clf": fid, "samples_per_second": 100.0 / nfe, "batch_size": 250}
                       for nfe, fid in fids.items()]}


def test_claims_the_numbers_support_are_confirmed_with_the_numbers():
    blur, density, slow, flow, steps, _ = claim_summary([
        _run("vae", 0.4, EXPLICIT, 900.0), _run("gan", 0.9, IMPLICIT, 2000.0),
        _run("pixelcnn", 0.8, EXACT, 3.0, batch_64=0.31, bpd=3.4),
        _run("flow", 0.7, FLOW, 500.0, batch_64=1200.0, bpd=3.9),
        _run("flowmatching", 1.0, IMPLICIT, 50.0, nfe_curve=_curve({1: 300.0, 2: 200.0, 10: 90.0, 50: 95.0}))])
    assert blur.endswith("confirmed: VAE 0.400 (vae/version_0) vs GAN 0.900 (gan/version_0)") and "not" not in blur
    assert ": confirmed: GAN likelihood none (implicit density)" in density
    assert ": confirmed: PixelCNN explicit: exact autoregressive likelihood, 3.0 samples/s vs at least 50" in slow
    assert flow.startswith("normalizing flows: an exact likelihood and one-pass sampling")
    assert ": confirmed: Flow explicit: exact change of variables, 3.900 bits/dim, one network pass: 1,200 " \
           "samples/s at batch 64 vs PixelCNN 0.31 (one step per pixel" in flow and "3.400 bits/dim)" in flow
    # the default NFE (10), not the best one (10 here too) or the largest (50)
    assert steps.endswith(": confirmed: FID 300.000 at NFE 1 vs 90.000 at NFE 10 (flowmatching/version_0; heun, "
                          "500 samples, fid_fmnist_clf)")


def test_claims_the_numbers_contradict_are_not_confirmed():
    runs = [_run("vae", 1.1, EXPLICIT, 900.0), _run("gan", 0.9, IMPLICIT, 2000.0),
            _run("pixelcnn", 0.8, EXACT, 200.0, batch_64=400.0),  # only 4.5x slower; the flow only 2x faster
            _run("flow", 0.7, FLOW, 500.0, batch_64=800.0, bpd=3.9),
            _run("flowmatching", 1.0, IMPLICIT, 50.0, nfe_curve=_curve({1: 90.0, 10: 300.0}))]  # worse with steps
    blur, _, slow, flow, steps, _ = claim_summary(runs)
    assert ": not confirmed: VAE 1.100" in blur and ": not confirmed: PixelCNN" in slow
    assert ": not confirmed: Flow" in flow and ": not confirmed: FID 90.000 at NFE 1 vs 300.000 at NFE 10" in steps
    multi_pass = dict(FLOW, sampling="ODE: NFE=10 Heun steps")  # fast enough, but not in one pass
    runs[3] = _run("flow", 0.7, multi_pass, 500.0, batch_64=8000.0, bpd=3.9)
    assert ": not confirmed: Flow" in claim_summary(runs)[3]


def test_claims_without_their_runs_are_not_measured():
    lines = claim_summary([_run("vae", 0.4, EXPLICIT, 900.0)])
    assert len(lines) == 6 and all(": not measured (needs" in line for line in lines)
    assert lines[3].endswith("not measured (needs a Flow run and a PixelCNN run)")
    assert lines[4].endswith("not measured (needs a flow-matching run compared with --nfe_curve)")
    # a flow without a PixelCNN, a flow-matching run compared without its curve: still not measured
    lines = claim_summary([_run("flow", 0.7, FLOW, 500.0, batch_64=900.0), _run("flowmatching", 1.0, IMPLICIT, 5.0)])
    assert ": not measured (needs" in lines[3] and ": not measured (needs" in lines[4]


def test_capabilities_are_read_from_what_each_model_exposes():
    gan, vae = GAN(latent_dim=8, width=8), VAE(latent_dim=4, channels=4, hidden=8)
    pixelcnn = PixelCNN(hidden=8, layers=2)
    assert capabilities(gan) == {"likelihood": "none (implicit density)", "encoder": "no (generate only)",
                                 "reconstructions": "no", "latent interpolation": "no", "sampling": "one network pass"}
    assert capabilities(vae) == {"likelihood": "explicit: IWAE bound", "encoder": "yes", "reconstructions": "yes",
                                 "latent interpolation": "yes", "sampling": "one network pass"}
    assert capabilities(pixelcnn)["likelihood"] == "explicit: exact autoregressive likelihood"
    assert capabilities(pixelcnn)["sampling"] == \
        "one step per pixel and channel group (autoregressive: 784 steps; fast sampler)"
    rgb = PixelCNN(data_shape=(3, 8, 8), hidden=12, layers=2, sampler="reference")  # R -> G -> B in each pixel
    assert capabilities(rgb)["sampling"] == \
        "one step per pixel and channel group (autoregressive: 192 steps; reference sampler)"
    flow = capabilities(Flow(data_shape=(1, 8, 8), levels=2, steps_per_level=1, hidden=8))
    assert flow["likelihood"] == "explicit: exact change of variables" and flow["sampling"] == "one network pass"
    matching = capabilities(FlowMatching(data_shape=(1, 8, 8), base_width=8, channel_multipliers=(1, 2), nfe=6))
    assert matching["sampling"] == "ODE: NFE=6 Heun steps"
    assert matching["likelihood"].startswith("explicit: ODE instantaneous change of variables, Hutchinson")
    guided = FlowMatching(data_shape=(1, 8, 8), base_width=8, channel_multipliers=(1, 2), num_classes=10,
                          guidance_scale=2.0, sampler="euler", nfe=4)
    assert capabilities(guided)["sampling"] == "ODE: NFE=4 Euler steps, 2 network passes each (guidance 2.0)"


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


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    clock = [0.0]
    monkeypatch.setattr(claims.time, "perf_counter", lambda: clock[0])
    return clock


def test_sampling_speeds_leave_one_off_costs_of_the_first_call_out(clock):
    speeds = claims.sampling_speeds(_FirstCallPaysOnce(clock), batches=(1, 64))
    assert speeds.rates == {"batch 1": 1.0, "batch 64": 64.0}  # without a warm-up call: batch 1 at 1/100 samples/s
    assert speeds.notes == {}


class _LinearCost:
    """Seconds per call of a fake clock: ``overhead + per_image * n``, by sampler; every call is logged."""

    device = torch.device("cpu")
    speed_samplers = ("reference",)

    def __init__(self, clock: list[float], costs: dict[str | None, tuple[float, float]]):
        self.clock, self.costs, self.calls = clock, costs, []

    def sample(self, n, generator=None, sampler=None):
        overhead, per_image = self.costs[sampler]
        self.clock[0] += overhead + per_image * n
        self.calls.append((sampler, n))
        return torch.zeros(n, 1, 28, 28)


def _reference_seconds(model: _LinearCost) -> float:
    overhead, per_image = model.costs["reference"]
    return sum(overhead + per_image * n for sampler, n in model.calls if sampler == "reference")


def test_a_slow_sampler_is_measured_on_the_images_that_fit_its_time_cap(clock):
    # the reference sampler at 3 s an image (a PixelCNN's full pass per pixel), the default at 10 ms
    model = _LinearCost(clock, {None: (0.0, 0.01), "reference": (0.0, 3.0)})
    speeds = claims.sampling_speeds(model, batches=(1, 64), max_seconds=10.0)
    assert [call for call in model.calls if call[0] == "reference"] == [("reference", 1), ("reference", 3)]
    assert _reference_seconds(model) == pytest.approx(3.0 + 9.0)  # its first image, then at most 10 s
    assert speeds.rates == pytest.approx({"batch 1": 100.0, "batch 64": 100.0, "batch 1, reference sampler": 1 / 3,
                                          "batch 64, reference sampler": 1 / 3})
    assert speeds.notes == {"batch 64, reference sampler": "rate from 3 images (batch 3): batch 64 would pass the "
                                                           "10 s cap"}
    # the control: without the cap's bite the reference sampler draws its whole batch, 64 images' worth
    model = _LinearCost(clock, {None: (0.0, 0.01), "reference": (0.0, 3.0)})
    speeds = claims.sampling_speeds(model, batches=(1, 64), max_seconds=1000.0)
    assert _reference_seconds(model) == pytest.approx(3.0 * 65) and speeds.notes == {}


def test_a_sampler_that_batches_well_reaches_its_batch_within_the_cap(clock):
    # 0.5 s a call and 10 ms an image: one image predicts 32 s for 64, so a smaller batch goes first, and its
    # rate predicts the whole batch within what is left
    model = _LinearCost(clock, {None: (0.5, 0.01), "reference": (0.0, 1.0)})
    speeds = claims.sampling_speeds(model, batches=(1, 64), max_seconds=10.0)
    default = [n for sampler, n in model.calls if sampler is None]
    assert default[0] == 1 and default[-1] == 64 and len(default) == 4  # warm-up, 1, an intermediate, 64
    assert speeds.rates["batch 64"] == pytest.approx(64 / (0.5 + 0.64)) and "batch 64" not in speeds.notes

"""What the field says about VAEs, GANs and PixelCNNs, checked against the runs of a comparison.

- ``capabilities(model)``: one entry per capability (likelihood, encoder, reconstructions, latent
  interpolation), read from the surface the model exposes and the registry's specs, never typed per family.
- ``sampling_speeds(model)``: samples/s at batch 1 and batch 64, and for a model with several samplers (the
  PixelCNN's cached "fast" and per-pixel "reference" ones) each of them.
- ``claim_summary(runs)``: each textbook claim, and whether these runs confirm it, with the numbers. A claim
  whose runs are missing says so; one the numbers contradict says "not confirmed".
"""

from __future__ import annotations

import inspect
import time

import torch

from lightning_gen.metrics.registry import METRICS
from lightning_gen.models.base import has_surface

SPEED_BATCHES = (1, 64)
SLOW_FACTOR = 10  # "samples slowly": at batch 1, at least this many times slower than every other family


def capabilities(model) -> dict[str, str]:
    """What ``model`` can do, from the methods it has (the surfaces the registry's metrics need)."""
    likelihood = "none (implicit density)"
    if has_surface(model, METRICS["nll_bpd"].needs):
        protocol = model.likelihood_protocol() if has_surface(model, "likelihood_protocol") else {}
        likelihood = f"explicit: {protocol.get('estimator', 'log_likelihood')}"
    encodes = has_surface(model, "encode") and has_surface(model, "decode")
    return {
        "likelihood": likelihood,
        "encoder": "yes" if has_surface(model, "encode") else "no (generate only)",
        "reconstructions": "yes" if encodes else "no",
        "latent interpolation": "yes" if encodes else "no",
    }


def _samplers(model) -> tuple[str | None, ...]:
    """The samplers a model's ``sample`` can be told to use (None: its only or default one)."""
    if "sampler" not in inspect.signature(model.sample).parameters:
        return (None,)
    return (None, "reference")  # the default (the PixelCNN's cached sampler) and the one full pass per pixel


@torch.no_grad()
def sampling_speeds(model, seed: int = 0, batches: tuple[int, ...] = SPEED_BATCHES) -> dict[str, float]:
    """Samples per second, ``"batch N"`` (the default sampler) and ``"batch N, <sampler> sampler"``."""
    speeds = {}
    for sampler in _samplers(model):
        for batch in batches:
            generator = torch.Generator(device=model.device).manual_seed(seed)
            options = {"sampler": sampler} if sampler else {}
            start = time.perf_counter()
            model.sample(batch, generator=generator, **options)
            seconds = time.perf_counter() - start
            speeds[f"batch {batch}" + (f", {sampler} sampler" if sampler else "")] = batch / seconds
    return speeds


def _family(run) -> str:
    return run.model_class.rsplit(".", 1)[-1].lower()  # VAE -> vae, PixelCNN -> pixelcnn


def _value(run, name: str) -> float | None:
    return next((result.value for result in run.results if result.name == name), None)


def _verdict(confirmed: bool) -> str:
    return "confirmed" if confirmed else "not confirmed"


def claim_summary(runs) -> list[str]:
    """One line per claim: the claim, the verdict of these runs, and the numbers behind it."""
    by_family = {}
    for run in runs:
        by_family.setdefault(_family(run), run)
    lines = []

    vae, gan = by_family.get("vae"), by_family.get("gan")
    blur = "VAE samples are blurrier than GAN samples (hf_energy_ratio: power above half the Nyquist frequency, " \
           "samples over real images, 1 = as sharp as real)"
    if vae is None or gan is None or None in (_value(vae, "hf_energy_ratio"), _value(gan, "hf_energy_ratio")):
        lines.append(f"{blur}: not measured (needs a VAE and a GAN run scored with the sharpness metric)")
    else:
        v, g = _value(vae, "hf_energy_ratio"), _value(gan, "hf_energy_ratio")
        lines.append(f"{blur}: {_verdict(v < g)}: VAE {v:.3f} ({vae.label}) vs GAN {g:.3f} ({gan.label})")

    density = "a GAN has an implicit density and only generates; a VAE has an explicit one and also encodes"
    if vae is None or gan is None:
        lines.append(f"{density}: not measured (needs a VAE and a GAN run)")
    else:
        confirmed = (gan.capabilities["likelihood"].startswith("none") and gan.capabilities["encoder"] != "yes"
                     and vae.capabilities["likelihood"].startswith("explicit") and vae.capabilities["encoder"] == "yes")
        lines.append(f"{density}: {_verdict(confirmed)}: GAN likelihood {gan.capabilities['likelihood']}, encoder "
                     f"{gan.capabilities['encoder']}; VAE likelihood {vae.capabilities['likelihood']}, encoder "
                     f"{vae.capabilities['encoder']}")

    pixelcnn = by_family.get("pixelcnn")
    others = [run for family, run in by_family.items() if family != "pixelcnn" and run.sampling.get("batch 1")]
    slow = f"a PixelCNN has an exact likelihood but samples slowly (at batch 1, {SLOW_FACTOR}x or more below every " \
           "other family)"
    if pixelcnn is None or not others:
        lines.append(f"{slow}: not measured (needs a PixelCNN run and another family)")
    else:
        own, fastest_other = pixelcnn.sampling["batch 1"], min(run.sampling["batch 1"] for run in others)
        exact = pixelcnn.capabilities["likelihood"].startswith("explicit: exact")
        lines.append(f"{slow}: {_verdict(exact and own * SLOW_FACTOR <= fastest_other)}: PixelCNN "
                     f"{pixelcnn.capabilities['likelihood']}, {own:.1f} samples/s vs at least {fastest_other:.1f} "
                     "for the others (its cached sampler; the reference sampler: "
                     f"{pixelcnn.sampling.get('batch 1, reference sampler', float('nan')):.1f})")
    return lines

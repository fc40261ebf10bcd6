"""What the field says about VAEs, GANs and PixelCNNs, checked against the runs of a comparison.

- ``capabilities(model)``: one entry per capability (likelihood, encoder, reconstructions, latent
  interpolation), read from the surface the model exposes and the registry's specs, never typed per family.
- ``sampling_speeds(model)``: samples/s at batch 1 and batch 64, and for a model with several samplers (the
  PixelCNN's cached "fast" and per-pixel "reference" ones) each of them.
- ``claim_summary(runs)``: each textbook claim, and whether these runs confirm it, with the numbers. A claim
  whose runs are missing says so; one the numbers contradict says "not confirmed". "VAEs are easy to train,
  GANs are hard" is read from seed groups (``report/groups.py``): the share of failed runs and the spread of
  FID over seeds (coefficient of variation, std / mean) of the VAE groups against the GAN groups.
"""

from __future__ import annotations

import time

import torch

from lightning_gen.metrics.registry import METRICS
from lightning_gen.models.base import has_surface
from lightning_gen.report.groups import GroupSummary, coefficient_of_variation, summarise_groups

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
    """The samplers whose speed is measured: the default (None) and those a model names in its
    ``speed_samplers`` (the PixelCNN's per-pixel "reference" sampler beside its cached one)."""
    return (None, *getattr(model, "speed_samplers", ()))


@torch.no_grad()
def sampling_speeds(model, seed: int = 0, batches: tuple[int, ...] = SPEED_BATCHES) -> dict[str, float]:
    """Samples per second, ``"batch N"`` (the default sampler) and ``"batch N, <sampler> sampler"``."""
    speeds = {}
    # one untimed call first: a first call pays one-off costs that are not a sampling rate (the VAE's lazily
    # fitted latent mixture, ~1.6 s; the AE's code Gaussian; kernel selection). Without it the first family
    # compared measured 196 samples/s at batch 1 against 667-749 for the same AE later. Once per model: a
    # warm-up of the reference sampler would cost 784 full network passes, to save the one-off cost of one.
    model.sample(1, generator=torch.Generator(device=model.device).manual_seed(seed))
    for sampler in _samplers(model):
        options = {"sampler": sampler} if sampler else {}
        for batch in batches:
            generator = torch.Generator(device=model.device).manual_seed(seed)
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


def _stability(groups: list[GroupSummary]) -> tuple[float, float | None, str]:
    """Of one family's seed groups: the share of their runs that failed, the largest FID coefficient of
    variation (None when no group has two finite FIDs), and the numbers as text."""
    runs = sum(len(group.runs) for group in groups)
    failed = sum(len(group.failures) for group in groups) / runs
    spreads = [cv for group in groups if (cv := coefficient_of_variation(group)) is not None]
    cv = max(spreads, default=None)
    text = f"{failed:.0%} of {runs} runs failed, FID CV " + (f"{cv:.3f}" if cv is not None else "n/a") + \
        f" ({', '.join(group.name for group in groups)})"
    return failed, cv, text


def ease_of_training(groups: list[GroupSummary]) -> str:
    """The claim "VAEs are easy to train, GANs are hard": confirmed when the GAN groups are no better than the
    VAE groups on either count (failed share, largest FID coefficient of variation over seeds) and worse on at
    least one; failed shares alone decide when a spread is missing."""
    claim = "VAEs are easy to train, GANs are hard (unstable, seed-sensitive): over seeds, GAN runs fail more " \
            "often or their FID spreads more (coefficient of variation, std / mean)"
    by_family: dict[str, list[GroupSummary]] = {}
    for group in groups:
        if len(group.runs) > 1:
            by_family.setdefault(group.model_class.rsplit(".", 1)[-1].lower(), []).append(group)
    if "vae" not in by_family or "gan" not in by_family:
        return f"{claim}: not measured (needs seed groups of a VAE and a GAN: several seeds of each config)"
    vae_failed, vae_cv, vae_text = _stability(by_family["vae"])
    gan_failed, gan_cv, gan_text = _stability(by_family["gan"])
    if vae_cv is None or gan_cv is None:
        confirmed = gan_failed > vae_failed
    else:
        confirmed = gan_failed >= vae_failed and gan_cv >= vae_cv and (gan_failed > vae_failed or gan_cv > vae_cv)
    return f"{claim}: {_verdict(confirmed)}: VAE {vae_text} vs GAN {gan_text}"


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
    lines.append(ease_of_training(summarise_groups(runs)))
    return lines

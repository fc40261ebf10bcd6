"""What the field says about VAEs, GANs, PixelCNNs, flows and flow matching, checked against the runs of a
comparison.

- ``capabilities(model)``: one entry per capability (likelihood, encoder, reconstructions, latent
  interpolation, how it samples), read from the surface the model exposes and the registry's specs, never
  typed per family.
- ``sampling_speeds(model)``: samples/s at batch 1 and batch 64, and for a model with several samplers (the
  PixelCNN's cached "fast" and per-pixel "reference" ones) each of them, within a time cap per sampler.
- ``claim_summary(runs)``: each textbook claim, and whether these runs confirm it, with the numbers. A claim
  whose runs are missing says so; one the numbers contradict says "not confirmed". "VAEs are easy to train,
  GANs are hard" is read from seed groups (``report/groups.py``): the share of failed runs and the spread of
  FID over seeds (coefficient of variation, std / mean) of the VAE groups against the GAN groups.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from lightning_gen.metrics.registry import METRICS
from lightning_gen.models.base import has_surface
from lightning_gen.report.groups import GroupSummary, coefficient_of_variation, summarise_groups
from lightning_gen.report.numbers import format_rate

SPEED_BATCHES = (1, 64)
SPEED_SECONDS = 10.0  # sampling time a speed measurement may spend per sampler (beyond its first call)
SLOW_FACTOR = 10  # "samples slowly": at batch 1, at least this many times slower than every other family


def sampling_description(model) -> str:
    """How ``model.sample`` makes an image, from its ``sampling_protocol()``: an ODE's solver and NFE, an
    autoregressive model's steps; a model without one samples in one network pass (decoder, generator,
    inverse flow)."""
    protocol = model.sampling_protocol() if has_surface(model, "sampling_protocol") else {}
    if "solver" in protocol and ("nfe" in protocol or "nfe_limit" in protocol):
        nfe = protocol.get("nfe") or f"at most {protocol.get('nfe_limit')}"
        text = f"ODE: NFE={nfe} {protocol['solver'].capitalize()} steps"
        if protocol.get("network_passes_per_evaluation", 1) != 1:
            text += f", {protocol['network_passes_per_evaluation']} network passes each (guidance " \
                    f"{protocol.get('guidance_scale')})"
        return text
    if protocol.get("order") == "autoregressive":
        text = f"one step per {protocol['step']} (autoregressive: {protocol['steps']} steps; " \
               f"{protocol['sampler']} sampler)"
        return text + (f", then {protocol['then']}" if protocol.get("then") else "")
    return "one network pass"


def capabilities(model) -> dict[str, str]:
    """What ``model`` can do, from the methods it has (the surfaces the registry's metrics need), and how
    it samples (``sampling_description``)."""
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
        "sampling": sampling_description(model),
    }


def _samplers(model) -> tuple[str | None, ...]:
    """The samplers whose speed is measured: the default (None) and those a model names in its
    ``speed_samplers`` (the PixelCNN's per-pixel "reference" sampler beside its cached one)."""
    return (None, *getattr(model, "speed_samplers", ()))


@dataclass
class SamplingSpeeds:
    """``rates``: samples/s by ``"batch N"`` (the default sampler) and ``"batch N, <sampler> sampler"``;
    ``notes``: for a rate measured on fewer images than its batch (the time cap), from how many and why."""

    rates: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def _timed_sample(model, batch: int, seed: int, options: dict) -> float:
    """Seconds of one ``model.sample(batch)`` call."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    start = time.perf_counter()
    model.sample(batch, generator=generator, **options)
    return time.perf_counter() - start


@torch.no_grad()
def sampling_speeds(model, seed: int = 0, batches: tuple[int, ...] = SPEED_BATCHES,
                    max_seconds: float = SPEED_SECONDS) -> SamplingSpeeds:
    """Samples per second at each of ``batches``, for the default sampler and each of ``speed_samplers``.

    Each sampler gets ``max_seconds`` of sampling beyond its first call (the smallest batch: one image is
    the least a sampler makes). Before each call its time is predicted from the last call's seconds per
    image times the batch: an upper bound where batching helps, as it mostly does. A batch that would not
    fit the time left is first measured on as many images as do fit, in one call, and predicted again from
    that; when no more images fit, its rate is the last call's, noted as ``"rate from N images"``: the rate
    at that smaller batch, not the batch's own, which may be higher or lower. (The Fashion-MNIST PixelCNN's
    reference sampler made 0.12 images/s at batch 1 and 0.039 at batch 64 on a loaded 2-core CPU; measuring
    that batch took 28 minutes. Capped, the measurement of both its samplers took 16 s.)
    """
    speeds = SamplingSpeeds()
    # one untimed call first: a first call pays one-off costs that are not a sampling rate (the VAE's lazily
    # fitted latent mixture, ~1.6 s; the AE's code Gaussian; kernel selection). Without it the first family
    # compared measured 196 samples/s at batch 1 against 667-749 for the same AE later. Once per model: a
    # warm-up of the reference sampler would cost 784 full network passes, to save the one-off cost of one.
    model.sample(1, generator=torch.Generator(device=model.device).manual_seed(seed))
    for sampler in _samplers(model):
        options = {"sampler": sampler} if sampler else {}
        suffix = f", {sampler} sampler" if sampler else ""
        measured: tuple[int, float] | None = None  # (images, seconds) of the largest call so far
        spent = 0.0
        for batch in sorted(batches):
            while measured is None or measured[0] < batch:  # a call per batch, or calls that fit the cap
                size = batch
                if measured is not None:
                    per_image = measured[1] / measured[0]
                    size = min(batch, int((max_seconds - spent) / per_image)) if per_image > 0 else batch
                    if size <= measured[0]:
                        break  # not one image more fits the time left
                seconds = _timed_sample(model, size, seed, options)
                spent, measured = (spent + seconds if measured is not None else 0.0), (size, seconds)
            key = f"batch {batch}{suffix}"
            speeds.rates[key] = measured[0] / measured[1]
            if measured[0] < batch:
                speeds.notes[key] = f"rate from {measured[0]} image{'s' * (measured[0] > 1)} (batch " \
                                    f"{measured[0]}): batch {batch} would pass the {max_seconds:g} s cap"
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
                     f"{pixelcnn.capabilities['likelihood']}, {format_rate(own)} samples/s vs at least "
                     f"{format_rate(fastest_other)} for the others (its cached sampler; the reference sampler: "
                     f"{format_rate(pixelcnn.sampling.get('batch 1, reference sampler'))})")
    lines.append(one_pass_flow(by_family.get("flow"), pixelcnn))
    lines.append(steps_improve_samples(runs))
    lines.append(ease_of_training(summarise_groups(runs)))  # last: read from the seed groups
    return lines


def _speed_batch(*runs) -> str | None:
    """The largest ``"batch N"`` rate of the default sampler that every one of ``runs`` has."""
    shared = set.intersection(*({key for key in run.sampling if "sampler" not in key} for run in runs))
    return max(shared, key=lambda key: int(key.split()[1]), default=None)


def _bits_per_dim(run) -> str:
    bpd = _value(run, "nll_bpd")
    return "bits/dim not measured" if bpd is None else f"{bpd:.3f} bits/dim"


def one_pass_flow(flow, pixelcnn) -> str:
    """The claim "flows: exact likelihood and one-pass sampling": confirmed when the flow's likelihood is
    exact, it samples in one network pass, and at the speed batch it makes ``SLOW_FACTOR`` times or more the
    PixelCNN's samples/s (its default, cached sampler), with both models' bits/dim beside."""
    claim = f"normalizing flows: an exact likelihood and one-pass sampling (at the speed batch, {SLOW_FACTOR}x " \
            "or more the PixelCNN's samples/s)"
    batch = _speed_batch(flow, pixelcnn) if flow is not None and pixelcnn is not None else None
    if batch is None:
        return f"{claim}: not measured (needs a Flow run and a PixelCNN run)"
    own, autoregressive = flow.sampling[batch], pixelcnn.sampling[batch]
    confirmed = (flow.capabilities["likelihood"].startswith("explicit: exact")
                 and flow.capabilities.get("sampling") == "one network pass" and own >= SLOW_FACTOR * autoregressive)
    return (f"{claim}: {_verdict(confirmed)}: Flow {flow.capabilities['likelihood']}, {_bits_per_dim(flow)}, "
            f"{flow.capabilities.get('sampling')}: {format_rate(own)} samples/s at {batch} vs PixelCNN "
            f"{format_rate(autoregressive)} ({pixelcnn.capabilities.get('sampling')}; {_bits_per_dim(pixelcnn)})")


def steps_improve_samples(runs) -> str:
    """The claim "flow matching: sample quality grows with sampling steps", from the first run with an NFE
    curve (``report/nfe_curve.py``): confirmed when its FID at the model's default NFE is below the FID at
    the curve's smallest NFE."""
    claim = "flow matching: sample quality grows with sampling steps (FID at the smallest NFE above FID at the " \
            "model's default NFE)"
    curve = next((run.nfe_curve | {"label": run.label} for run in runs if run.nfe_curve), None)
    if curve is None:
        return f"{claim}: not measured (needs a flow-matching run compared with --nfe_curve)"
    points = sorted(curve["points"], key=lambda point: point["nfe"])
    default = next((p for p in points if p["nfe"] == curve["default_nfe"]), points[-1])
    fewest, fid = points[0], curve["metric"]
    return (f"{claim}: {_verdict(default[fid] < fewest[fid])}: FID {fewest[fid]:.3f} at NFE {fewest['nfe']} vs "
            f"{default[fid]:.3f} at NFE {default['nfe']} ({curve['label']}; {curve['solver']}, "
            f"{curve['num_samples']} samples, {fid})")

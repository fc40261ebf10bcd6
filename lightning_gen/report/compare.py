"""``python -m lightning_gen compare RUN_OR_CKPT ...``: finished runs side by side, offline.

For every run (a run folder, whose ``checkpoints/last.ckpt`` is used, or a checkpoint file) this
evaluates the model with the shared metric registry under one set of settings, and collects what the
run folder holds (learning curves from ``metrics.csv``, the fit time from ``run.json``). It adds:

- the latent-hole comparison for models that can encode and decode (AE, VAE): FID of decoded
  samples of the prior N(0, I) and of decoded midpoints (z_a + z_b) / 2 between pairs of encoded test
  images. A VAE's KL term pulls its codes towards the prior, so both stay close to its sample FID;
  an AE's codes can sit anywhere, so N(0, I) and midpoints land in holes of its latent space;
- parameter counts (trainable), sampling speed (samples/s at batch 1 and 64, or ``--speed_batch``, and with
  each sampler of a model that has several; at most ``--speed_seconds`` of sampling per sampler beyond one
  image, a slow sampler's rate then measured on fewer images and said so), what each model can do and how it
  samples (``report/claims.py: capabilities``), sample grids, reconstructions and interpolations;
- for a model whose ``sample`` takes ``nfe`` (flow matching): FID and samples/s at each of ``--nfe_values``
  on ``--nfe_samples`` samples (``report/nfe_curve.py``; ``--no-nfe_curve`` skips it);
- a bits/dim table of every run with a likelihood, each with its estimator (exact, a bound, an estimate with
  its standard error), averaged over ``--likelihood_images`` real images (default: ``--max_real``);
- a summary that opens the report: each textbook claim (VAE blur, implicit vs explicit density, slow
  autoregressive sampling, flows' exact likelihood and one-pass sampling, flow matching's quality against its
  sampling steps, VAEs easy and GANs hard to train) and whether these runs confirm it, with the numbers
  (``claim_summary``);
- seed groups: runs of one configuration that differ only in their seed are grouped, and the group shows
  the mean ± std of every metric, its number of runs and the share that failed (diverged or collapsed). The
  rule and the failure definition are in ``report/groups.py``; ``--group NAME=RUN,RUN`` names a group by hand.

Every metric's protocol (features, real images, sample count, ...) must agree across runs; a run
evaluated against other data is refused rather than put in the same column. Writes ``report.html``
(self-contained, PNGs embedded; a table per metric group, so many runs and metrics keep to the page's width),
``report.md`` (the same tables) and ``comparison.json`` (every number with its full protocol).
"""

from __future__ import annotations

import argparse
import csv
import io
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.utils import make_grid, save_image

from lightning_gen.callbacks.pictures import picture_grids
from lightning_gen.checkpoints import class_path, load_run, resolve_run
from lightning_gen.data.base import batch_images
from lightning_gen.errors import ConfigValueError, LightningGenError, check_range
from lightning_gen.metrics.finite import NonFiniteSamplesError
from lightning_gen.metrics.registry import (
    METRICS,
    EvaluationSettings,
    MetricResult,
    evaluate_model,
    shared_protocol,
    spec_of,
    supported_metrics,
)
from lightning_gen.models.base import has_surface
from lightning_gen.parser import add_settings_options, command_parser, settings_from
from lightning_gen.report.claims import SPEED_SECONDS, capabilities, sampling_speeds
from lightning_gen.report.groups import assign_groups, failure_of, group_key, run_config, seed_of
from lightning_gen.report.nfe_curve import NFE_SAMPLES, NFE_VALUES, nfe_curve, parse_nfe_values, samples_by_nfe


@dataclass
class ComparedRun:
    label: str
    checkpoint: Path
    folder: Path | None
    model_class: str
    results: list[MetricResult] = field(default_factory=list)
    latent_holes: list[MetricResult] = field(default_factory=list)
    parameters: int = 0
    samples_per_second: float = 0.0  # at the speed batch (64 unless told), the default sampler
    sampling: dict[str, float] = field(default_factory=dict)  # samples/s by batch size and sampler
    sampling_notes: dict[str, str] = field(default_factory=dict)  # a rate the time cap measured on fewer images
    sampling_protocol: dict = field(default_factory=dict)  # the model's sampling_protocol(): solver, NFE, ...
    capabilities: dict[str, str] = field(default_factory=dict)  # likelihood, encoder, ... (report/claims.py)
    nfe_curve: dict = field(default_factory=dict)  # FID and samples/s by NFE (report/nfe_curve.py), if measured
    fit_seconds: float | None = None
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    pictures: dict[str, bytes] = field(default_factory=dict)  # kind -> PNG
    seed: int | None = None  # config.yaml's seed_everything
    group_key: str = ""  # the recipe without the seed (report/groups.py: group_key)
    group: str | None = None  # the seed group it is summarised in, if any
    failure: str | None = None  # "diverged: ..." or "collapsed: ..." (report/groups.py: failure_of)


def _label(checkpoint: Path, folder: Path | None) -> str:
    return f"{folder.parent.name}/{folder.name}" if folder is not None else checkpoint.stem


def read_curves(folder: Path | None) -> dict[str, list[tuple[int, float]]]:
    """Validation curves of the registry's metrics from the run's metrics.csv (CSVLogger): key -> [(epoch, value)]."""
    path = folder / "metrics.csv" if folder is not None else None
    if path is None or not path.is_file():
        return {}
    curves: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        keys = [key for key in reader.fieldnames or () if key.startswith("val/") and spec_of(key)]
        for row in reader:
            if row.get("epoch") in ("", None):
                continue
            for key in keys:
                if row[key] not in ("", None):
                    curves.setdefault(key, []).append((int(float(row["epoch"])), float(row[key])))
    return curves


class _DecodedPrior(nn.Module):
    """decode(z) for z ~ N(0, I): what a model's latent space gives where its prior says to look.
    ``latent_shape``: the shape of one code as ``encode`` gives it (default: ``(model.latent_dim,)``; a flow's
    code is as large as its image and it has no ``latent_dim``)."""

    def __init__(self, model, latent_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.model, self.data_shape = model, model.data_shape
        self.latent_shape = tuple(latent_shape) if latent_shape is not None else (model.latent_dim,)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, *self.latent_shape, generator=generator, device=self.model.device)
        return self.model.decode(z)


class _DecodedMidpoints(nn.Module):
    """decode((z_a + z_b) / 2) for random pairs of encoded held-out images."""

    def __init__(self, model, images: Tensor):
        super().__init__()
        self.model, self.images, self.data_shape = model, images, model.data_shape

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        device = generator.device if generator is not None else self.images.device
        a, b = torch.randint(len(self.images), (2, n), generator=generator, device=device).cpu()
        encode = lambda x: self.model.encode(self.model.prepare_input(x.to(self.model.device), generator))  # noqa: E731
        return self.model.decode((encode(self.images[a]) + encode(self.images[b])) / 2)


def _evaluate(model, datamodule, settings: EvaluationSettings, metrics: list[str], device) -> list[MetricResult]:
    return evaluate_model(model, datamodule, replace(settings, metrics=metrics), device) if metrics else []


def _held_out(datamodule, count: int) -> Tensor:
    images, seen = [], 0
    for batch in datamodule.split_dataloader("test"):
        images.append(batch_images(batch))
        seen += len(images[-1])
        if seen >= count:
            break
    return torch.cat(images)[:count]


def _png(images: Tensor, nrow: int) -> bytes:
    buffer = io.BytesIO()
    save_image(make_grid(images.float().cpu().clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0), buffer, format="png")
    return buffer.getvalue()


@torch.no_grad()
def check_protocols(runs: list[ComparedRun]) -> None:
    """Refuse to put numbers measured under different protocols in one column (the entries that describe a
    model's own estimator may differ: see ``shared_protocol``)."""
    first_seen: dict[str, tuple[str, dict]] = {}
    for run in runs:
        for result in run.results + run.latent_holes:
            shared = shared_protocol(result)
            if result.name not in first_seen:
                first_seen[result.name] = (run.label, shared)
                continue
            label, expected = first_seen[result.name]
            differing = sorted(k for k in set(shared) | set(expected) if shared.get(k) != expected.get(k))
            if differing:
                key = differing[0]
                raise LightningGenError(
                    f"{result.name} of {run.label} and {label} were measured under different protocols "
                    f"({key}: {shared.get(key)!r} vs {expected.get(key)!r}); compare runs evaluated on the same "
                    "data and features (train them with the same data config)")


# compare scores several runs, each on every metric: by default a smaller protocol than a single evaluation's
# (EvaluationSettings' defaults), stated in every number's protocol
COMPARE_PROTOCOL = EvaluationSettings(metrics="fid,kid,precision_recall,sharpness,nll_bpd", num_samples=2000,
                                      max_real=2000, batch_size=250)


def compare(paths: list[str], out: str | Path = "comparison", settings: EvaluationSettings = COMPARE_PROTOCOL,
            latent_holes: bool = True, device: str = "cpu", groups: dict[str, list[str]] | None = None,
            speed_batch: int = 64, speed_seconds: float = SPEED_SECONDS, nfe_curve_on: bool = True,
            nfe_values: tuple[int, ...] = NFE_VALUES, nfe_samples: int = NFE_SAMPLES,
            likelihood_images: int | None = None) -> Path:
    """Evaluate ``paths`` (run folders or checkpoints) alike and write the report into ``out``. ``groups``:
    seed groups named by hand, name -> runs (evaluated too when not in ``paths``); the others form by rule.
    ``speed_batch``: sampling speed is measured at batch 1 and at this batch, with at most ``speed_seconds``
    of sampling per sampler beyond its first image (``sampling_speeds``). ``nfe_curve_on``: for models whose
    ``sample`` takes ``nfe``, FID of ``nfe_samples`` samples and samples/s at each of ``nfe_values``.
    ``likelihood_images``: real images of the likelihood metrics (None: ``settings.max_real``)."""
    check_range(at_least=1, speed_batch=speed_batch, nfe_samples=nfe_samples, likelihood_images=likelihood_images)
    check_range(above=0, speed_seconds=speed_seconds)
    nfe_values = parse_nfe_values(",".join(map(str, nfe_values)))
    if len(paths) + sum(len(members) for members in (groups or {}).values()) < 1:
        raise LightningGenError("compare needs at least one run folder or checkpoint")
    wanted = settings.metrics or COMPARE_PROTOCOL.metrics
    # likelihood metrics average over their own number of real images: an ODE likelihood costs about a hundred
    # samples' worth per image (flow matching), so a comparison may score fewer than it draws features for
    likelihood_settings = replace(settings, max_real=likelihood_images or settings.max_real)
    torch_device = torch.device(device)
    runs = []
    unique = {resolve_run(p)[0].resolve(): p for p in [*paths, *(p for ps in (groups or {}).values() for p in ps)]}
    for path in unique.values():  # a run named twice (also in a --group) is evaluated once
        loaded = load_run(path, map_location=torch_device)
        model, datamodule = loaded.model, loaded.datamodule
        run = ComparedRun(_label(loaded.checkpoint_path, loaded.folder), loaded.checkpoint_path, loaded.folder,
                          class_path(type(model)))
        config = run_config(loaded.folder)
        run.seed, run.group_key = seed_of(config), group_key(loaded.saved, config)
        finite = all(torch.isfinite(p).all() for p in model.parameters())
        if not finite:  # its samples would be NaN: nothing to score, and the run counts as diverged
            run.failure = "diverged: non-finite weights in the checkpoint"
        supported = supported_metrics(model, wanted) if finite else []
        likelihoods = [name for name in supported if METRICS[name].needs != "sample"]  # need no samples
        try:
            run.results = _evaluate(model, datamodule, settings, [m for m in supported if m not in likelihoods],
                                    torch_device) + _evaluate(model, datamodule, likelihood_settings, likelihoods,
                                                              torch_device)
        except NonFiniteSamplesError as error:  # NaN samples from finite weights: counted as diverged
            run.failure = f"diverged: {error}"
            run.results = _evaluate(model, datamodule, likelihood_settings, likelihoods, torch_device)
        if not run.failure and latent_holes and has_surface(model, "encode") and has_surface(model, "decode"):
            fid_only = replace(settings, metrics=["fid"])
            try:
                held_out = _held_out(datamodule, settings.max_real or COMPARE_PROTOCOL.max_real)
                with torch.no_grad():
                    code = model.encode(model.prepare_input(held_out[:1].to(torch_device)))  # (1, *latent shape)
                prior = evaluate_model(_DecodedPrior(model, code.shape[1:]), datamodule, fid_only, torch_device)[0]
                midpoints = evaluate_model(_DecodedMidpoints(model, held_out), datamodule, fid_only, torch_device)[0]
                run.latent_holes = [replace(prior, name=f"prior_{prior.name}"),
                                    replace(midpoints, name=f"midpoint_{midpoints.name}")]
            except NonFiniteSamplesError as error:
                run.failure = f"diverged: decoded latents: {error}"
        run.parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
        speeds = sampling_speeds(model, settings.seed, batches=(1, speed_batch), max_seconds=speed_seconds)
        run.sampling, run.sampling_notes = speeds.rates, speeds.notes
        run.samples_per_second = run.sampling[f"batch {speed_batch}"]
        if has_surface(model, "sampling_protocol"):
            run.sampling_protocol = model.sampling_protocol()
        run.capabilities = capabilities(model)
        if not run.failure and nfe_curve_on and samples_by_nfe(model):
            try:
                run.nfe_curve = nfe_curve(model, datamodule, settings, nfe_values, nfe_samples, torch_device)
            except NonFiniteSamplesError as error:  # e.g. NFE 1 of a diverged field: the curve is left out
                run.failure = f"diverged: NFE curve: {error}"
        run.fit_seconds = loaded.record.get("fit_seconds")
        run.curves = read_curves(run.folder)
        run.failure = failure_of(run, loaded.record)
        if finite:
            generator = torch.Generator(device=torch_device).manual_seed(settings.seed)
            grids = picture_grids(model, _held_out(datamodule, 16).to(torch_device), generator, num_samples=32)
            run.pictures = {kind: _png(images, nrow) for kind, (images, nrow) in grids.items()}
        runs.append(run)
    check_protocols(runs)
    assign_groups(runs, {name: [Path(p) for p in members] for name, members in (groups or {}).items()})
    from lightning_gen.report.html import write_report  # matplotlib is imported only when writing

    return write_report(runs, Path(out))


def _group_option(text: str) -> tuple[str, list[str]]:
    """``NAME=RUN,RUN,...`` -> (name, runs)."""
    name, _, members = text.partition("=")
    runs = [member.strip() for member in members.split(",") if member.strip()]
    if not name.strip() or not runs:
        raise ConfigValueError(f"--group {text!r} is not NAME=RUN,RUN,... (e.g. vae=runs/vae/version_0,"
                               "runs/vae/version_1)")
    return name.strip(), runs


def main(argv: list[str]) -> None:
    parser = command_parser("python -m lightning_gen compare", __doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=str, help="run folders (runs/<name>/version_<n>) or .ckpt files; runs "
                        "of one config that differ only in their seed form a seed group (mean ± std, failed share)")
    parser.add_argument("--group", nargs="+", type=str, default=[], metavar="NAME=RUN,RUN,...",
                        help="seed groups named by hand (one or more); their runs are compared too")
    parser.add_argument("--out", default="comparison", help="output folder (report.html, report.md, comparison.json)")
    add_settings_options(parser, skip={"split", "cache_dir"}, **{
        name: getattr(COMPARE_PROTOCOL, name) for name in ("metrics", "num_samples", "max_real", "batch_size")})
    parser.add_argument("--likelihood_images", type=int | None, default=None,
                        help="real images the likelihood metrics average over (default: --max_real); flow "
                             "matching's ODE likelihood costs ~100 samples' worth per image")
    parser.add_argument("--no_latent_holes", action="store_true", help="skip the AE/VAE prior and midpoint FIDs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--speed_batch", type=int, default=64,
                        help="sampling speed at batch 1 and at this batch (the table's samples/s)")
    parser.add_argument("--speed_seconds", type=float, default=SPEED_SECONDS,
                        help="sampling time per sampler for the speed measurement, beyond its first image; a "
                             "slower sampler's rate is measured on as many images as fit, and says so")
    parser.add_argument("--nfe_curve", action=argparse.BooleanOptionalAction, default=True,
                        help="for models that sample with a number of function evaluations (flow matching): FID "
                             "and samples/s at each of --nfe_values (cost: nfe_samples x sum of the NFEs)")
    parser.add_argument("--nfe_values", type=str, default=",".join(map(str, NFE_VALUES)), metavar="N,N,...",
                        help="NFEs of the curve (the model's default is added), e.g. 1,2,5,10,20,50")
    parser.add_argument("--nfe_samples", type=int, default=NFE_SAMPLES,
                        help="samples per NFE of the curve (its FIDs compare with each other, not the table's)")
    args = parser.parse_args(argv)
    if not args.runs and not args.group:
        parser.error("give at least one run folder or checkpoint (or a --group)")
    named = [_group_option(text) for text in args.group]
    groups = dict(named)
    if len(groups) < len(named):
        raise ConfigValueError("each --group needs its own NAME")
    settings = settings_from(args, max_real=args.max_real or None)  # --max_real 0: the whole split
    folder = compare(args.runs, args.out, settings, latent_holes=not args.no_latent_holes, device=args.device,
                     groups=groups, speed_batch=args.speed_batch, speed_seconds=args.speed_seconds,
                     nfe_curve_on=args.nfe_curve, nfe_values=parse_nfe_values(args.nfe_values),
                     nfe_samples=args.nfe_samples, likelihood_images=args.likelihood_images)
    print(f"report: {folder / 'report.html'} (table: {folder / 'report.md'})")



"""Recipe levers of the flow-matching and normalizing-flow CPU configs at a 5-minute budget (issue 35).

    python benchmarks/recipe_levers.py speed                     # training and sampling images/s, side by side
    python benchmarks/recipe_levers.py quality --family fm --reference-images 4000 --seeds 0 1
    python benchmarks/recipe_levers.py quality --family flow --reference-images 20000 --seeds 0 1
    python benchmarks/recipe_levers.py checkpoint --ckpt runs/.../last.ckpt --samples 1000   # FID per T / sampler
    python benchmarks/recipe_levers.py report                    # the table of every stored row

speed: every candidate is built once, then the candidates take turns (``--rounds`` rounds of ``--steps``
optimizer steps each, with torch's default threads, as quality_at_budget.py runs): images/s is the median
over rounds, and ``ratio`` divides it by the reference candidate's (the current default config's) median of
the same rounds, so load on the shared machine cancels. Sampling: forward passes of the EMA network at
batch 50 (flow matching: images/s at NFE 10, Euler and Heun cost the same per evaluation) or one inverse
pass at batch 200 (flow).

quality: each candidate trains for an EQUAL WALL-CLOCK budget expressed in images: ``--reference-images``
for the reference candidate, times the candidate's speed ratio from the latest speed rows (a 2x faster
candidate sees 2x the images). The loop is the model's own objective, optimizer and clipping without
Lightning (the same for every candidate). Then FID in ``fmnist_clf`` features on ``--samples`` samples vs
as many test images (``lightning_gen.metrics.evaluate_model``). Flow matching keeps several EMA copies in one
run (decays in ``EMA_DECAYS``, each with the model's ramp min(d, (1 + n) / (10 + n))) and scores each; the
sampler grid (Euler / Heun, NFE 10 / 20) runs on the best EMA. The flow also scores held-out bits/dim (the
first 2,000 validation images) and FID at several sampling temperatures.

Every row is appended to benchmarks/results/recipe_levers.jsonl (kind, family, candidate, seed, numbers,
threads, date); ``report`` prints them as tables.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from lightning_gen.data import FashionMNISTDataModule
from lightning_gen.data.base import batch_images
from lightning_gen.metrics import EvaluationSettings, evaluate_model
from lightning_gen.models import Flow, FlowMatching
from lightning_gen.models.base import nats_to_bits_per_dim

RESULTS = Path(__file__).parent / "results" / "recipe_levers.jsonl"
EMA_DECAYS = (0.99, 0.995, 0.999)
SAMPLERS = (("heun", 10), ("euler", 10), ("heun", 20), ("euler", 20))
TEMPERATURES = (0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True)
class Candidate:
    """One recipe: the model's init arguments, the batch size, Adam's lr and the clipping norm."""

    name: str
    family: str  # "fm" or "flow"
    model_args: dict = field(default_factory=dict)
    batch_size: int = 64
    lr: float = 1e-3
    clip: float = 1.0

    def build(self) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        model = (FlowMatching if self.family == "fm" else Flow)(**self.model_args)
        parameters = model.net.parameters() if self.family == "fm" else model.parameters()
        return model, torch.optim.Adam(parameters, lr=self.lr)


FM = "fm"
FLOW = "flow"
# the first of each family is the reference: the config's defaults before this study (w32 [1,2,2], batch 64)
CANDIDATES = [
    Candidate("fm w32 b64 (old default)", FM, {"base_width": 32}),
    Candidate("fm w24 b64", FM, {"base_width": 24}),
    Candidate("fm w16 b64", FM, {"base_width": 16}),
    Candidate("fm w16 b128", FM, {"base_width": 16}, batch_size=128),
    Candidate("fm w16 b32", FM, {"base_width": 16}, batch_size=32),
    Candidate("fm w16 [1,2,2] lr2e-3", FM, {"base_width": 16}, lr=2e-3),
    Candidate("fm w16 [1,2,2] lr3e-3", FM, {"base_width": 16}, lr=3e-3),
    Candidate("fm w16 [1,2,4]", FM, {"base_width": 16, "channel_multipliers": (1, 2, 4)}),
    Candidate("flow L2 K4 h64 (old default)", FLOW, {"levels": 2, "steps_per_level": 4, "hidden": 64},
              lr=3e-3, clip=10.0),
    Candidate("flow L2 K8 h32", FLOW, {"levels": 2, "steps_per_level": 8, "hidden": 32}, lr=3e-3, clip=10.0),
    Candidate("flow L2 K8 h64", FLOW, {"levels": 2, "steps_per_level": 8, "hidden": 64}, lr=3e-3, clip=10.0),
    Candidate("flow L2 K4 h64 b128", FLOW, {"levels": 2, "steps_per_level": 4, "hidden": 64}, batch_size=128,
              lr=3e-3, clip=10.0),
    Candidate("flow L2 K4 h64 lr1e-3", FLOW, {"levels": 2, "steps_per_level": 4, "hidden": 64}, lr=1e-3,
              clip=10.0),
    Candidate("flow L2 K4 h96", FLOW, {"levels": 2, "steps_per_level": 4, "hidden": 96}, lr=3e-3, clip=10.0),
]
BY_NAME = {c.name: c for c in CANDIDATES}


def write(row: dict) -> None:
    row = {**row, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def batches(batch_size: int, seed: int):
    """Endless shuffled training batches of the configs' 54k split, ``[B, 1, 28, 28]`` in [0, 1]."""
    data = FashionMNISTDataModule(batch_size=batch_size, split_seed=0, val_fraction=0.1)
    data.setup("fit")
    torch.manual_seed(seed)
    while True:
        for batch in data.train_dataloader():
            yield batch_images(batch)


class Trainer:
    """The model's objective, Adam and gradient clipping, plus EMA copies (flow matching)."""

    def __init__(self, candidate: Candidate, seed: int, ema_decays=(0.999,)):
        torch.manual_seed(seed)
        self.candidate = candidate
        self.model, self.optimizer = candidate.build()
        self.model.train()
        self.generator = torch.Generator().manual_seed(seed)
        self.data = batches(candidate.batch_size, seed)
        self.steps = 0
        self.emas = {d: copy.deepcopy(self.model.net).requires_grad_(False) for d in ema_decays} \
            if candidate.family == FM else {}

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        m = self.model
        if self.candidate.family == FM:
            return m.objective(m.net, images, None, self.generator).mean()
        y = m.prepare_input(images, self.generator)
        m._initialize_actnorm_once(y)
        return nats_to_bits_per_dim(-m.discrete_log_likelihood(y), m.num_dims).mean()

    def step(self) -> float:
        loss = self.loss(next(self.data))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, self.candidate.clip)
        self.optimizer.step()
        with torch.no_grad():
            for decay, ema in self.emas.items():
                now = min(decay, (1 + self.steps) / (10 + self.steps))  # the model's ramp
                torch._foreach_lerp_(list(ema.parameters()), list(self.model.net.parameters()), 1.0 - now)
        self.steps += 1
        return loss.item()


def measure_speed(names: list[str], rounds: int, steps: int) -> None:
    trainers = [Trainer(BY_NAME[n], seed=0) for n in names]
    for t in trainers:  # warm-up (and the flow's ActNorm initialisation)
        for _ in range(3):
            t.step()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for t in trainers:
            start = time.perf_counter()
            for _ in range(steps):
                t.step()
            times[t.candidate.name].append(steps * t.candidate.batch_size / (time.perf_counter() - start))
        print(f"round {r}: " + ", ".join(f"{n}: {v[-1]:.0f}/s" for n, v in times.items()), flush=True)
    reference = {}
    for family in (FM, FLOW):
        first = next((n for n in names if BY_NAME[n].family == family), None)
        if first is not None:
            reference[family] = first
    # sampling images/s (the EMA/eval network), alternated too
    sampling: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(2):
        for t in trainers:
            m = t.model.eval()
            n = 50 if t.candidate.family == FM else 200
            start = time.perf_counter()
            with torch.no_grad():
                if t.candidate.family == FM:
                    m.sample(n, torch.Generator().manual_seed(0), nfe=10, sampler="euler")
                else:
                    m.sample(n, torch.Generator().manual_seed(0))
            sampling[t.candidate.name].append(n / (time.perf_counter() - start))
            m.train()
    for t in trainers:
        n, family = t.candidate.name, t.candidate.family
        ratios = [a / b for a, b in zip(times[n], times[reference[family]])]
        write({"kind": "speed", "family": family, "candidate": n, "reference": reference[family],
               "train_images_per_s": statistics.median(times[n]), "train_ratio": statistics.median(ratios),
               "sample_images_per_s": statistics.median(sampling[n]),
               "sample_ratio": statistics.median(sampling[n]) / statistics.median(sampling[reference[family]]),
               "sample_protocol": "NFE 10 (Euler or Heun), batch 50" if family == FM else "one inverse pass, batch 200",
               "rounds": rounds, "steps_per_round": steps, "batch_size": t.candidate.batch_size,
               "parameters": sum(p.numel() for p in t.model.parameters()) // (2 if family == FM else 1)})


def rows(kind: str | None = None) -> list[dict]:
    if not RESULTS.exists():
        return []
    found = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    return [r for r in found if kind is None or r["kind"] == kind]


def speed_ratio(name: str) -> float:
    """The latest measured training-speed ratio of ``name``, or of a candidate with the same net and batch size
    (the learning rate does not change the cost of a step)."""
    same = [c.name for c in CANDIDATES if (c.family, c.model_args, c.batch_size) == (
        BY_NAME[name].family, BY_NAME[name].model_args, BY_NAME[name].batch_size)]
    found = [r for r in rows("speed") if r["candidate"] == name] or [r for r in rows("speed") if r["candidate"] in same]
    if not found:
        raise SystemExit(f"no speed row for {name!r}: run `recipe_levers.py speed --candidates ...` first")
    return found[-1]["train_ratio"]


def fid(model, samples: int) -> float:
    settings = EvaluationSettings(metrics=["fid"], num_samples=samples, max_real=samples, features="fmnist_clf",
                                  progress=False)
    data = FashionMNISTDataModule()
    return evaluate_model(model, data, settings, torch.device("cpu"))[0].value


def held_out_bpd(model: Flow, count: int = 2000) -> float:
    data = FashionMNISTDataModule(eval_batch_size=500)
    data.setup("fit")
    total, seen = 0.0, 0
    with torch.no_grad():
        for i, batch in enumerate(data.val_dataloader()):
            x = batch_images(batch)
            y = model.prepare_input(x, torch.Generator().manual_seed(i))
            total += float(nats_to_bits_per_dim(-model.discrete_log_likelihood(y), model.num_dims).sum())
            seen += len(x)
            if seen >= count:
                break
    return total / seen


def measure_quality(names: list[str], seeds: list[int], reference_images: int, samples: int,
                    ema_decays: tuple[float, ...], samplers: list[tuple[str, int]]) -> None:
    for seed in seeds:
        for name in names:
            candidate = BY_NAME[name]
            images = int(reference_images * speed_ratio(name))
            steps = max(1, round(images / candidate.batch_size))
            trainer = Trainer(candidate, seed, ema_decays)
            start = time.perf_counter()
            losses = [trainer.step() for _ in range(steps)]
            seconds = time.perf_counter() - start
            common = {"kind": "quality", "family": candidate.family, "candidate": name, "seed": seed,
                      "images": steps * candidate.batch_size, "reference_images": reference_images,
                      "train_seconds_here": round(seconds, 1), "final_train_loss": statistics.mean(losses[-20:]),
                      "fid_samples": samples, "fid_real": f"{samples} test images, fmnist_clf"}
            model = trainer.model.eval()
            if candidate.family == FM:
                scores = {}
                for decay, ema in trainer.emas.items():
                    model.ema_net.load_state_dict(ema.state_dict())
                    model.sampler, model.nfe = "heun", 10
                    scores[decay] = fid(model, samples)
                    write({**common, "ema_decay": decay, "sampler": "heun", "nfe": 10, "fid": scores[decay]})
                best = min(scores, key=scores.get)
                model.ema_net.load_state_dict(trainer.emas[best].state_dict())
                for sampler, nfe in samplers:
                    model.sampler, model.nfe = sampler, nfe
                    write({**common, "ema_decay": best, "sampler": sampler, "nfe": nfe, "fid": fid(model, samples)})
            else:
                bpd = held_out_bpd(model)
                for temperature in TEMPERATURES:
                    model.temperature = temperature
                    write({**common, "temperature": temperature, "val_bpd_2000": bpd, "fid": fid(model, samples)})


def measure_checkpoint(checkpoint: str, samples: int, samplers: list[tuple[str, int]]) -> None:
    """FID of one trained model's samples under each sampling setting (no training noise between them): a
    Flow at each of ``TEMPERATURES``, a FlowMatching model with each (solver, NFE) of ``samplers``."""
    is_fm = "base_width" in torch.load(checkpoint, map_location="cpu", weights_only=False)["hyper_parameters"]
    model = (FlowMatching if is_fm else Flow).load_from_checkpoint(checkpoint, map_location="cpu").eval()
    common = {"kind": "checkpoint", "family": FM if is_fm else FLOW, "candidate": f"checkpoint {checkpoint}",
              "fid_samples": samples, "fid_real": f"{samples} test images, fmnist_clf"}
    for setting in samplers if is_fm else TEMPERATURES:
        if is_fm:
            model.sampler, model.nfe = setting
            write({**common, "sampler": setting[0], "nfe": setting[1], "fid": fid(model, samples)})
        else:
            model.temperature = setting
            write({**common, "temperature": setting, "fid": fid(model, samples)})


def report() -> None:
    print(f"{'candidate':32s} {'train img/s':>11s} {'ratio':>6s} {'sample img/s':>12s} {'ratio':>6s}")
    latest = {r["candidate"]: r for r in rows("speed")}
    for r in latest.values():
        print(f"{r['candidate']:32s} {r['train_images_per_s']:11.1f} {r['train_ratio']:6.2f} "
              f"{r['sample_images_per_s']:12.1f} {r['sample_ratio']:6.2f}")
    print()
    groups: dict[tuple, list[dict]] = {}
    for r in rows("quality"):
        setting = (r["ema_decay"], r["sampler"], r["nfe"]) if r["family"] == FM else (r["temperature"],)
        groups.setdefault((r["candidate"], r["reference_images"], r["fid_samples"], *setting), []).append(r)
    for r in rows("checkpoint"):
        setting = f"T {r['temperature']}" if r["family"] == FLOW else f"{r['sampler']} NFE {r['nfe']}"
        print(f"{r['candidate']}: {setting}: FID {r['fid']:.1f} ({r['fid_samples']} samples)")
    print(f"{'candidate':32s} {'images':>7s} {'setting':>22s} {'seeds':>5s} {'median FID':>10s} {'worst':>7s} "
          f"{'bpd':>6s}")
    for key, found in groups.items():
        by_seed = {r["seed"]: r for r in found}  # the latest row of each seed
        fids = [r["fid"] for r in by_seed.values()]
        setting = (f"ema {key[3]} {key[4]} {key[5]}" if len(key) == 6 else f"T {key[3]}")
        bpd = statistics.median(r["val_bpd_2000"] for r in by_seed.values()) if "val_bpd_2000" in found[0] else None
        images = statistics.median(r["images"] for r in by_seed.values())
        print(f"{key[0]:32s} {images:7.0f} {setting:>22s} {len(fids):5d} {statistics.median(fids):10.1f} "
              f"{max(fids):7.1f} " + (f"{bpd:6.3f}" if bpd is not None else "     -"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["speed", "quality", "checkpoint", "report"])
    parser.add_argument("--ckpt", help="checkpoint: a trained Flow or FlowMatching checkpoint")
    parser.add_argument("--family", choices=[FM, FLOW, "all"], default="all")
    parser.add_argument("--candidates", nargs="*", help="names from CANDIDATES (default: all of the family)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--reference-images", type=int, default=4000)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--ema-decays", type=float, nargs="*", default=list(EMA_DECAYS))
    parser.add_argument("--samplers", nargs="*", default=[f"{s}:{n}" for s, n in SAMPLERS[1:]],
                        help="solver:nfe pairs scored on the best EMA besides heun:10")
    args = parser.parse_args(argv)
    names = args.candidates or [c.name for c in CANDIDATES if args.family in ("all", c.family)]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}; choose from {list(BY_NAME)}")
    if args.what == "speed":
        measure_speed(names, args.rounds, args.steps)
    elif args.what == "quality":
        samplers = [(pair.split(":")[0], int(pair.split(":")[1])) for pair in args.samplers]
        measure_quality(names, args.seeds, args.reference_images, args.samples, tuple(args.ema_decays), samplers)
    elif args.what == "checkpoint":
        measure_checkpoint(args.ckpt, args.samples,
                           [(pair.split(":")[0], int(pair.split(":")[1])) for pair in args.samplers])
    report()


if __name__ == "__main__":
    sys.exit(main())

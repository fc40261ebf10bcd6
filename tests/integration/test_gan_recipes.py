"""The toy GAN recipe, judged over seeds: what it guarantees, and a control that must fail.

A GAN trajectory is chaotic and float rounding differs between CPUs: the same seed that covers all 8
modes on one machine covered 6 with 40% high-quality samples on another. So this test asserts what
`benchmarks/toy_gan_seeds.py` measured for the recipe (10 of 10 seeds pass on the machine it was tuned
on; the table is in benchmarks/README.md) with room for one unlucky trajectory: at least 2 of 3 seeds,
chosen before looking at any result, pass the recipe's criterion. A broken discriminator (learning
rate 0) must fail it on every seed.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

from tests.support.paths import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from toy_gan_seeds import passes, train_and_score  # noqa: E402

SEEDS = (0, 1, 2)  # fixed before any result was seen
RING = "configs/gan_toy_ring.yaml"


def _scores(tmp_path, seeds, *overrides) -> list[dict]:
    with ThreadPoolExecutor(2) as pool:  # one process per seed, one thread each
        return list(pool.map(lambda seed: train_and_score(RING, seed, list(overrides), tmp_path), seeds))


def test_the_ring_recipe_covers_the_modes_on_most_seeds_and_a_broken_discriminator_on_none(tmp_path):
    recipe = _scores(tmp_path / "recipe", SEEDS)
    print("gan_toy_ring.yaml:", recipe)
    assert sum(map(passes, recipe)) >= 2, recipe
    broken = _scores(tmp_path / "broken", SEEDS[:2], "--model.init_args.discriminator_optimizer.init_args.lr", "0",
                     "--trainer.max_epochs", "10")
    print("discriminator lr 0:", broken)
    assert not any(map(passes, broken)), broken

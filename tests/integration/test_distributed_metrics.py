"""Metrics computed by 2 processes (gloo, CPU) equal the single-process values on the same samples."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_gen.data import FashionMNISTDataModule
from lightning_gen.metrics import EvaluationSettings, evaluate_model
from lightning_gen.metrics.registry import samples_per_rank
from lightning_gen.models import VAE
from tests.support.image_bank import ImageBankModel
from tests.support.paths import FMNIST_DIR

NUM_SAMPLES = 600


class ShardedImageBank(ImageBankModel):
    """Process r of w samples its contiguous share of the bank, so all processes together draw the
    bank in the single-process order."""

    def sample(self, n, generator=None):
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        if self.position == 0:
            self.position = sum(samples_per_rank(NUM_SAMPLES, r, world) for r in range(rank))
        return super().sample(n, generator)


def _evaluate(cache_dir: str) -> dict[str, float]:
    torch.manual_seed(0)
    data = FashionMNISTDataModule(data_dir=str(FMNIST_DIR), subset=2000)
    pool = data.split_dataloader("train").dataset
    bank = torch.stack([pool[i][0] for i in range(NUM_SAMPLES)])
    settings = EvaluationSettings(metrics=["fid", "kid", "precision_recall"], num_samples=NUM_SAMPLES, split="test",
                                  max_real=500, cache_dir=cache_dir, batch_size=100, kid_subset_size=200,
                                  progress=False)
    results = evaluate_model(ShardedImageBank(bank), data, settings, "cpu")
    vae = VAE(latent_dim=4, channels=8, hidden=32, test_importance_samples=5)
    likelihood = EvaluationSettings(metrics=["nll_bpd", "elbo"], split="test", max_real=450, batch_size=100,
                                    cache_dir=cache_dir, progress=False)
    results += evaluate_model(vae, data, likelihood, "cpu")
    return {r.name: r.value for r in results}


def _worker(rank: int, world: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        values = _evaluate(os.path.join(folder, "cache"))
        Path(folder, f"rank{rank}.json").write_text(json.dumps(values))
    finally:
        dist.destroy_process_group()


def test_two_processes_give_the_single_process_values(tmp_path, fmnist_dir):
    single = _evaluate(str(tmp_path / "cache_single"))
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]  # every process reports the same synced numbers
    assert set(single) == {"fid_fmnist_clf", "kid_fmnist_clf", "precision_fmnist_clf", "recall_fmnist_clf",
                           "nll_bpd", "elbo"}
    for name, value in single.items():
        assert ranks[0][name] == pytest.approx(value, rel=1e-6, abs=1e-9), name

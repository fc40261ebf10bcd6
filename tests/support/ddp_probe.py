"""A callback that the DDP tests add to a `python -m lightning_gen fit` run
(``--trainer.callbacks+=tests.support.ddp_probe.RankProbe`` with the repository on PYTHONPATH): each process
writes what it saw to ``$RANK_PROBE_DIR/<fit|validate>_rank<r>.json`` so the test can compare the processes
(``ShardProbe``: the samples of every training batch, for device-resident data)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import lightning.pytorch as pl
import torch

from lightning_gen.data.base import batch_images


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def sample_digests(samples: torch.Tensor) -> list[str]:
    """One digest per sample (image or point), for comparing sets of samples across processes."""
    flat = samples.detach().cpu().contiguous().flatten(1).numpy()
    return [hashlib.sha1(row.tobytes()).hexdigest()[:20] for row in flat]


class RankProbe(pl.Callback):
    def __init__(self):
        self.record: dict = {"first_batches": []}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx < 2:
            self.record["first_batches"].append(_digest(batch_images(batch)))
        if trainer.current_epoch == 0 and batch_idx == 0:
            copy = torch.Generator(device=pl_module.training_rng.device).set_state(pl_module.training_rng.get_state())
            self.record["noise"] = torch.randn(4, generator=copy, device=copy.device).tolist()

    def on_validation_end(self, trainer, pl_module):
        if trainer.state.fn == "validate":  # a `validate` run: its metrics, unrounded
            self._write(trainer, "validate", {k: float(v) for k, v in trainer.callback_metrics.items()})

    def _write(self, trainer, kind: str, record: dict) -> None:
        folder = Path(os.environ["RANK_PROBE_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{kind}_rank{trainer.global_rank}.json").write_text(json.dumps(record))

    def on_train_end(self, trainer, pl_module):
        # parameters only: DDP re-broadcasts buffers (batch-norm statistics) from rank 0 at each forward,
        # so the last forward's buffer updates may differ by rank
        parameters = {name: _digest(value) for name, value in pl_module.named_parameters()}
        self.record.update(rank=trainer.global_rank, world_size=trainer.world_size, parameters=parameters,
                           global_step=trainer.global_step,
                           callback_metrics={k: float(v) for k, v in trainer.callback_metrics.items()
                                             if v.numel() == 1})
        self._write(trainer, "fit", self.record)


class ShardProbe(pl.Callback):
    """Each DDP process writes the samples of every training batch, by epoch, to
    ``$RANK_PROBE_DIR/resident_rank<r>.json``."""

    def __init__(self):
        self.seen: dict[int, list[str]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.setdefault(trainer.current_epoch, []).extend(sample_digests(batch_images(batch)))

    def on_train_end(self, trainer, pl_module):
        folder = Path(os.environ["RANK_PROBE_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "seen": self.seen,
                  "loader": type(trainer.train_dataloader).__name__}
        (folder / f"resident_rank{trainer.global_rank}.json").write_text(json.dumps(record))

"""The code grids of a frozen VQ-VAE as a DataModule: the data of the second stage, a prior over codes.

Each item is ``(image, label, codes)``: the image in [0, 1] as the VQ-VAE's own DataModule gives it (so
FID's real images, pictures and ``compare`` see images, as for every model), its label, and its code grid
``[h, w]`` (long) from ``VQVAE.encode_indices``. The grids are computed once per official split (train
pool and test) and cached on disk under the SHA-256 of the checkpoint file: a retrained or replaced
checkpoint has another digest, so a cache is never reused for another VQ-VAE.

``data_shape`` is the shape of the images (what a prior's ``sample`` returns, decoded), ``code_shape``
the grid's ``(h, w)``, ``num_codes`` the VQ-VAE's K, ``num_classes`` the image data's classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from lightning_gen.checkpoints import (
    DATAMODULE_KEY,
    MODEL_CLASS_KEY,
    model_hyperparameters,
    read_checkpoint,
    run_from_checkpoint,
)
from lightning_gen.data.base import SplitDataModule
from lightning_gen.errors import CheckpointError, ConfigValueError, check_range
from lightning_gen.files import atomic_write

VQVAE_CLASS = "lightning_gen.models.vqvae.VQVAE"
ENCODE_SEED = 1234  # seeds the input preparation of each encoded batch (a Bernoulli decoder binarises its input)
TRAIN_FIRST = ("python -m lightning_gen fit --config configs/vqvae_fmnist.yaml, then pass its checkpoint: "
               "--data.init_args.vqvae_checkpoint runs/vqvae_fmnist/version_0/checkpoints/last.ckpt")


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file as it is now: metrics' helper without its cache by path (a checkpoint file
    may be rewritten in place, and the cache key must follow it)."""
    from lightning_gen.metrics.features import file_sha256 as cached_by_path  # metrics imports data

    return cached_by_path.__wrapped__(str(path))


class CodedImages(Dataset):
    """``(image, label, codes)`` items: an image dataset of ``(image, label)`` pairs beside its code grids."""

    def __init__(self, images: Dataset, codes: Tensor):
        assert len(images) == len(codes)
        self.images, self.codes = images, codes

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        image, label = self.images[index]
        return image, torch.as_tensor(label), self.codes[index].long()


class VQCodesDataModule(SplitDataModule):
    """Images of a VQ-VAE run's data with their code grids under its frozen encoder (cached on disk).

    Args:
        vqvae_checkpoint: a VQ-VAE checkpoint (``.ckpt``) or run folder (its ``checkpoints/last.ckpt``).
            A path that does not exist yet is refused when the data is first used (``prepare_data`` or
            ``setup``), not when the DataModule is built, so a config can be parsed and printed before
            stage one has run.
        cache_dir: where code grids are cached (``<cache_dir>/vq_codes``); default ``$LIGHTNING_GEN_CACHE``
            or ``~/.cache/lightning_gen``.
        encode_batch_size: images per batch of the one-off encoding.
        progress: show a progress bar while encoding.
        split_kwargs: batch size, split and subset, as for every image DataModule (``SplitDataModule``);
            with the same defaults, the prior's train/val split is the VQ-VAE's.
    """

    loader_only_args = SplitDataModule.loader_only_args | {"cache_dir", "encode_batch_size", "progress"}

    def __init__(self, vqvae_checkpoint: str, cache_dir: str | None = None, encode_batch_size: int = 500,
                 progress: bool = True, **split_kwargs):
        super().__init__(**split_kwargs)
        check_range(at_least=1, encode_batch_size=encode_batch_size)
        if self.device_resident:
            raise ConfigValueError("VQCodesDataModule keeps its code grids beside a DataLoader of images; set "
                                   "`--data.init_args.device_resident false`")
        self.vqvae_checkpoint = str(vqvae_checkpoint)
        from lightning_gen.metrics.real_features import default_cache_dir  # metrics imports data: not at the top

        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.encode_batch_size, self.progress = encode_batch_size, progress
        self.vqvae = None  # the frozen VQVAE (eval mode, CPU) once the checkpoint is read
        self.image_data: SplitDataModule | None = None  # the VQ-VAE run's image DataModule
        self.recorded_data: dict[str, Any] | None = None  # the images' DataModule, as the VQ-VAE checkpoint records it
        self.vqvae_sha256: str | None = None
        self.data_shape: tuple[int, int, int] | None = None
        self.num_classes: int | None = None
        self.num_codes: int | None = None
        self.code_shape: tuple[int, int] | None = None
        self.vqvae_hparams: dict[str, Any] | None = None
        self.encode_calls = 0  # encoding passes run by this DataModule (a cache hit runs none)
        try:
            self._read_vqvae()
        except CheckpointError:
            if Path(self.vqvae_checkpoint).exists():
                raise  # a file that is there but unusable is refused at once
            # a path that is not there yet: refused by require_vqvae when the data is used

    def _read_vqvae(self) -> None:
        loaded_path = Path(self.vqvae_checkpoint)
        if loaded_path.is_dir():
            loaded_path = loaded_path / "checkpoints" / "last.ckpt"
        if not loaded_path.is_file():
            raise CheckpointError(f"the VQ-VAE checkpoint {self.vqvae_checkpoint} does not exist; train the "
                                  f"VQ-VAE first: {TRAIN_FIRST}")
        checkpoint = read_checkpoint(loaded_path)  # the one read: class check, weights, data and hyperparameters
        saved = checkpoint.get(MODEL_CLASS_KEY)
        if saved != VQVAE_CLASS:
            raise CheckpointError(f"{loaded_path} holds a {saved or 'checkpoint of no lightning-gen model'}, not a "
                                  f"VQ-VAE: a prior over codes needs a checkpoint of {VQVAE_CLASS}. {TRAIN_FIRST}")
        run = run_from_checkpoint(checkpoint, loaded_path)
        self.vqvae = run.model.requires_grad_(False)
        self.image_data = run.datamodule
        self.recorded_data = checkpoint[DATAMODULE_KEY]
        self.vqvae_sha256 = file_sha256(loaded_path)
        self.vqvae_hparams = {**model_hyperparameters(checkpoint), "data_shape": list(self.vqvae.data_shape)}
        self.data_shape = tuple(self.vqvae.data_shape)
        self.code_shape = tuple(self.vqvae.grid_shape)
        self.num_codes = self.vqvae.quantizer.num_codes
        self.num_classes = getattr(self.image_data, "num_classes", None)

    def require_vqvae(self) -> None:
        """Raise the clear error of a checkpoint that was missing when the DataModule was built (and is
        still missing); read it if it has appeared since."""
        if self.vqvae is None:
            self._read_vqvae()

    # --- the cache ------------------------------------------------------------------------------------
    def cache_path(self, split: str, count: int) -> Path:
        """``<cache_dir>/vq_codes/<checkpoint SHA-256>/<split>-<count>.pt``: one folder per checkpoint file."""
        return self.cache_dir / "vq_codes" / str(self.vqvae_sha256) / f"{split}-{count}.pt"

    def _cache_key(self, split: str, count: int) -> dict:
        # the images as the checkpoint records their DataModule: not ``image_data.hparams``, which LightningCLI
        # fills with this DataModule's own arguments when it is built inside this ``__init__``
        recorded = self.recorded_data
        images = {"class": recorded["class_path"], "subset": self.subset,
                  "args": {k: str(v) for k, v in recorded["init_args"].items()
                           if k not in self.image_data.loader_only_args and k != "subset"}}
        return {"vqvae_sha256": self.vqvae_sha256, "split": split, "count": count, "images": images}

    def _split_images(self, train: bool) -> Dataset:
        """The official train pool or test split of the VQ-VAE run's images, cut to ``subset``."""
        self.require_vqvae()
        return self._first(self.image_data._load(train))

    def codes_of(self, split: str) -> tuple[Tensor, Tensor]:
        """(codes ``[N, h, w]``, labels ``[N]``) of the official ``split`` ("train": the whole pool before
        the train/val split, or "test"), from the cache or encoded once and cached."""
        return self._cached_codes(self._split_images(split == "train"), split)

    def _cached_codes(self, images: Dataset, split: str) -> tuple[Tensor, Tensor]:
        key = self._cache_key(split, len(images))
        path = self.cache_path(split, len(images))
        if path.is_file():
            try:
                stored = torch.load(path, map_location="cpu", weights_only=True)
                if stored.get("key") == key:
                    return stored["codes"], stored["labels"]
            except Exception:  # an unreadable entry is recomputed, never trusted
                pass
        codes, labels = self._encode(images, split)
        atomic_write(path, lambda temporary: torch.save({"key": key, "codes": codes, "labels": labels}, temporary))
        return codes, labels

    @torch.no_grad()
    def _encode(self, images: Dataset, split: str) -> tuple[Tensor, Tensor]:
        assert self.vqvae is not None
        self.encode_calls += 1
        loader = DataLoader(images, batch_size=self.encode_batch_size, shuffle=False)
        code_dtype = torch.uint8 if self.num_codes <= 256 else torch.int16  # stored small, read as long
        codes, labels = [], []
        bar = tqdm(loader, desc=f"encoding the {split} images with the VQ-VAE", disable=not self.progress,
                   leave=False)
        for index, (x, y) in enumerate(bar):
            generator = torch.Generator().manual_seed(ENCODE_SEED + index)
            codes.append(self.vqvae.encode_indices(self.vqvae.prepare_input(x, generator)).to(code_dtype))
            labels.append(torch.as_tensor(y))
        return torch.cat(codes), torch.cat(labels)

    # --- SplitDataModule ------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Encode and cache both official splits (once per checkpoint; rank 0 only under DDP)."""
        for split in ("train", "test"):
            self.codes_of(split)

    def _load(self, train: bool) -> Dataset:
        images = self._split_images(train)
        split = "train" if train else "test"
        codes, labels = self._cached_codes(images, split)  # the images already loaded, not a second read
        if not torch.equal(labels.long(), torch.as_tensor([int(images[i][1]) for i in range(len(images))])):
            raise CheckpointError(f"the cached code grids in {self.cache_path(split, len(images))} belong to other "
                                  "images (their labels differ): delete that file and run again")
        return CodedImages(images, codes)

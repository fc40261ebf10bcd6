"""VQVAE: the shared contract, plus nearest-code quantisation, the straight-through gradient, the EMA
codebook (by hand, and across two processes), dead-code revival and learning on Fashion-MNIST."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_gen.data import FashionMNISTDataModule
from lightning_gen.models import AE, VQVAE
from lightning_gen.models.base import has_surface
from lightning_gen.nets.quantize import EMAVectorQuantizer, perplexity, straight_through
from tests.support.contract import GenerativeModelContract, fake_image_batches, one_torch_thread

SMALL = dict(num_codes=8, code_dim=4, channels=8, residual_blocks=1)


class TestVQVAE(GenerativeModelContract):
    other_model_class = AE
    config, test_metrics, predictions = "vqvae_fmnist.yaml", ("test/recon_nll", "test/recon_bpd", "test/perplexity"), (
        "codes", "reconstruction")
    options = dict(data_shape=(1, 28, 28), decode_statistic="median")

    def make_model(self):
        return VQVAE(**self.options, **SMALL)


class TestRGBBernoulliVQVAE(TestVQVAE):
    options = dict(data_shape=(3, 32, 32), likelihood="bernoulli")  # the command line runs it on grey Fashion-MNIST


def _images(n: int = 6, shape=(1, 28, 28)) -> torch.Tensor:
    return torch.randint(0, 256, (n, *shape)).float() / 255


def _set_codebook(quantizer: EMAVectorQuantizer, codes) -> None:
    """Codes as given, with EMA statistics that agree with them (count 1, sum = code), all just used."""
    quantizer.codebook.copy_(torch.as_tensor(codes, dtype=torch.float32))
    quantizer.ema_sums.copy_(quantizer.codebook)
    quantizer.ema_counts.fill_(1.0)
    quantizer.unused_batches.zero_()


def _grid(vectors) -> torch.Tensor:
    """Vectors ``[M, D]`` as one image's grid ``[1, D, 1, M]``."""
    return torch.as_tensor(vectors, dtype=torch.float32).T.reshape(1, -1, 1, len(vectors))


# --- quantisation ----------------------------------------------------------------------------------------
def test_quantisation_picks_the_nearest_code_by_brute_force():
    quantizer = EMAVectorQuantizer(num_codes=16, code_dim=3)
    z = torch.randn(5, 3, 4, 6)
    indices = quantizer.nearest(z)
    assert indices.shape == (5, 4, 6) and indices.dtype == torch.long
    vectors = z.permute(0, 2, 3, 1).reshape(-1, 3).double()  # (N*h*w, D), cells in (n, i, j) order
    distances = ((vectors[:, None, :] - quantizer.codebook.double()[None]) ** 2).sum(-1)  # (N*h*w, K)
    chosen = distances.gather(1, indices.reshape(-1, 1)).squeeze(1)
    torch.testing.assert_close(chosen, distances.min(1).values, rtol=0, atol=1e-5)  # near-ties may go either way
    assert (indices.reshape(-1) == distances.argmin(1)).float().mean() > 0.99
    z_q = quantizer.lookup(indices)
    assert z_q.shape == z.shape and torch.equal(z_q[2, :, 1, 3], quantizer.codebook[indices[2, 1, 3]])


def test_encode_and_decode_go_through_the_nearest_codes():
    model = VQVAE(**SMALL).eval()
    x = _images()
    with torch.no_grad():
        z_e = model.encode_continuous(x)  # (N, D, 7, 7)
        indices = model.encode_indices(x)
        codes = model.encode(x)
        assert z_e.shape == (6, 4, 7, 7) and indices.shape == (6, 7, 7) and codes.shape == (6, 4 * 7 * 7)
        brute = ((z_e.permute(0, 2, 3, 1)[..., None, :] - model.quantizer.codebook) ** 2).sum(-1).argmin(-1)
        assert torch.equal(indices, brute)
        torch.testing.assert_close(codes, model.quantizer.codebook[indices].permute(0, 3, 1, 2).flatten(1))
        images = model.decode(codes)
        assert torch.equal(images, model.decode_indices(indices))  # decoding snaps to codes: a no-op here
        assert torch.equal(model.decode(codes + 1e-3 * torch.randn_like(codes)), images)
        assert images.shape == x.shape and 0 <= images.min() and images.max() <= 1
    assert not has_surface(model, "log_likelihood")  # no prior over codes: no p(x) to offer


def test_pictures_and_compares_decoded_codes_work_through_the_common_surface():
    """The flat ``encode``/``decode`` pair is what the picture grids interpolate and what ``compare`` decodes
    (midpoints of encoded pairs, N(0, I) draws of ``latent_dim`` numbers)."""
    from lightning_gen.callbacks.pictures import picture_grids
    from lightning_gen.report.compare import _DecodedMidpoints, _DecodedPrior

    model = VQVAE(**SMALL).eval()
    held_out = _images(8)
    grids = picture_grids(model, held_out, torch.Generator().manual_seed(0), num_samples=4, num_reconstructions=4,
                          num_interpolations=2, interpolation_steps=5)
    assert {kind: images.shape[0] for kind, (images, _) in grids.items()} == {
        "samples": 4, "reconstructions": 8, "interpolations": 2 * 7}
    for sampler in (_DecodedPrior(model), _DecodedMidpoints(model, held_out)):
        images = sampler.sample(3, generator=torch.Generator().manual_seed(0))
        assert images.shape == (3, 1, 28, 28) and 0 <= images.min() and images.max() <= 1


def test_straight_through_gradient_reaches_the_encoder_as_the_gradient_at_z_q():
    model = VQVAE(**SMALL).double()
    x = _images().double()

    def recon_nll(decoder_input: torch.Tensor) -> torch.Tensor:
        return -model.likelihood.log_prob(model.decoder(decoder_input), x).sum()

    z_e = model.encoder(x)
    _, z_q = model.quantizer(z_e)
    at_z_q = z_q.clone().requires_grad_(True)
    (grad_z_q,) = torch.autograd.grad(recon_nll(at_z_q), at_z_q)  # dL/dz_q, (N, D, h, w)

    model.zero_grad()
    recon_nll(straight_through(z_e, z_q)).backward()
    params = list(model.encoder.parameters())
    # dL/dtheta_enc = (dz_e/dtheta)^T dL/dz_q: the gradient at z_q passed to z_e unchanged
    expected = torch.autograd.grad(model.encoder(x), params, grad_outputs=grad_z_q)
    for param, want in zip(params, expected):
        assert param.grad is not None and param.grad.abs().sum() > 0
        torch.testing.assert_close(param.grad, want, rtol=1e-9, atol=1e-12)

    model.zero_grad()  # the control: decoding z_q itself, no gradient reaches the encoder
    recon_nll(z_q).backward()
    assert all(p.grad is None for p in params)


# --- the EMA codebook ------------------------------------------------------------------------------------
def test_ema_update_moves_each_code_to_the_running_mean_of_its_vectors_by_hand():
    """Two 2-d codes, gamma = 0.5, counts and sums starting at (1, e). Vectors (1, 0), (0, 1) go to code 0
    and (9, 11) to code 1, so n = (2, 1), s_0 = (1, 1), s_1 = (9, 11)."""
    quantizer = EMAVectorQuantizer(num_codes=2, code_dim=2, decay=0.5, epsilon=1e-9)
    _set_codebook(quantizer, [[0.0, 0.0], [10.0, 10.0]])
    z = _grid([[1.0, 0.0], [0.0, 1.0], [9.0, 11.0]])
    indices = quantizer.nearest(z)
    assert indices.flatten().tolist() == [0, 0, 1]
    counts = quantizer.update(z, indices)
    assert counts.tolist() == [2.0, 1.0]
    # N = 0.5 * 1 + 0.5 * n = (1.5, 1.0);  m_0 = 0.5 * (0, 0) + 0.5 * (1, 1) = (0.5, 0.5);
    # m_1 = 0.5 * (10, 10) + 0.5 * (9, 11) = (9.5, 10.5);  e = m / N: code 0 moves a third of the way from
    # (0, 0) to its vectors' mean (0.5, 0.5) (old weight 0.5, new weight 0.5 * 2), code 1 half way
    torch.testing.assert_close(quantizer.ema_counts, torch.tensor([1.5, 1.0]))
    torch.testing.assert_close(quantizer.codebook, torch.tensor([[1 / 3, 1 / 3], [9.5, 10.5]]))
    assert quantizer.unused_batches.tolist() == [0, 0]

    smoothed = EMAVectorQuantizer(num_codes=2, code_dim=2, decay=0.5, epsilon=0.1)  # Laplace smoothing, visibly
    _set_codebook(smoothed, [[0.0, 0.0], [10.0, 10.0]])
    smoothed.update(z, indices)
    # N~ = (N + eps) / (sum N + K eps) * sum N = (1.6, 1.1) / 2.7 * 2.5
    n_tilde = torch.tensor([1.6, 1.1]) / 2.7 * 2.5
    torch.testing.assert_close(smoothed.codebook, torch.tensor([[0.5, 0.5], [9.5, 10.5]]) / n_tilde[:, None])


def test_the_codebook_learns_in_training_steps_only(tmp_path):
    model = VQVAE(**SMALL)
    loader = fake_image_batches(model.data_shape, n=32, batch_size=16)
    options = dict(logger=False, enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                   default_root_dir=tmp_path)
    before = {name: buffer.clone() for name, buffer in model.quantizer.named_buffers()}
    pl.Trainer(**options).validate(model, loader, verbose=False)
    pl.Trainer(**options).test(model, loader, verbose=False)
    assert all(torch.equal(buffer, before[name]) for name, buffer in model.quantizer.named_buffers())
    pl.Trainer(max_steps=1, **options).fit(model, loader)
    assert not torch.equal(model.quantizer.codebook, before["codebook"])
    assert "quantizer.codebook" in model.state_dict() and "quantizer.ema_counts" in model.state_dict()


def test_a_dead_code_is_revived_after_revive_after_batches_and_a_used_code_is_not():
    quantizer = EMAVectorQuantizer(num_codes=3, code_dim=2)
    _set_codebook(quantizer, [[0.0, 0.0], [1.0, 1.0], [100.0, 100.0]])  # code 2: far from every vector
    generator = torch.Generator().manual_seed(0)
    after = 4
    for batch in range(1, after + 1):
        z = _grid(torch.tensor([[0.0, 0.0], [1.0, 1.0]]).repeat(3, 1) + 0.1 * torch.randn(6, 2, generator=generator))
        quantizer.update(z, quantizer.nearest(z))
        used = quantizer.codebook[:2].clone()
        revived = quantizer.revive(z, after, generator)
        if batch < after:
            assert revived == 0 and quantizer.codebook[2].min() > 50 and quantizer.unused_batches[2] == batch
    assert revived == 1
    batch_vectors = z.permute(0, 2, 3, 1).reshape(-1, 2)
    assert (batch_vectors == quantizer.codebook[2]).all(1).any()  # reset onto one of this batch's encoder outputs
    assert quantizer.ema_counts[2] == 1 and torch.equal(quantizer.ema_sums[2], quantizer.codebook[2])
    assert quantizer.unused_batches.tolist() == [0, 0, 0]
    assert torch.equal(quantizer.codebook[:2], used)  # the used codes kept their EMA values
    assert quantizer.nearest(quantizer.codebook[2].view(1, 2, 1, 1)).item() == 2  # and it can win again


def test_codes_no_vector_ever_chose_are_reset_onto_the_first_training_batch():
    """The data-dependent initialisation: random N(0, I) codes that no encoder output picks are dead from the
    start, so the first training step puts them on that batch's encoder outputs (the model's wiring of
    ``revive``, with ``train/revived_codes`` counting)."""
    model = VQVAE(**SMALL, revive_after=50)
    batch = (_images(8), torch.zeros(8))
    with torch.no_grad():
        z_e = model.encode_continuous(batch[0]).permute(0, 2, 3, 1).reshape(-1, 4)
        chosen = model.encode_indices(batch[0]).unique()
    with pytest.warns(UserWarning, match="self.log"):  # no Trainer: logging is skipped
        model.training_step(batch, 0)
    reset = [k for k in range(8) if k not in chosen.tolist()]
    assert reset and int(model.revived_codes) == len(reset)
    for k in reset:
        assert (z_e == model.quantizer.codebook[k]).all(1).any()


def test_perplexity_counts_the_codes_in_use():
    assert perplexity(torch.tensor([5.0, 5.0, 5.0, 5.0])).item() == pytest.approx(4.0)
    assert perplexity(torch.tensor([0.0, 7.0, 0.0])).item() == pytest.approx(1.0)


# --- DDP: the same codebook on every process -------------------------------------------------------------
def _codebook_and_batch() -> tuple[EMAVectorQuantizer, torch.Tensor]:
    """Six codes, the last two far from the batch of 8 grids of 2x2 vectors (so no vector chooses them)."""
    torch.manual_seed(0)
    quantizer = EMAVectorQuantizer(num_codes=6, code_dim=3)
    _set_codebook(quantizer, quantizer.codebook + torch.tensor([0.0] * 4 + [100.0] * 2)[:, None])
    return quantizer, torch.randn(8, 3, 2, 2)


def _two_process_update(rank: int, world: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        quantizer, z = _codebook_and_batch()
        shard = z[4 * rank: 4 * (rank + 1)]  # each process sees half the batch
        quantizer.update(shard, quantizer.nearest(shard))
        # a code revived with each process's own generator: rank 0's vectors win everywhere
        quantizer.revive(shard, after=1, generator=torch.Generator().manual_seed(100 + rank))
        torch.save(dict(quantizer.named_buffers()), os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_update_the_codebook_as_one_process_on_the_whole_batch(tmp_path):
    single, z = _codebook_and_batch()
    single.update(z, single.nearest(z))
    mp.spawn(_two_process_update, args=(2, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(Path(tmp_path, f"rank{r}.pt"), weights_only=True) for r in range(2)]
    for name in ("codebook", "ema_counts", "ema_sums", "unused_batches"):
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    revived = single.unused_batches > 0  # the codes no vector chose, which every process revived
    assert revived.tolist() == [False] * 4 + [True] * 2
    assert (ranks[0]["codebook"][revived] < 50).all()
    torch.testing.assert_close(ranks[0]["ema_counts"][~revived], single.ema_counts[~revived])
    torch.testing.assert_close(ranks[0]["codebook"][~revived], single.codebook[~revived])


# --- learning -------------------------------------------------------------------------------------------
def _recon_nll_before_and_after(fmnist_dir, tmp_path, lr: float, seed: int, steps: int = 150) -> tuple[float, float]:
    pl.seed_everything(seed)
    data = FashionMNISTDataModule(data_dir=str(fmnist_dir), subset=2000, batch_size=32)
    model = VQVAE(data.data_shape, num_codes=32, code_dim=8, channels=16, residual_blocks=1, revive_after=20,
                  optimizer=lambda params: torch.optim.Adam(params, lr=lr))
    options = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
                   enable_model_summary=False, default_root_dir=tmp_path)
    validate = lambda: pl.Trainer(**options).validate(model, datamodule=data, verbose=False)[0]  # noqa: E731
    before = validate()["val/recon_nll"]
    pl.Trainer(max_steps=steps, limit_val_batches=0, **options).fit(model, datamodule=data)
    return before, validate()["val/recon_nll"]


def test_vqvae_learns_to_reconstruct_fashion_mnist_and_a_frozen_one_does_not(fmnist_dir, tmp_path):
    """150 steps on 1800 images: held-out reconstruction NLL (nats per image) falls clearly. Over seeds 0-3
    it fell by 545-774 nats (2900-3000 -> 2190-2420); with learning rate 0 (the codebook still follows its
    EMA, the networks stay at their initialisation) it moved by under 5 nats: the control."""
    with one_torch_thread():
        trained = [_recon_nll_before_and_after(fmnist_dir, tmp_path, lr=2e-3, seed=seed) for seed in (0, 1)]
        frozen = _recon_nll_before_and_after(fmnist_dir, tmp_path, lr=0.0, seed=0)
    for before, after in trained:
        assert after < before - 300, trained
    assert not frozen[1] < frozen[0] - 300 and abs(frozen[1] - frozen[0]) < 50, frozen

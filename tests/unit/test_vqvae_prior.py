"""VQVAEPrior and VQCodesDataModule: the shared contract, the code cache (built once, keyed by the checkpoint
file's SHA-256), causality on the code grid, fast = reference sampling, and learning on real codes."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch

from lightning_gen.checkpoints import read_checkpoint
from lightning_gen.data import FashionMNISTDataModule, VQCodesDataModule
from lightning_gen.errors import CheckpointError
from lightning_gen.metrics.registry import check_model_supports, supported_metrics
from lightning_gen.models import AE, VQVAE, VQVAEPrior
from lightning_gen.models.base import has_surface
from tests.support.contract import (
    GenerativeModelContract,
    check_every_command,
    model_options,
    one_torch_thread,
    run_command,
    train_briefly,
)

SMALL_VQVAE = dict(num_codes=8, code_dim=4, channels=8, residual_blocks=1, revive_after=10)
VQVAE_ARGS = dict(VQVAE(**SMALL_VQVAE).hparams)  # every __init__ argument, as a checkpoint records them
SMALL_PRIOR = dict(hidden=16, layers=2, kernel_size=3)
TRAINER = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
               enable_model_summary=False)


@pytest.fixture(scope="module")
def vqvae_checkpoint(tmp_path_factory, fmnist_dir):
    """A small VQ-VAE fitted for 60 batches on 960 Fashion-MNIST images; its checkpoint records its data."""
    folder = tmp_path_factory.mktemp("vqvae")
    pl.seed_everything(0)
    data = FashionMNISTDataModule(data_dir=str(fmnist_dir), subset=960, batch_size=32)
    model = VQVAE(data.data_shape, **SMALL_VQVAE)
    with one_torch_thread():
        trainer = pl.Trainer(max_steps=60, limit_val_batches=0, default_root_dir=folder, **TRAINER)
        trainer.fit(model, datamodule=data)
    path = folder / "vqvae.ckpt"
    trainer.save_checkpoint(path)
    return path


def _codes_data(checkpoint, cache, **options) -> VQCodesDataModule:
    return VQCodesDataModule(str(checkpoint), cache_dir=str(cache), progress=False,
                             **{"subset": 320, "batch_size": 32, **options})


class TestVQVAEPrior(GenerativeModelContract):
    other_model_class = VQVAE
    config, test_metrics, predictions = "vqvae_prior_fmnist.yaml", ("test/code_nll", "test/code_bpc"), (
        "codes", "code_nll")

    def make_model(self):
        return VQVAEPrior((1, 28, 28), vqvae=VQVAE_ARGS, num_classes=10, **SMALL_PRIOR)

    def test_fit_test_validate_and_predict_through_the_command_line(self, in_tmp_dir, monkeypatch, capsys,
                                                                      vqvae_checkpoint):
        options = [*model_options(self.make_model()), "--data.init_args.vqvae_checkpoint", str(vqvae_checkpoint)]
        check_every_command(in_tmp_dir, monkeypatch, capsys, self.config, options, self.test_metrics, self.predictions)
        (ckpt,) = in_tmp_dir.glob("runs/*/version_0/checkpoints/last.ckpt")
        saved = read_checkpoint(ckpt)["hyper_parameters"]
        assert saved["vqvae_sha256"] and saved["vqvae_file"] == str(vqvae_checkpoint)


class TestUnconditionalVQVAEPrior(TestVQVAEPrior):
    def make_model(self):
        return VQVAEPrior((1, 28, 28), vqvae=VQVAE_ARGS, conditional=False, **SMALL_PRIOR)


# --- the code cache -------------------------------------------------------------------------------------
@pytest.fixture
def count_encodings(monkeypatch):
    calls = []
    original = VQVAE.encode_indices

    def counted(self, x):
        calls.append(len(x))
        return original(self, x)

    monkeypatch.setattr(VQVAE, "encode_indices", counted)
    return calls


def test_codes_are_encoded_once_and_read_from_the_cache_after(vqvae_checkpoint, tmp_path, count_encodings):
    first = _codes_data(vqvae_checkpoint, tmp_path)
    assert first.data_shape == (1, 28, 28) and first.code_shape == (7, 7)
    assert first.num_codes == 8 and first.num_classes == 10
    first.prepare_data()
    assert sum(count_encodings) == 320 + 320  # the train pool and the test split, once each
    first.setup("fit")
    images, labels, codes = next(iter(first.train_dataloader()))
    assert images.shape == (32, 1, 28, 28) and labels.shape == (32,) and codes.shape == (32, 7, 7)
    assert codes.dtype == torch.long and 0 <= codes.min() and codes.max() < 8
    with torch.no_grad():
        torch.testing.assert_close(codes, first.vqvae.encode_indices(first.vqvae.prepare_input(images)), rtol=0, atol=0)
    count_encodings.clear()

    again = _codes_data(vqvae_checkpoint, tmp_path)  # another DataModule, another process's view: same cache
    again.prepare_data()
    again.setup("fit")
    again.setup("test")
    assert count_encodings == [] and again.encode_calls == 0
    assert torch.equal(again.train_set[5][2], first.train_set[5][2])
    assert len(list((tmp_path / "vq_codes").iterdir())) == 1


def test_a_changed_checkpoint_file_is_encoded_afresh(vqvae_checkpoint, tmp_path, count_encodings):
    path = tmp_path / "vqvae.ckpt"
    path.write_bytes(vqvae_checkpoint.read_bytes())
    cache = tmp_path / "cache"
    _codes_data(path, cache).prepare_data()
    count_encodings.clear()
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"]["quantizer.codebook"] = checkpoint["state_dict"]["quantizer.codebook"].flip(0)
    torch.save(checkpoint, path)  # the same path, another VQ-VAE: the code indices now mean other codes
    changed = _codes_data(path, cache)
    changed.prepare_data()
    assert sum(count_encodings) == 640 and changed.encode_calls == 2
    assert len(list((cache / "vq_codes").iterdir())) == 2  # one folder per checkpoint digest
    old = _codes_data(vqvae_checkpoint, cache)
    old.setup("test")
    changed.setup("test")
    # flipping the codebook maps code k to K - 1 - k
    assert torch.equal(changed.test_set.codes.long(), 7 - old.test_set.codes.long())


def test_a_missing_checkpoint_is_refused_when_the_data_is_used(tmp_path):
    # building it succeeds, so that a config parses before stage one has run
    data = VQCodesDataModule(str(tmp_path / "runs" / "missing.ckpt"), cache_dir=str(tmp_path))
    assert data.data_shape is None
    with pytest.raises(CheckpointError, match="missing.ckpt does not exist.*vqvae_fmnist.yaml"):
        data.prepare_data()
    with pytest.raises(CheckpointError, match="does not exist"):
        data.setup("fit")


def test_a_checkpoint_of_another_model_is_refused_at_once(tmp_path):
    ae = AE(latent_dim=4)
    trainer = train_briefly(ae, tmp_path)
    path = tmp_path / "ae.ckpt"
    trainer.save_checkpoint(path)
    with pytest.raises(CheckpointError, match="holds a lightning_gen.models.autoencoder.AE, not a VQ-VAE"):
        VQCodesDataModule(str(path))


def test_the_command_line_names_a_missing_vqvae_checkpoint(in_tmp_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_command(capsys, "fit", "--config", "vqvae_prior_fmnist.yaml", "--trainer.max_epochs", "1")
    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "runs/vqvae_fmnist/version_0/checkpoints/last.ckpt does not exist" in error and "vqvae_fmnist.yaml" in error


# --- the prior ------------------------------------------------------------------------------------------
def test_a_code_changes_no_logit_at_or_before_it_in_raster_order():
    model = VQVAEPrior(vqvae=VQVAE_ARGS, num_classes=10, **SMALL_PRIOR).eval()
    codes = torch.randint(0, 8, (2, 7, 7))
    labels = torch.tensor([3, 5])
    with torch.no_grad():
        before = model.code_logits(codes, labels)
        for i, j in [(0, 0), (2, 3), (3, 6), (6, 0), (6, 6)]:
            changed = codes.clone()
            changed[:, i, j] = (changed[:, i, j] + 3) % 8
            after = model.code_logits(changed, labels)
            moved = (after - before).abs().amax(dim=1) > 1e-6  # (N, h, w): cells whose logits changed
            raster = torch.arange(49).view(7, 7)
            assert not moved[:, raster <= 7 * i + j].any(), (i, j)
            if (i, j) != (6, 6):
                assert moved[:, raster > 7 * i + j].any(), (i, j)  # the control: later cells do see it


def test_the_fast_sampler_draws_the_reference_samplers_grids():
    model = VQVAEPrior(vqvae=VQVAE_ARGS, num_classes=10, **SMALL_PRIOR).eval()
    with torch.no_grad():
        for parameter in model.net.parameters():  # sharper conditionals than at initialisation
            parameter.mul_(3)
        fast = model.sample_codes(6, generator=torch.Generator().manual_seed(1), sampler="fast")
        reference = model.sample_codes(6, generator=torch.Generator().manual_seed(1), sampler="reference")
        other = model.sample_codes(6, generator=torch.Generator().manual_seed(2), sampler="fast")
    assert fast.shape == (6, 7, 7) and torch.equal(fast, reference)
    assert not torch.equal(fast, other)


def test_the_registry_offers_sample_metrics_and_the_elbo_but_refuses_nll_bpd():
    model = VQVAEPrior(vqvae=VQVAE_ARGS, num_classes=10, **SMALL_PRIOR).eval()
    assert not has_surface(model, "log_likelihood")
    assert supported_metrics(model, ["fid", "kid", "sharpness", "elbo", "nll_bpd"]) == ["fid", "kid", "sharpness",
                                                                                        "elbo"]
    with pytest.raises(Exception, match="nll_bpd"):
        check_model_supports(model, ["nll_bpd"])
    x = model.prepare_input(torch.randint(0, 256, (3, 1, 28, 28)).float() / 255)
    log_px_z, kl = model.elbo_terms(x)
    codes = model.encode_indices(x)
    # KL of the one-hot posterior = -log p(z_q(x)), the marginal over a uniform class prior
    torch.testing.assert_close(kl, -model.code_log_likelihood(codes))
    assert (kl > 0).all() and (log_px_z < 0).all()
    per_class = torch.stack([model.code_log_likelihood(codes, torch.full((3,), y)) for y in range(10)])
    torch.testing.assert_close(-kl, per_class.logsumexp(0) - math.log(10))


# --- learning -------------------------------------------------------------------------------------------
def _val_code_nll(model, data) -> float:
    return pl.Trainer(**TRAINER).validate(model, datamodule=data, verbose=False)[0]["val/code_nll"]


def test_the_prior_learns_the_code_grids_and_an_untrained_one_does_not(vqvae_checkpoint, tmp_path):
    """40 batches of real codes: the held-out code NLL (nats per grid) falls well below the untrained prior's
    and below log K per cell (the uniform prior); the untrained prior, the control, sits near log K."""
    data = _codes_data(vqvae_checkpoint, tmp_path, subset=960)
    uniform = 49 * math.log(8)
    results = []
    with one_torch_thread():
        for seed in (0, 1):
            pl.seed_everything(seed)
            model = VQVAEPrior(**SMALL_PRIOR, optimizer=lambda params: torch.optim.Adam(params, lr=3e-3))
            untrained = _val_code_nll(model, data)
            pl.Trainer(max_steps=40, limit_val_batches=0, default_root_dir=tmp_path, **TRAINER).fit(model,
                                                                                                  datamodule=data)
            results.append((untrained, _val_code_nll(model, data)))
    for untrained, trained in results:
        assert abs(untrained - uniform) < 0.1 * uniform, results
        assert trained < untrained - 0.2 * uniform and trained < 0.8 * uniform, results

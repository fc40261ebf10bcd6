"""``compile: true``: the networks run through torch.compile, give the eager results, and checkpoints stay
interchangeable with eager runs.

Tolerances: inductor fuses element-wise ops and may reorder float32 reductions, so a compiled network's
activations differ from eager ones by a few ulp (~1e-7 relative each); a log-likelihood sums 784 per-pixel
terms of a few nats, so differences stay orders of magnitude below rtol 1e-4 (seen here: < 1e-6).
A compilation that silently did not happen would pass an equality test, so each test also checks that
TorchDynamo captured new graphs.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_gen.losses.gan import r1_penalty
from lightning_gen.models import AE, GAN, VAE, PixelCNN
from lightning_gen.trainer import LightningGenTrainer
from tests.support.contract import fake_image_batches

TINY_MODELS = {
    "ae": lambda **kw: AE(latent_dim=4, channels=8, hidden=32, **kw),
    "vae": lambda **kw: VAE(latent_dim=4, channels=8, hidden=32, **kw),
    "gan": lambda **kw: GAN(width=8, latent_dim=8, **kw),
    "pixelcnn": lambda **kw: PixelCNN(hidden=8, layers=2, kernel_size=3, **kw),
}


def scores(model, images: torch.Tensor) -> torch.Tensor:
    """What each family computes from its networks in training: per-image nats, or D's scores of G's fakes."""
    if isinstance(model, GAN):
        return model.discriminator(model.generator(
            torch.randn(len(images), 8, generator=torch.Generator().manual_seed(1))))
    if isinstance(model, VAE):
        log_px_z, kl = model.elbo_terms(model.prepare_input(images), torch.Generator().manual_seed(1))
        return log_px_z - kl
    if isinstance(model, AE):
        return model._reconstruction_nll(model.prepare_input(images))[0]
    return model.log_likelihood(images)


def captured_graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("family", sorted(TINY_MODELS))
def test_compiled_networks_give_the_eager_results(family):
    compiled = TINY_MODELS[family](compile=True)
    eager = copy.deepcopy(compiled)
    eager.compile_networks = False
    images = torch.rand(8, 1, 28, 28)
    expected = scores(eager, images)
    graphs_before = captured_graphs()
    compiled.configure_model()
    got = scores(compiled, images)
    assert captured_graphs() > graphs_before, "no graph was compiled: the networks ran eagerly"
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # in place: no `_orig_mod.` prefixes


def test_a_gan_with_r1_compiles_only_the_generator_and_trains(tmp_path):
    """R1 differentiates D's input gradient again; a compiled D refuses that double backward (the control),
    so ``compile: true`` leaves D eager under a penalty and the run trains."""
    control = GAN(width=8, latent_dim=8, r1_gamma=1.0)
    control.discriminator.compile()
    with pytest.raises(RuntimeError, match="double backward|create_graph"):
        r1_penalty(control.discriminator, torch.rand(4, 1, 28, 28)).backward()

    model = GAN(width=8, latent_dim=8, r1_gamma=1.0, compile=True)
    assert model.networks_to_compile() == [model.generator]
    before = copy.deepcopy(model.discriminator.state_dict())
    _fit(model, tmp_path, steps=2)
    assert not torch.equal(model.discriminator.state_dict()["net.0.weight"], before["net.0.weight"])


def test_without_a_compiler_the_run_warns_and_stays_eager(monkeypatch):
    monkeypatch.setattr("lightning_gen.models.base.shutil.which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    model = TINY_MODELS["vae"](compile=True)
    graphs_before = captured_graphs()
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        model.configure_model()
    scores(model, torch.rand(4, 1, 28, 28))
    assert captured_graphs() == graphs_before


def _fit(model, root, steps, ckpt_path=None):
    trainer = LightningGenTrainer(
        default_root_dir=root, max_steps=steps, limit_val_batches=1, accelerator="cpu", logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[ModelCheckpoint(dirpath=root / "checkpoints", save_last=True)])
    loader = fake_image_batches(model.data_shape)
    trainer.fit(model, loader, loader, ckpt_path=ckpt_path)
    return trainer


def test_a_compiled_run_checkpoints_and_resumes_like_an_eager_one(tmp_path):
    model = TINY_MODELS["vae"](compile=True)
    graphs_before = captured_graphs()
    _fit(model, tmp_path, steps=2)
    assert captured_graphs() > graphs_before
    last = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=False)
    assert state["global_step"] == 2
    assert list(state["state_dict"]) == list(TINY_MODELS["vae"]().state_dict())

    # the compiled run's checkpoint loads into an eager model, which computes what the compiled one does
    eager = VAE.load_checkpoint(last)
    assert eager.hparams.compile  # the option is kept for resumes; this copy runs eagerly
    eager.compile_networks = False
    images = torch.rand(8, 1, 28, 28)
    torch.testing.assert_close(scores(eager, images), scores(model, images), rtol=1e-4, atol=1e-4)

    # and a compiled run resumes from it: two more steps change the weights
    resumed = TINY_MODELS["vae"](compile=True)
    _fit(resumed, tmp_path, steps=4, ckpt_path=last)
    after = torch.load(last, weights_only=False)
    assert after["global_step"] == 4
    changed = [name for name, value in after["state_dict"].items()
               if value.is_floating_point() and not torch.equal(value, state["state_dict"][name])]
    assert "decoder.net.0.weight" in changed or len(changed) > 10, changed

"""What only a CUDA device can check: the CUDA-graph PixelCNN sampler, mixed precision with a grad scaler,
compiled networks on the GPU."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_gen.data import ToyMixtureDataModule
from lightning_gen.models import AE, GAN, VAE, PixelCNN
from lightning_gen.samplers.autoregressive import cuda_graph_sampler
from lightning_gen.trainer import LightningGenTrainer

CUDA = torch.device("cuda")


# --- the CUDA-graph sampler -----------------------------------------------------------------------------
def pixelcnn(dtype=torch.float32, **kwargs) -> PixelCNN:
    torch.manual_seed(0)
    model = PixelCNN(**{"hidden": 8, "layers": 3, "kernel_size": 3, **kwargs})
    for parameter in model.parameters():  # trained-looking, peaked conditionals rather than near-uniform ones
        parameter.data.normal_(0, 0.3)
    return model.to(CUDA, dtype).eval()


def draw(model, sampler, seed, n=6):
    return model.sample(n, generator=torch.Generator(CUDA).manual_seed(seed), sampler=sampler)


SAMPLER_CASES = {
    "gray": dict(data_shape=(1, 7, 6)),
    "rgb-categorical": dict(data_shape=(3, 5, 5), hidden=12),
    "rgb-mixture": dict(data_shape=(3, 5, 5), hidden=12, distribution="logistic_mixture", mixture_components=3),
    "class-conditional": dict(data_shape=(1, 6, 6), num_classes=4),
    "default-config": dict(data_shape=(1, 28, 28), hidden=32, layers=6, kernel_size=5),
}


@pytest.mark.parametrize("case", sorted(SAMPLER_CASES))
def test_graph_replays_draw_the_eager_samplers_images(case):
    model = pixelcnn(**SAMPLER_CASES[case])
    first = draw(model, "fast", seed=1)  # runs eagerly, then records the graph
    assert cuda_graph_sampler._recorded.get(model.net) is not None, "no graph was recorded"
    replayed = draw(model, "fast", seed=2)  # a replay, with new noise copied in
    assert torch.equal(first, draw(model, "fast_eager", seed=1))
    assert torch.equal(replayed, draw(model, "fast_eager", seed=2))
    assert not torch.equal(first, replayed) and replayed.unique().numel() > 10
    # the graph reads the live parameters: an in-place update (what an optimizer step does) is seen
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1.1)
    assert torch.equal(draw(model, "fast", seed=3), draw(model, "fast_eager", seed=3))


@pytest.mark.parametrize("case", ["gray", "rgb-mixture", "class-conditional"])
def test_graph_replays_draw_the_reference_samplers_images_in_float64(case):
    model = pixelcnn(torch.float64, **SAMPLER_CASES[case])
    draw(model, "fast", seed=1)
    assert torch.equal(draw(model, "fast", seed=4), draw(model, "reference", seed=4))


def test_a_new_batch_size_records_a_new_graph():
    model = pixelcnn(**SAMPLER_CASES["gray"])
    draw(model, "fast", seed=1, n=6)
    six = cuda_graph_sampler._recorded[model.net][0]
    small = draw(model, "fast", seed=5, n=3)
    assert cuda_graph_sampler._recorded[model.net][0] != six
    assert torch.equal(small, draw(model, "fast_eager", seed=5, n=3))


# --- device-resident data ------------------------------------------------------------------------------
def test_batches_on_the_gpu_are_not_copied_by_lightning():
    class Pointers(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def on_before_batch_transfer(self, batch, dataloader_idx):
            self.before = (batch[0].device, batch[0].data_ptr())
            return batch

        def on_after_batch_transfer(self, batch, dataloader_idx):
            assert (batch[0].device, batch[0].data_ptr()) == self.before
            self.transfers = getattr(self, "transfers", 0) + 1
            return batch

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    model = Pointers()
    data = ToyMixtureDataModule(num_train=50, batch_size=16, device_resident=True)
    trainer = pl.Trainer(max_epochs=1, accelerator="gpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    assert model.before[0].type == "cuda" and model.transfers == 3


# --- training on the GPU: mixed precision and compiled networks --------------------------------------------
FAMILIES = {
    "ae": lambda **kw: AE(latent_dim=8, channels=16, hidden=64, **kw),
    "vae": lambda **kw: VAE(latent_dim=8, channels=16, hidden=64, **kw),
    "gan": lambda **kw: GAN(width=16, latent_dim=16, **kw),
    "gan-r1": lambda **kw: GAN(width=16, latent_dim=16, r1_gamma=1.0, **kw),
    "pixelcnn": lambda **kw: PixelCNN(hidden=16, layers=3, kernel_size=3, **kw),
}


def fit(model, tmp_path, precision: str, steps: int = 24):
    # 24 optimizer steps: under 16-mixed the grad scaler starts at 2^16 and skips steps while it halves to a
    # scale at which the autoencoders' summed per-pixel losses (thousands of nats) stop overflowing (~10 steps)
    images = torch.randint(0, 256, (64, 1, 28, 28)).float() / 255
    loader = DataLoader(TensorDataset(images, torch.zeros(64, dtype=torch.long)), batch_size=16)
    trainer = LightningGenTrainer(default_root_dir=tmp_path, max_steps=steps, accelerator="gpu", devices=1,
                                  precision=precision, logger=False, enable_progress_bar=False,
                                  enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(model, loader)
    return trainer


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_trains_in_mixed_precision(family, precision, tmp_path):
    model = FAMILIES[family]()
    before = copy.deepcopy(model.state_dict())
    fit(model, tmp_path, precision)
    after = model.state_dict()
    for name, value in after.items():
        assert torch.isfinite(value.float()).all(), name
    changed = [n for n, v in after.items() if v.is_floating_point() and not torch.equal(v.cpu(), before[n])]
    assert len(changed) >= len(before) // 2, f"few weights moved: {changed}"
    samples = model.to(CUDA).sample(4, generator=torch.Generator(CUDA).manual_seed(0))
    assert torch.isfinite(samples).all() and samples.min() >= 0 and samples.max() <= 1


@pytest.mark.parametrize("family", ["vae", "pixelcnn", "gan"])
def test_compiled_networks_on_the_gpu_give_the_eager_results(family):
    # cuDNN convolutions run in TF32 by default (10-bit mantissa) in both paths but may pick different
    # algorithms: per-pixel parameters agree to ~1e-3 relative, sums over 784 pixels to rtol 1e-3
    compiled = FAMILIES[family](compile=True).to(CUDA)
    eager = copy.deepcopy(compiled)
    eager.compile_networks = False
    compiled.configure_model()
    images = torch.rand(16, 1, 28, 28, device=CUDA)
    with torch.no_grad():
        if family == "gan":
            z = torch.randn(16, 16, device=CUDA)
            got, expected = compiled.discriminator(compiled.generator(z)), eager.discriminator(eager.generator(z))
        elif family == "vae":
            got, expected = compiled.posterior(images)[0], eager.posterior(images)[0]
        else:
            got, expected = compiled.log_likelihood(images), eager.log_likelihood(images)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)


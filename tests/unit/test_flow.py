"""Flow: invertible layers whose log-determinants match brute-force Jacobians, Glow's data-dependent
ActNorm initialisation (once, identical on every process), an exact likelihood at initialisation that
matches the preprocessing's by hand, learning, and sampling temperature."""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_gen.data.idx import read_idx
from lightning_gen.errors import ConfigValueError
from lightning_gen.models import VAE, Flow
from lightning_gen.nets.flow import MultiScaleFlow
from lightning_gen.nets.flow_layers import ActNorm, AffineCoupling, InvertibleConv1x1, Squeeze, channel_moments
from tests.support.contract import GenerativeModelContract, train_briefly

FLOW_TEST_METRICS, FLOW_PREDICTIONS = ("test/nll", "test/nll_bpd"), ("nll", "nll_bpd")


class TestFlowContract(GenerativeModelContract):
    other_model_class = VAE
    config, test_metrics, predictions = "flow_fmnist.yaml", FLOW_TEST_METRICS, FLOW_PREDICTIONS

    def make_model(self):
        return Flow(data_shape=(1, 28, 28), levels=2, steps_per_level=1, hidden=8)


# --- each layer and the whole flow: exact inverses, log-determinants of the true Jacobian ------------
def _perturbed(module: torch.nn.Module, seed: int, scale: float = 0.3) -> torch.nn.Module:
    """``module`` in float64 with every parameter moved off its initial value (couplings start as the
    identity, which would make any log-determinant formula look right)."""
    generator = torch.Generator().manual_seed(seed)
    module = module.double()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    return module


LAYERS = {
    "squeeze": lambda: Squeeze(),
    "actnorm": lambda: ActNorm(2),
    "conv1x1": lambda: InvertibleConv1x1(2),
    "coupling-channel": lambda: AffineCoupling(2, hidden=6, mask="channel"),
    "coupling-channel-swapped": lambda: AffineCoupling(3, hidden=6, mask="channel", parity=1),
    "coupling-checkerboard": lambda: AffineCoupling(2, hidden=6, mask="checkerboard"),
    "coupling-checkerboard-swapped": lambda: AffineCoupling(2, hidden=6, mask="checkerboard", parity=1),
}
CHANNELS = {"coupling-channel-swapped": 3}
FLOWS = {
    "flow-channel": lambda: MultiScaleFlow((2, 4, 4), levels=2, steps_per_level=2, hidden=6, coupling="channel"),
    "flow-checkerboard": lambda: MultiScaleFlow((1, 4, 4), levels=2, steps_per_level=2, hidden=6,
                                                coupling="checkerboard"),
    "flow-fixed-split-prior": lambda: MultiScaleFlow((2, 4, 4), levels=2, steps_per_level=2, hidden=6,
                                                     split_prior=False),
}


def _layer_and_input(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(3, CHANNELS.get(name, 2), 4, 4, dtype=torch.float64)
    return _perturbed(LAYERS[name](), seed=1), x


def _flow_and_input(name: str) -> tuple[MultiScaleFlow, torch.Tensor]:
    torch.manual_seed(0)
    flow = FLOWS[name]()
    x = torch.randn(3, *flow.data_shape, dtype=torch.float64)
    flow = flow.double()
    flow.initialize(x)
    return _perturbed(flow, seed=1), x


@pytest.mark.parametrize("name", LAYERS)
def test_each_layer_inverts_exactly(name):
    layer, x = _layer_and_input(name)
    y, logdet = layer(x)
    assert logdet.shape == (3,)
    assert not torch.allclose(y.reshape(x.shape), x)  # a real transformation (the squeeze permutes)
    torch.testing.assert_close(layer.inverse(y), x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", FLOWS)
def test_the_whole_flow_inverts_exactly(name):
    flow, x = _flow_and_input(name)
    z, _ = flow(x)
    assert z.shape == (3, x[0].numel())
    torch.testing.assert_close(flow.inverse(z), x, rtol=1e-9, atol=1e-9)  # float64, 16 layers


def _brute_force_logdet(transform, x: torch.Tensor) -> torch.Tensor:
    """log |det J| of ``transform`` at each image of ``x``, from the full autograd Jacobian ``[D, D]``."""
    values = []
    for image in x:
        jacobian = torch.autograd.functional.jacobian(
            lambda flat: transform(flat.view(1, *image.shape)).reshape(-1), image.reshape(-1))
        values.append(torch.linalg.slogdet(jacobian).logabsdet)
    return torch.stack(values)


@pytest.mark.parametrize("name", LAYERS)
def test_each_layers_logdet_is_that_of_its_jacobian(name):
    layer, x = _layer_and_input(name)
    expected = _brute_force_logdet(lambda t: layer(t)[0], x)
    if name != "squeeze":
        assert (expected.abs() > 1e-3).all()  # a volume change to get right
    torch.testing.assert_close(layer(x)[1], expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", FLOWS)
def test_the_whole_flows_logdet_is_that_of_its_jacobian(name):
    flow, x = _flow_and_input(name)
    expected = _brute_force_logdet(lambda t: flow(t)[0], x)
    torch.testing.assert_close(flow(x)[1], expected, rtol=0, atol=1e-9)


def test_couplings_start_as_the_identity():
    x = torch.randn(4, 4, 6, 6)
    for mask in ("channel", "checkerboard"):
        y, logdet = AffineCoupling(4, hidden=8, mask=mask)(x)
        assert torch.equal(y, x) and torch.equal(logdet, torch.zeros(4))


# --- ActNorm's data-dependent initialisation ---------------------------------------------------------
def test_actnorm_initialisation_whitens_its_first_batch_and_only_that():
    layer = ActNorm(3)
    first = torch.randn(16, 3, 5, 5) * torch.tensor([0.1, 2.0, 7.0]).view(1, 3, 1, 1) + 4
    assert not layer.initialized
    layer.initialize(first)
    y, _ = layer(first)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(y.var((0, 2, 3), unbiased=False), torch.ones(3), rtol=1e-4, atol=0)
    assert layer.initialized


def _actnorm_parameters(model: Flow) -> list[torch.Tensor]:
    return [p.detach().clone() for layer in model.flow.actnorms() for p in (layer.log_scale, layer.bias)]


def test_actnorm_initialisation_does_not_rerun_after_a_checkpoint_is_restored(tmp_path):
    model = Flow(data_shape=(1, 8, 8), levels=2, steps_per_level=1, hidden=8)
    trainer = train_briefly(model, tmp_path, batches=1)
    trained = _actnorm_parameters(model)
    assert all(bool(layer.initialized) for layer in model.flow.actnorms())
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    # a learning rate of 0: only a second data-dependent initialisation could move the ActNorm parameters
    frozen = functools.partial(torch.optim.SGD, lr=0.0)
    restored = Flow.load_checkpoint(tmp_path / "model.ckpt", optimizer=frozen)
    train_briefly(restored, tmp_path / "again", batches=2)  # new random images
    for before, after in zip(trained, _actnorm_parameters(restored), strict=True):
        assert torch.equal(before, after)
    # the control: the same run from a fresh model does initialise
    fresh = Flow(data_shape=(1, 8, 8), levels=2, steps_per_level=1, hidden=8, optimizer=frozen)
    train_briefly(fresh, tmp_path / "fresh", batches=2)
    assert all(p.abs().max() > 0 for p in _actnorm_parameters(fresh))  # they start at 0 (the identity)


# each process of a two-process gloo group initialises an ActNorm on its own batch (a light script: the
# processes import the layer alone, not this test module)
_RANK_SCRIPT = """
import sys, torch, torch.distributed as dist
from lightning_gen.nets.flow_layers import ActNorm
rank, folder = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
layer = ActNorm(2)
layer.initialize(torch.load(f"{folder}/batch{rank}.pt"))
torch.save({"log_scale": layer.log_scale.detach(), "bias": layer.bias.detach()}, f"{folder}/rank{rank}.pt")
dist.destroy_process_group()
"""


def test_actnorm_initialisation_is_identical_on_every_process_and_uses_all_their_data(tmp_path):
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 2, 3, 3, generator=generator), torch.randn(8, 2, 3, 3, generator=generator) * 3 + 1]
    for rank, batch in enumerate(batches):
        torch.save(batch, tmp_path / f"batch{rank}.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen([sys.executable, "-c", _RANK_SCRIPT, str(rank), str(tmp_path)], env=env,
                                  stderr=subprocess.PIPE, text=True) for rank in range(2)]
    errors = [process.communicate(timeout=300)[1] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], errors
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    assert torch.equal(ranks[0]["log_scale"], ranks[1]["log_scale"])
    assert torch.equal(ranks[0]["bias"], ranks[1]["bias"])
    union = torch.cat(batches)  # both processes' batches (of unequal sizes) as one
    torch.testing.assert_close(ranks[0]["bias"].flatten(), -union.mean((0, 2, 3)))
    torch.testing.assert_close(ranks[0]["log_scale"].flatten(), -union.std((0, 2, 3), unbiased=False).log(),
                               rtol=1e-5, atol=1e-6)
    alone = ActNorm(2)
    alone.initialize(batches[1])  # the control: one process's batch alone gives other parameters
    assert not torch.allclose(alone.bias, ranks[1]["bias"], atol=0.1)


def test_channel_moments_without_processes_are_the_batch_statistics():
    x = torch.randn(5, 3, 4, 4) * 3 + 1
    mean, var = channel_moments(x)
    torch.testing.assert_close(mean, x.mean((0, 2, 3)))
    torch.testing.assert_close(var, x.var((0, 2, 3), unbiased=False))


# --- the likelihood at initialisation, by hand -------------------------------------------------------
def _preprocessing_alone_log_likelihood(y: torch.Tensor) -> torch.Tensor:
    """log p of dequantised images under an identity flow, computed without the model: a standard normal
    on v = logit(0.05 + 0.9 y), pushed back through that map (its derivative from autograd), minus
    D log 256 for the 8-bit bound. ``[N]`` nats."""
    y = y.clone().requires_grad_(True)
    v = torch.logit(0.05 + 0.9 * y)
    (derivative,) = torch.autograd.grad(v.sum(), y)  # dv_i/dy_i: the map is elementwise
    log_density = torch.distributions.Normal(0.0, 1.0).log_prob(v) + derivative.log()
    return (log_density.flatten(1).sum(1) - y[0].numel() * math.log(256)).detach()


@pytest.mark.parametrize("coupling", ["channel", "checkerboard"])
def test_bits_per_dim_at_initialisation_is_the_preprocessings_alone(coupling):
    # before the data-dependent initialisation the flow is a rotation (1x1 convs at random orthogonal
    # matrices, couplings at the identity): the standard normal prior is rotation invariant
    torch.manual_seed(0)
    model = Flow(data_shape=(1, 8, 8), levels=2, steps_per_level=2, hidden=8, coupling=coupling)
    images = torch.randint(0, 256, (16, 1, 8, 8)).float() / 255
    y = model.prepare_input(images, torch.Generator().manual_seed(0))
    expected = _preprocessing_alone_log_likelihood(y)
    torch.testing.assert_close(model.log_likelihood(y), expected, rtol=1e-5, atol=1e-3)
    bits_per_dim = -expected / (64 * math.log(2))
    # uniformly random 8-bit images: near the uniform dequantised density's 8 bits/dim
    assert (bits_per_dim > 7.5).all() and (bits_per_dim < 9).all(), bits_per_dim


# --- learning ----------------------------------------------------------------------------------------
def _small_fashion_images(fmnist_dir: Path, n: int) -> torch.Tensor:
    """``n`` Fashion-MNIST training images at 8x8: the central 24x24 averaged in 3x3 blocks, back on the
    8-bit levels k / 255. ``[n, 1, 8, 8]``."""
    images = read_idx(fmnist_dir / "train-images-idx3-ubyte.gz", 3, "")[:n].float().unsqueeze(1)
    return torch.round(F.avg_pool2d(images[:, :, 2:26, 2:26], 3)) / 255


def _held_out_bits_per_dim(lr: float, seed: int, train: torch.Tensor, held_out: torch.Tensor, steps: int) -> float:
    torch.manual_seed(seed)
    model = Flow(data_shape=(1, 8, 8), levels=2, steps_per_level=2, hidden=16,
                 optimizer=functools.partial(torch.optim.Adam, lr=lr))
    optimizer = model.configure_optimizers()
    order = torch.Generator().manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        for step in range(steps):
            batch = train[torch.randint(len(train), (32,), generator=order)]
            loss = model.training_step((batch, None), step)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    x = model.prepare_input(held_out, torch.Generator().manual_seed(0))
    return float(-model.log_likelihood(x).mean() / (64 * math.log(2)))


def test_a_few_hundred_steps_beat_the_untrained_flow_on_held_out_images_for_every_seed(fmnist_dir):
    images = _small_fashion_images(fmnist_dir, 384)
    train, held_out = images[:256], images[256:]
    with torch.random.fork_rng(devices=[]):
        for seed in range(3):
            trained = _held_out_bits_per_dim(3e-3, seed, train, held_out, steps=120)
            # the control: learning rate 0, so after the ActNorm initialisation of its first batch every step
            # is a no-op (one step stands for all); it scored 7.55-7.73 bits/dim, the trained flows 6.4-6.5
            control = _held_out_bits_per_dim(0.0, seed, train, held_out, steps=1)
            assert trained < control - 0.75, (seed, trained, control)


# --- sampling temperature ----------------------------------------------------------------------------
def _small_model() -> Flow:
    """A float64 flow on 8x8 images, its parameters moved a little off their initial values."""
    torch.manual_seed(0)
    return _perturbed(Flow(data_shape=(1, 8, 8), levels=2, steps_per_level=2, hidden=8), seed=2, scale=0.1).eval()


def test_temperature_zero_gives_the_image_of_the_zero_latent():
    model = _small_model()
    first = model.sample(3, generator=torch.Generator().manual_seed(0), temperature=0.0)
    other = model.sample(3, generator=torch.Generator().manual_seed(1), temperature=0.0)
    assert torch.equal(first, other)
    zero_image = model.decode(torch.zeros(1, 64, dtype=torch.float64))
    assert torch.equal(first, zero_image.expand_as(first))
    assert not torch.equal(first, model.sample(3, generator=torch.Generator().manual_seed(0)))


def test_lower_temperature_gives_samples_with_smaller_latents():
    model = _small_model()
    norms = {}
    for temperature in (0.5, 1.0):
        images = model.sample(200, generator=torch.Generator().manual_seed(0), temperature=temperature)
        centred = (torch.round(images * 255) + 0.5) / 256  # the middle of each sample's 8-bit bin
        norms[temperature] = model.encode(centred).norm(dim=1).mean()
    # E|z| ~ T sqrt(D) up to the samples' rounding to 8 bits: about 4 and 8 for D = 64
    assert norms[0.5] < norms[1.0], norms
    assert 0.45 < norms[0.5] / norms[1.0] < 0.55, norms
    assert 7 < norms[1.0] < 9, norms


def test_the_models_temperature_is_the_default_and_an_argument_overrides_it():
    model = _small_model()
    model.temperature = 0.0
    default = model.sample(2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(default, model.sample(2, generator=torch.Generator().manual_seed(5), temperature=0.0))
    assert not torch.equal(default, model.sample(2, generator=torch.Generator().manual_seed(0), temperature=1.0))


def test_decode_inverts_encode_on_the_8_bit_levels():
    model = _small_model()
    images = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.float64) / 255
    assert torch.equal(model.decode(model.encode(model.prepare_input(images))), images)


# --- configuration errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("arguments, message", [
    ({"data_shape": (1, 28, 28), "levels": 3}, "divisible by 8.*28x28.*fewer levels"),
    ({"coupling": "spiral"}, "unknown coupling 'spiral'"),
    ({"dequantization": "variational"}, "unknown dequantization 'variational'"),
    ({"temperature": -1.0}, "temperature must be at least 0"),
    ({"hidden": 0}, "hidden must be at least 1"),
])
def test_bad_options_are_clear_errors(arguments, message):
    with pytest.raises(ConfigValueError, match=message):
        Flow(**arguments)

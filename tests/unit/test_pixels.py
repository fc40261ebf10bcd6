import pytest
import torch

from lightning_gen.data import pixels


def test_uint8_levels_round_trip_is_exact_on_8bit_images():
    levels = torch.arange(256)
    images = levels.float() / 255
    assert torch.equal(pixels.to_uint8_levels(images), levels)
    assert torch.equal(pixels.from_uint8_levels(levels), images)


def test_signed_range_round_trip():
    x = torch.rand(4, 1, 8, 8)
    assert pixels.to_signed(x).min() >= -1 and pixels.to_signed(x).max() <= 1
    torch.testing.assert_close(pixels.from_signed(pixels.to_signed(x)), x)


def test_static_binarization_thresholds_at_half():
    x = torch.tensor([0.0, 0.49, 0.5, 0.51, 1.0])
    assert pixels.binarize(x, "static").tolist() == [0, 0, 0, 1, 1]


def test_dynamic_binarization_is_bernoulli_of_the_pixel_and_seeded():
    x = torch.full((200_000,), 0.3)
    first = pixels.binarize(x, "dynamic", torch.Generator().manual_seed(1))
    again = pixels.binarize(x, "dynamic", torch.Generator().manual_seed(1))
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert abs(first.mean().item() - 0.3) < 0.005
    assert torch.equal(first, again)


def test_unknown_binarization_names_the_choices():
    with pytest.raises(ValueError, match="dynamic"):
        pixels.binarize(torch.rand(3), "sometimes")


def test_dequantization_stays_inside_the_pixel_bin():
    levels = torch.randint(0, 256, (10_000,))
    noisy = pixels.dequantize(pixels.from_uint8_levels(levels))
    assert torch.equal(torch.floor(noisy * 256).long(), levels)
    # the noise fills the bin: its fractional part is spread over [0, 1)
    fraction = noisy * 256 - levels
    assert fraction.min() < 0.01 and fraction.max() > 0.99

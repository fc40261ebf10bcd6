"""Networks with no training logic."""

from lightning_gen.nets.conv import ConvDecoder, ConvEncoder

__all__ = ["ConvDecoder", "ConvEncoder"]

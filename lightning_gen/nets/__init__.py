"""Networks with no training logic."""

from lightning_gen.nets.conv import ConvDecoder, ConvEncoder
from lightning_gen.nets.mlp import MLPDecoder, MLPEncoder

__all__ = ["ConvDecoder", "ConvEncoder", "MLPDecoder", "MLPEncoder"]

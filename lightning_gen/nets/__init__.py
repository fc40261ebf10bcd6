"""Networks with no training logic."""

from lightning_gen.nets.conv import ConvDecoder, ConvEncoder
from lightning_gen.nets.flow import MultiScaleFlow
from lightning_gen.nets.mlp import MLPDecoder, MLPEncoder
from lightning_gen.nets.unet import TimeConditionedUNet
from lightning_gen.nets.velocity_mlp import VelocityMLP

__all__ = ["ConvDecoder", "ConvEncoder", "MLPDecoder", "MLPEncoder", "MultiScaleFlow", "TimeConditionedUNet",
           "VelocityMLP"]

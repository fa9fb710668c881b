"""Reference PoM layers, blocks and the small model zoo."""

from .functional import BlockCausalMask
from .layers import PoMLayer, PoMv1, PoMv2
from .rope import PoMv2RoPE

__all__ = ["BlockCausalMask", "PoMLayer", "PoMv1", "PoMv2", "PoMv2RoPE"]

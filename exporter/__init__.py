"""dit-export: quantize a diffusers DiT and export it for TensorRT."""

__version__ = "0.1.0"

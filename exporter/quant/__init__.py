"""Quantization: numeric primitives (pure torch) and the model transforms built on them."""

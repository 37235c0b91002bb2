"""Quantization: recipes, quantized layers, the block-by-block driver, calibration data, checkpoints and reports; the papers' methods in methods/."""

"""ONNX graphs: tracing, QDQ / FP4 / codebook emission, files, ONNX Runtime, comparisons."""

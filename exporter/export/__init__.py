"""ONNX export of FP and quantized DiTs."""

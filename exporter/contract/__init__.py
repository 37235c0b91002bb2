"""The TensorRT plugins' contract as data, and the C++ header generated from it."""

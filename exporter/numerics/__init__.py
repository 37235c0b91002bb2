"""Number formats, rounding, packing and Hadamard transforms: pure torch, nothing above it."""

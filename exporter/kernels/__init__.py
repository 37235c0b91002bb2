"""GEMM kernels of the deployable recipes, in Triton: one source per GEMM family, run by the
Triton interpreter on the CPU (TRITON_INTERPRET=1), just in time from PyTorch on a GPU, and
compiled ahead of time for the plugins (variants.py)."""

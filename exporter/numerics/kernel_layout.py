"""The constants of the kernels' operand layouts that the Python wrappers, the ahead-of-time
variants, the plugin contract and the rewrite share (no Triton needed to read them).

    SPAN        channels per 4-bit half chunk, per weight factor / exponent offset byte
    K_STEP      K step of the ahead-of-time GEMM variants: the 4-bit layouts need it to divide K
    ALIGNMENT   N and K of every variant are compiled as multiples of it (16-byte rows)
    FP4_GROUP   channels per fine group of the FP4 activation quantizer
    INT4_GROUP  channels per two-level group of the static INT4 activation quantizer
"""

SPAN = 32
K_STEP = 128
ALIGNMENT = 16
FP4_GROUP = 32
INT4_GROUP = 32

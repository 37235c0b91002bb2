import pytest
import torch

from exporter.numerics.hadamard import block_size_for, hadamard_matrix, rotate, rotate_linear_weight
from exporter.numerics.primitives import IntFormat, choose_qparams, fake_quantize, sqnr_db


@pytest.mark.parametrize("n", [1, 2, 8, 128])
def test_hadamard_is_orthonormal(n):
    h = hadamard_matrix(n)
    torch.testing.assert_close(h @ h.T, torch.eye(n), atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        hadamard_matrix(12)


@pytest.mark.parametrize("k", [128, 1152, 96, 7])  # power of two, 9 x 128, 3 x 32, odd
def test_rotation_leaves_a_linear_layer_unchanged(k):
    gen = torch.Generator().manual_seed(k)
    x, w = torch.randn(5, 3, k, generator=gen, dtype=torch.float64), torch.randn(4, k, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(rotate(x) @ rotate_linear_weight(w).T, x @ w.T)
    assert block_size_for(k) == {128: 128, 1152: 128, 96: 32, 7: 1}[k]


def test_rotation_spreads_outliers_and_helps_4_bit_activations():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 128, generator=gen)
    x[:, 5] *= 40  # an outlier channel, as DiT activations have
    fmt = IntFormat(4)
    def err(a):
        s, z = choose_qparams(a, fmt, -1)
        return sqnr_db(a, fake_quantize(a, s, z, fmt, -1))
    rotated = rotate(x)
    assert rotated.abs().max() < 0.5 * x.abs().max()
    assert err(rotated) > err(x) + 6


def test_rotation_is_the_butterflies_of_the_documented_order():
    """rotate's float32 arithmetic, which the FP4 activation quantizer repeats to the bit:
    stages of stride 1, 2, ..., b / 2 of (u + v, u - v), then times float32(1 / sqrt(b))."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 64, generator=gen) * torch.logspace(-3, 3, 64)
    y = x.clone()
    for stride in (1, 2, 4, 8, 16):
        for start in range(0, 64, 2 * stride):
            for i in range(start, start + stride):
                u, v = y[:, i].clone(), y[:, i + stride].clone()
                y[:, i], y[:, i + stride] = u + v, u - v
    assert torch.equal(rotate(x, 32), y * torch.tensor(32 ** -0.5, dtype=torch.float32))
    torch.testing.assert_close(rotate(x, 32), (x.reshape(6, 2, 32) @ hadamard_matrix(32)).reshape(6, 64))
    with pytest.raises(ValueError):
        rotate(x, 48)

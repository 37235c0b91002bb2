"""The Triton GEMM families and the activation quantizer against the PyTorch arithmetic of their
recipes (exporter/kernels/reference.py, the simulated quantizers): exact where the arithmetic is
(integer accumulation, codes), to float-reordering tolerance otherwise. Without a GPU they run in
Triton's interpreter (tests/conftest.py); on a GPU, on the GPU."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the kernels are Triton kernels")

from exporter.kernels import reference
from exporter.kernels.activation_quant import quantize_rows
from exporter.kernels.fp8_gemm import Fp8Weights, fp8_gemm
from exporter.kernels.int8_gemm import Int8Weights, Tiles, int8_gemm, pack_int4_chunks, unpack_int4_chunks
from exporter.kernels.vq_gemm import VqWeights, vq_gemm
from exporter.numerics import fp4_fine_groups, fp4_groups, two_level_activations
from exporter.numerics.hadamard import rotate
from exporter.numerics.primitives import PER_CHANNEL, Fp8E4M3Format, IntFormat, choose_qparams, quantize
from exporter.numerics.vq import pack_indices
from exporter.quant.qlinear import StaticActivationQuant, TimestepContext

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMALL = Tiles(32, 32, 64)  # several tiles and K steps even at small shapes


def _rand(*shape, scale=1.0, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _codes(low, high, *shape, seed=0, dtype=torch.int8):
    return torch.randint(low, high, shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _assert_close(y: torch.Tensor, expected: torch.Tensor, rel: float = 1e-6) -> None:
    y = y.float().cpu()
    assert y.shape == expected.shape
    assert (y - expected).abs().max() <= rel * expected.abs().max() + 1e-6


def test_int4_chunk_layout_round_trips():
    q = _codes(-8, 8, 5, 128)
    assert torch.equal(unpack_int4_chunks(pack_int4_chunks(q)), q)
    packed = pack_int4_chunks(q)
    assert packed[0, 0] & 0xF == q[0, 0] & 0xF and packed[0, 0] >> 4 == q[0, 32] & 0xF


@pytest.mark.parametrize("m,n,k,group,tiles", [
    (1, 40, 128, 32, None), (77, 96, 256, 32, None), (77, 96, 256, 64, SMALL), (77, 96, 192, 96, SMALL),
    (1000, 72, 384, 128, None), (130, 50, 576, 288, SMALL)])
def test_int8_gemm_four_bit_is_exact(m, n, k, group, tiles):
    a = _codes(-128, 128, m, k)
    weights = Int8Weights.four_bit_from_codes(_codes(-8, 8, n, k, seed=1), _codes(1, 17, n, k // group, seed=2),
                                              torch.rand(n) + 0.5, group)
    ones = torch.ones(m)
    y = int8_gemm(a.to(DEVICE), ones.to(DEVICE), _on(weights), out_dtype=torch.float32, tiles=tiles)
    assert torch.equal(y.cpu(), reference.rescaled_product(a, ones, weights.operand(), weights.w_scale))
    assert weights.operand().abs().max() <= 128


@pytest.mark.parametrize("m,n,k", [(1, 16, 32), (77, 50, 200), (300, 130, 1152)])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_gemm_eight_bit_rescales_once(m, n, k, bias):
    a, w = _codes(-128, 128, m, k), _codes(-128, 128, n, k, seed=1)
    a_scale, w_scale = torch.rand(m) + 0.1, torch.rand(n) + 0.1
    b = _rand(n, seed=3) if bias else None
    weights = Int8Weights(w, w_scale)
    y = int8_gemm(a.to(DEVICE), a_scale.to(DEVICE), _on(weights), _to(b), torch.float32, tiles=SMALL)
    _assert_close(y, reference.rescaled_product(a, a_scale, w, w_scale, b))


@pytest.mark.parametrize("bits", [8, 4])
def test_int8_gemm_with_float16_activations(bits):
    """Weight-only layers: FP16 activations times the exact INT8 operand, on FP16 MMA."""
    m, n, k = 5, 48, 128
    a = _rand(m, k).half()
    if bits == 4:
        weights = Int8Weights.four_bit_from_codes(_codes(-8, 8, n, k, seed=1), _codes(1, 17, n, k // 32, seed=2),
                                                  torch.rand(n) + 0.5, 32)
    else:
        weights = Int8Weights(_codes(-128, 128, n, k, seed=1), torch.rand(n) + 0.5)
    b = _rand(n, seed=3)
    y = int8_gemm(a.to(DEVICE), None, _on(weights), _to(b), torch.float32, tiles=SMALL)
    _assert_close(y, reference.rescaled_product(a.float(), torch.ones(m), weights.operand(), weights.w_scale, b),
                  rel=1e-5)


def test_int8_gemm_float16_output():
    a, w = _codes(-128, 128, 77, 128), _codes(-128, 128, 64, 128, seed=1)
    scale = torch.full((77,), 1e-3)
    y = int8_gemm(a.to(DEVICE), scale.to(DEVICE), _on(Int8Weights(w, torch.full((64,), 1e-3))), out_dtype=torch.float16)
    assert y.dtype == torch.float16
    _assert_close(y, reference.rescaled_product(a, scale, w, torch.full((64,), 1e-3)), rel=1e-3)


def test_int8_gemm_refuses_bad_operands():
    weights = Int8Weights.four_bit_from_codes(_codes(-8, 8, 8, 128), _codes(1, 17, 8, 4), torch.ones(8), 32)
    with pytest.raises(ValueError, match="K = 128"):
        int8_gemm(_codes(-128, 128, 4, 64), torch.ones(4), weights)
    bad_group = Int8Weights(weights.codes, weights.w_scale, weights.factor[:, :2], 48)
    with pytest.raises(ValueError, match="multiple of 32"):
        int8_gemm(_codes(-128, 128, 4, 128), torch.ones(4), bad_group)


@pytest.mark.parametrize("kind", ["e2m1", "e3m0", "e1m2"])
@pytest.mark.parametrize("m,n,k,group", [(1, 40, 128, 32), (77, 96, 256, 32), (77, 96, 192, 96)])
def test_fp8_gemm_fp4_weights(kind, m, n, k, group):
    w = _rand(n, k, seed=1) * torch.rand(n, 1)
    w[:, :group] *= 50  # groups far apart in range: their exponents differ
    codes, t, s = fp4_groups.quantize(w, group, kind)
    weights = Fp8Weights.fp4_from_codes(codes, t, s, group, kind)
    assert torch.equal(weights.operand() * s[:, None], fp4_groups.dequantize(codes, t, s, kind))
    a = (_rand(m, k, scale=10)).to(torch.float8_e4m3fn)
    a_scale, b = torch.rand(m) + 0.5, _rand(n, seed=2)
    y = fp8_gemm(a.to(DEVICE), a_scale.to(DEVICE), _on(weights), _to(b), torch.float32, tiles=SMALL)
    _assert_close(y, reference.rescaled_product(a.float(), a_scale, weights.operand(), s, b))


@pytest.mark.parametrize("m,n,k", [(1, 16, 32), (77, 50, 200)])
def test_fp8_gemm_fp8_weights(m, n, k):
    a, w = _rand(m, k).to(torch.float8_e4m3fn), _rand(n, k, seed=1).to(torch.float8_e4m3fn)
    y = fp8_gemm(a.to(DEVICE), torch.ones(m, device=DEVICE), _on(Fp8Weights(w, torch.ones(n))), None, torch.float32)
    _assert_close(y, reference.rescaled_product(a.float(), torch.ones(m), w.float(), torch.ones(n)))


@pytest.mark.parametrize("codewords,dim", [(256, 4), (64, 2)])
@pytest.mark.parametrize("m,n,k", [(1, 40, 128), (77, 96, 256), (130, 50, 200)])
def test_vq_gemm_decodes_the_codebook(codewords, dim, m, n, k):
    codebook = _rand(codewords, dim).half()
    indices = torch.randint(0, codewords, (n, k // dim), generator=torch.Generator().manual_seed(1))
    weights = VqWeights.from_stream(codebook, pack_indices(indices, codewords.bit_length() - 1), n, k)
    assert torch.equal(weights.indices.long(), indices)
    a, b = _rand(m, k, seed=2).half(), _rand(n, seed=3)
    y = vq_gemm(a.to(DEVICE), _on(weights), bias=_to(b), out_dtype=torch.float32, tiles=SMALL)
    _assert_close(y, a.float() @ weights.weight().float().T + b, rel=1e-5)
    a8, a_scale = _codes(-128, 128, m, k, seed=4), torch.rand(m)
    y8 = vq_gemm(a8.to(DEVICE), _on(weights), a_scale=a_scale.to(DEVICE), out_dtype=torch.float32, tiles=SMALL)
    _assert_close(y8, reference.rescaled_product(a8, a_scale, weights.weight().float(), torch.ones(n)), rel=1e-5)


def _activations(m: int, k: int) -> torch.Tensor:
    x = _rand(m, k, scale=3)
    x[:, 3] = 40  # an outlier channel
    x[0] = 0  # a silent token
    x[-1, :10] = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 126.5, -127.5, 3.5, 0.25, 0.75])  # ties
    return x


@pytest.mark.parametrize("m,k", [(2, 32), (77, 256), (3, 1152), (5, 2080)])
def test_dynamic_int8_and_fp8_codes_match_the_simulation(m, k):
    x = _activations(m, k)
    codes, scale = quantize_rows(x.to(DEVICE), "int8")
    s, z = choose_qparams(x, IntFormat(8), PER_CHANNEL)
    assert torch.equal(codes.cpu(), quantize(x, s, z, IntFormat(8), PER_CHANNEL))
    assert torch.equal(scale.cpu(), s[:, 0])
    codes, scale = quantize_rows(x.to(DEVICE), "fp8")
    s, _ = choose_qparams(x, Fp8E4M3Format(), PER_CHANNEL)
    expected = Fp8E4M3Format().round(x / s).to(torch.float8_e4m3fn)
    assert torch.equal(codes.cpu().view(torch.uint8), expected.view(torch.uint8))
    assert torch.equal(scale.cpu(), s[:, 0])


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
def test_static_codes_use_each_samples_table_row(fmt):
    x = _activations(12, 96)
    table, bucket = torch.tensor([0.05, 0.2, 0.01, 0.7]), torch.tensor([2, 0, 3])
    codes, scale = quantize_rows(x.to(DEVICE), fmt, table.to(DEVICE), bucket.to(DEVICE))
    rows = table[bucket].repeat_interleave(4)
    assert torch.equal(scale.cpu(), rows)
    y = x / rows[:, None]
    expected = (y.round().clamp(-128, 127).to(torch.int8) if fmt == "int8"
                else Fp8E4M3Format().round(y).to(torch.float8_e4m3fn).view(torch.int8))
    assert torch.equal(codes.cpu().view(torch.int8), expected)


def _two_level_tables(buckets: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Group scales on the two-level grid and UINT4 zero points [buckets, k / 32]: scales spread
    over more than the factors' range of 8, so some groups take the factor 1."""
    gen = torch.Generator().manual_seed(seed)
    raw = torch.exp(torch.randn(buckets, k // 32, generator=gen) * 1.2) * 0.3
    return two_level_activations.project(raw), torch.randint(0, 16, raw.shape, generator=gen).float()


@pytest.mark.parametrize("m,k,samples", [(4, 32, 1), (12, 256, 3), (6, 1152, 2), (2, 2048 + 64, 2)])
def test_static_int4_codes_are_the_simulated_quantizers(m, k, samples):
    """quantize_rows(x, "int4"): (q - z) f as INT8 with the bucket's s, so that code * s is the value
    StaticActivationQuant gives on two-level scales, bit for bit."""
    x = _activations(m, k)
    scale, zero = _two_level_tables(4, k)
    bucket = torch.tensor([3, 0, 2][:samples])
    s, groups = two_level_activations.kernel_tables(scale, zero)
    codes, row_scale = quantize_rows(x.to(DEVICE), "int4", s.to(DEVICE), bucket.to(DEVICE), 32, groups.to(DEVICE))
    assert torch.equal(row_scale.cpu(), s[bucket].repeat_interleave(m // samples))
    context = TimestepContext()
    context.timestep = bucket
    quantizer = StaticActivationQuant(IntFormat(4, symmetric=False), scale, zero, torch.arange(4), context,
                                      two_level=True)
    expected = quantizer(x.reshape(samples, m // samples, k)).reshape(m, k)
    codes = codes.cpu()
    assert codes.abs().max() <= 120
    factor = groups[..., 0][bucket].repeat_interleave(m // samples, 0).repeat_interleave(32, 1).long()
    assert not (codes.long() % factor).any()
    assert torch.equal(codes.float() * row_scale.cpu()[:, None], expected)


@pytest.mark.parametrize("m,k", [(1, 32), (77, 256), (3, 1152), (4, 2048 + 64)])
def test_fp4_group_codes_match_the_grid(m, k):
    x = _activations(m, k)
    codes, scale = quantize_rows(x.to(DEVICE), "fp4")
    c, level, s = fp4_fine_groups.quantize(x, 32)
    assert torch.equal(codes.cpu().view(torch.uint8), fp4_fine_groups.e4m3_operand(c, level))
    assert torch.equal(scale.cpu(), s)


def test_fp4_group_codes_at_the_grid_edges():
    """Ties, groups at a multiplier and an ulp above, below the range, zero and tiny tokens."""
    from tests.numerics.test_fp4_fine_groups import _activation_inputs

    x = _activation_inputs()
    codes, scale = quantize_rows(x.to(DEVICE), "fp4")
    c, level, s = fp4_fine_groups.quantize(x, 32)
    assert torch.equal(codes.cpu().view(torch.uint8), fp4_fine_groups.e4m3_operand(c, level))
    assert torch.equal(scale.cpu(), s)


@pytest.mark.parametrize("m,k", [(1, 32), (77, 256), (3, 1152), (4, 2048 + 64)])
def test_rotated_fp4_group_codes_are_the_rotation_then_the_grid(m, k):
    """fp4_hadamard rotates each group of 32 by exporter/numerics/hadamard.py's butterflies, in the
    same float32 order, before the fine-group grid: the codes and scales agree to the bit."""
    from tests.numerics.test_fp4_fine_groups import _activation_inputs

    x = _activations(m, k)
    for inputs in (x, x.half().float(), _activation_inputs()):
        codes, scale = quantize_rows(inputs.to(DEVICE), "fp4_hadamard")
        c, level, s = fp4_fine_groups.quantize(rotate(inputs, 32), 32)
        assert torch.equal(codes.cpu().view(torch.uint8), fp4_fine_groups.e4m3_operand(c, level))
        assert torch.equal(scale.cpu(), s)
    with pytest.raises(ValueError, match="power of two to rotate"):
        quantize_rows(x[:, :48].to(DEVICE), "fp4_hadamard", group_size=48)
    with pytest.raises(ValueError, match="dynamic only"):
        quantize_rows(x.to(DEVICE), "fp4_hadamard", torch.ones(2, device=DEVICE), torch.zeros(1, dtype=torch.long,
                                                                                               device=DEVICE))


def test_quantize_then_gemm_equals_the_simulated_linear():
    """Dynamic per-token INT8 activations into a two-level INT4 GEMM: the kernels' output is the
    simulated layer's (dequantize, then matmul) to float reordering."""
    m, n, k, group = 77, 96, 256, 32
    x = _activations(m, k)
    q, f = _codes(-8, 8, n, k, seed=5), _codes(1, 17, n, k // group, seed=6)
    row = torch.rand(n) + 0.01
    weights = Int8Weights.four_bit_from_codes(q, f, row, group)
    codes, scale = quantize_rows(x.to(DEVICE), "int8")
    y = int8_gemm(codes, scale, _on(weights), out_dtype=torch.float32)
    s, z = choose_qparams(x, IntFormat(8), PER_CHANNEL)
    x_hat = (quantize(x, s, z, IntFormat(8), PER_CHANNEL).float() * s)
    w_hat = q.float() * f.float().repeat_interleave(group, 1) * row[:, None]
    _assert_close(y, x_hat @ w_hat.T, rel=1e-5)


def test_empty_batch():
    weights = Int8Weights(_codes(-128, 128, 16, 64), torch.ones(16))
    assert int8_gemm(torch.empty(0, 64, dtype=torch.int8, device=DEVICE), torch.empty(0, device=DEVICE),
                     _on(weights)).shape == (0, 16)
    codes, scale = quantize_rows(torch.empty(0, 64, device=DEVICE), "int8")
    assert codes.shape == (0, 64) and scale.shape == (0,)


def _to(t):
    return None if t is None else t.to(DEVICE)


def _on(weights):
    from dataclasses import fields, replace

    return replace(weights, **{f.name: _to(getattr(weights, f.name)) for f in fields(weights)
                               if isinstance(getattr(weights, f.name), torch.Tensor)})

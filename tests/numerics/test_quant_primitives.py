import math

import pytest
import torch

from exporter.numerics.primitives import (
    PER_CHANNEL,
    PER_TENSOR,
    IntFormat,
    choose_qparams,
    dequantize,
    fake_quantize,
    num_groups,
    quantize,
    search_clip_ratio,
    sqnr_db,
)

FORMATS = [IntFormat(8, True), IntFormat(8, False), IntFormat(4, True), IntFormat(4, False)]
GROUPINGS = [PER_TENSOR, PER_CHANNEL, 32, 48, 128]


def reference_fake_quant(w: torch.Tensor, fmt: IntFormat, group_size: int) -> torch.Tensor:
    """Loop over rows and explicit column slices, the way one would write it by hand."""
    out = torch.empty_like(w)
    rows, k = w.shape
    if group_size == PER_TENSOR:
        slices = [(slice(None), slice(None))]
    else:
        g = k if group_size in (PER_CHANNEL,) or group_size >= k else group_size
        slices = [(r, slice(c, min(c + g, k))) for r in range(rows) for c in range(0, k, g)]
    for sl in slices:
        block = w[sl].double()
        lo, hi = min(block.min().item(), 0.0), max(block.max().item(), 0.0)
        if fmt.symmetric:
            scale, zero = max(-lo, hi) / fmt.qmax, 0.0
        else:
            scale = (hi - lo) / (fmt.qmax - fmt.qmin)
            zero = min(max(round(fmt.qmin - lo / scale), fmt.qmin), fmt.qmax)
        q = torch.clamp(torch.round(block / scale + zero), fmt.qmin, fmt.qmax)
        out[sl] = ((q - zero) * scale).float()
    return out


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("group_size", GROUPINGS)
@pytest.mark.parametrize("k", [64, 100, 33])  # odd widths leave a short last group
def test_fake_quant_matches_a_straightforward_reference(fmt, group_size, k):
    w = torch.randn(6, k, generator=torch.Generator().manual_seed(k)) * 0.1
    scale, zero = choose_qparams(w, fmt, group_size)
    expected_groups = 1 if group_size == PER_TENSOR else num_groups(k, group_size)
    assert scale.shape == ((1, 1) if group_size == PER_TENSOR else (6, expected_groups))
    ours = fake_quantize(w, scale, zero, fmt, group_size)
    torch.testing.assert_close(ours, reference_fake_quant(w, fmt, group_size), rtol=1e-5, atol=1e-6)
    codes = quantize(w, scale, zero, fmt, group_size)
    assert codes.dtype == (torch.int8 if fmt.symmetric else torch.uint8)
    assert codes.min() >= fmt.qmin and codes.max() <= fmt.qmax and codes.shape == w.shape
    torch.testing.assert_close(dequantize(codes, scale, zero, fmt, group_size), ours, rtol=0, atol=1e-7)


def test_more_bits_and_smaller_groups_lose_less():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    w[:, 7] *= 20  # an outlier channel
    def err(fmt, g):
        s, z = choose_qparams(w, fmt, g)
        return sqnr_db(w, fake_quantize(w, s, z, fmt, g))
    assert err(IntFormat(8), PER_CHANNEL) > err(IntFormat(4), PER_CHANNEL) + 20
    assert err(IntFormat(4), 32) > err(IntFormat(4), PER_CHANNEL) > err(IntFormat(4), PER_TENSOR)


def test_clip_search_never_does_worse_than_min_max():
    w = torch.randn(32, 96, generator=torch.Generator().manual_seed(1)) ** 3  # heavy tails
    fmt = IntFormat(4)
    ratio = search_clip_ratio(w, fmt, 32, p=2.0)
    assert ratio.shape == (32, 3) and (ratio <= 1).all() and (ratio < 1).any()
    plain = fake_quantize(w, *choose_qparams(w, fmt, 32), fmt, 32)
    clipped = fake_quantize(w, *choose_qparams(w, fmt, 32, clip_ratio=ratio), fmt, 32)
    per_group = lambda x: (x - w).pow(2).reshape(32, 3, 32).sum(-1)  # noqa: E731
    assert (per_group(clipped) <= per_group(plain) + 1e-9).all()
    assert sqnr_db(w, clipped) > sqnr_db(w, plain)


def test_zero_tensor_and_exact_sqnr():
    z = torch.zeros(4, 8)
    s, zp = choose_qparams(z, IntFormat(8), PER_CHANNEL)
    assert torch.equal(fake_quantize(z, s, zp, IntFormat(8), PER_CHANNEL), z)
    assert sqnr_db(z + 1, z + 1) == math.inf


def test_bad_bit_width():
    with pytest.raises(ValueError):
        IntFormat(1)


def test_gptq_beats_round_to_nearest_on_the_layer_output():
    from exporter.numerics.primitives import dequantize
    from exporter.quant.methods.gptq import HessianAccumulator, gptq_quantize

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 96, generator=gen) @ torch.randn(96, 96, generator=gen)  # correlated inputs
    w = torch.randn(48, 96, generator=gen)
    acc = HessianAccumulator(96)
    for chunk in x.split(500):
        acc.add(chunk)
    torch.testing.assert_close(acc.h, 2 * x.double().T @ x.double() / len(x), rtol=1e-4, atol=1e-4)
    from exporter.numerics.fp4 import Fp4Format

    for fmt, g in [(IntFormat(4), 32), (IntFormat(4, symmetric=False), 40), (IntFormat(3), PER_CHANNEL),
                   (Fp4Format("e2m1"), 32), (Fp4Format("e3m0"), 16)]:
        codes, scale, zero = gptq_quantize(w, acc.h, fmt, g)
        values = fmt.decode(codes)
        assert values.min() >= fmt.qmin and values.max() <= fmt.qmax
        assert torch.equal(fmt.round(values), values)  # on the format's grid
        w_gptq = dequantize(codes, scale, zero, fmt, g)
        w_rtn = fake_quantize(w, *choose_qparams(w, fmt, g), fmt, g)
        assert sqnr_db(x @ w.T, x @ w_gptq.T) > sqnr_db(x @ w.T, x @ w_rtn.T) + 1.0


@pytest.mark.parametrize("k", [1, 7, 64])
@pytest.mark.parametrize("signed", [True, False])
def test_int4_packing_round_trips_in_onnx_nibble_order(k, signed):
    from exporter.numerics.packing import pack_int4, unpack_int4

    lo, hi = (-8, 8) if signed else (0, 16)
    codes = torch.randint(lo, hi, (3, k), generator=torch.Generator().manual_seed(k))
    codes = codes.to(torch.int8 if signed else torch.uint8)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (3, (k + 1) // 2)
    assert torch.equal(unpack_int4(packed, k, signed), codes)
    first, second = int(codes[0, 0]) & 0xF, (int(codes[0, 1]) & 0xF if k > 1 else 0)
    assert int(packed[0, 0]) == first | (second << 4)


def test_fp8_e4m3_fake_quant_rounds_to_the_fp8_grid_and_saturates():
    from exporter.numerics.primitives import Fp8E4M3Format, format_from_name

    fmt = Fp8E4M3Format()
    x = torch.tensor([[0.0, 1.0, 1.0625, 1.1, -3.3, 500.0, -1000.0, 0.001]])
    scale, zero = choose_qparams(x, fmt, PER_CHANNEL, clip_ratio=448 / 500)  # 500 maps onto 448
    assert torch.allclose(scale, torch.tensor([[1000 * (448 / 500) / 448]]))  # largest magnitude, clipped
    out = fake_quantize(x, scale, zero, fmt, PER_CHANNEL)
    expected = (x / scale).clamp(-448, 448).to(torch.float8_e4m3fn).float() * scale
    assert torch.equal(out, expected)
    assert out.abs().max() <= 448 * scale.max() + 1e-6
    assert format_from_name("fp8e4m3") == fmt and format_from_name("uint4") == IntFormat(4, False)


def test_hessians_of_layers_fed_one_input_share_its_product():
    from exporter.quant.methods.gptq import HessianAccumulator, SharedProducts

    x = torch.randn(3, 10, 8, generator=torch.Generator().manual_seed(1))
    shared = SharedProducts()
    q, k, alone = HessianAccumulator(8, shared), HessianAccumulator(8, shared), HessianAccumulator(8)
    for acc in (q, k, alone):
        acc.add(x)
    assert shared.last[0] is x and torch.equal(q.h, k.h) and torch.equal(q.h, alone.h)
    other = x.clone()
    q.add(other)  # a new tensor, equal or not, gets its own product
    assert shared.last[0] is other
    shared.forget()
    assert shared.last is None

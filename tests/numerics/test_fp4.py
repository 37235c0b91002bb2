import pytest
import torch

from exporter.numerics.fp4 import FP4_FORMATS, MAGNITUDES, Fp4Format
from exporter.numerics.primitives import choose_qparams, fake_quantize, sqnr_db


@pytest.mark.parametrize("fmt", FP4_FORMATS, ids=lambda f: f.name)
def test_rounding_goes_to_the_nearest_magnitude_and_saturates(fmt):
    grid = torch.tensor(MAGNITUDES[fmt.kind])
    x = torch.linspace(-1.2 * fmt.qmax, 1.2 * fmt.qmax, 2001)
    out = fmt.round(x)
    distance = (x.abs()[:, None].clamp(max=fmt.qmax) - grid[None, :]).abs()
    assert torch.allclose((out.abs() - x.abs().clamp(max=fmt.qmax)).abs(), distance.min(1).values)
    assert torch.equal(torch.sign(out), torch.sign(x) * (out != 0))
    assert out.abs().max() == fmt.qmax


def test_e2m1_ties_go_to_the_even_mantissa():
    e2m1 = Fp4Format("e2m1")
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -5.0])
    assert e2m1.round(ties).tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -4.0]


@pytest.mark.parametrize("fmt", FP4_FORMATS, ids=lambda f: f.name)
def test_codes_round_trip_and_follow_the_float4e2m1_layout(fmt):
    codes = torch.arange(16, dtype=torch.uint8)
    values = fmt.decode(codes)
    again = fmt.encode(values)
    assert torch.equal(again[values != 0], codes[values != 0]) and (again[values == 0] == 0).all()
    if fmt.kind == "e2m1":  # sign | exponent (2) | mantissa (1), as ONNX FLOAT4E2M1
        assert values.tolist() == [0, .5, 1, 1.5, 2, 3, 4, 6, -0.0, -.5, -1, -1.5, -2, -3, -4, -6]


def test_group_scaled_fp4_works_with_the_shared_primitives():
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(0))
    errors = {}
    for fmt in FP4_FORMATS:
        scale, zero = choose_qparams(w, fmt, 32)
        q = fake_quantize(w, scale, zero, fmt, 32)
        on_grid = q / scale.repeat_interleave(32, 1)
        torch.testing.assert_close(fmt.round(on_grid), on_grid, atol=1e-5, rtol=0)
        errors[fmt.kind] = sqnr_db(w, q)
    # On Gaussian weights the uniform-ish grids beat powers of two, as expected.
    assert errors["e2m1"] > errors["e3m0"] and errors["e1m2"] > errors["e3m0"]
    with pytest.raises(ValueError):
        Fp4Format("e4m3")


def test_format_selection_follows_the_distribution():
    from exporter.quant.methods.hqdit import select_format

    gen = torch.Generator().manual_seed(0)
    gaussian = torch.randn(64, 128, generator=gen)
    laplace = torch.distributions.Laplace(0.0, 1.0).icdf(torch.rand(64, 128, generator=gen).clamp(1e-6, 1 - 1e-6))
    fmt, errors = select_format(gaussian, 32)
    assert fmt.kind == "e1m2" and errors[fmt.name] == min(errors.values())  # light tails: a uniform grid
    assert select_format(laplace, 32)[0].kind == "e2m1"  # heavier tails: finer steps near zero


def test_fp4_codes_through_quantize_and_dequantize():
    from exporter.numerics.primitives import dequantize, format_from_name, quantize

    w = torch.randn(16, 40, generator=torch.Generator().manual_seed(1))
    for fmt in FP4_FORMATS:
        assert format_from_name(fmt.name) == fmt
        scale, zero = choose_qparams(w, fmt, 16)
        codes = quantize(w, scale, zero, fmt, 16)
        assert codes.dtype == torch.uint8 and int(codes.max()) <= 15
        torch.testing.assert_close(dequantize(codes, scale, zero, fmt, 16), fake_quantize(w, scale, zero, fmt, 16))

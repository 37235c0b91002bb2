"""Clip search for static activation ranges: the error of every candidate is accumulated over the
data, per timestep bucket and channel group, and the least-error ratio is kept."""

import torch

from exporter.numerics.primitives import IntFormat, qparams_from_range
from exporter.quant.methods.static_clipping import RATIOS, ClipSearch


def _error(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, fmt: IntFormat) -> float:
    scale, zero = qparams_from_range(lo, hi, fmt)
    return float(((fmt.round(x / scale + zero) - zero) * scale - x).pow(2).sum())


def test_a_rare_outlier_is_clipped_and_the_choice_is_the_least_error_candidate():
    gen = torch.Generator().manual_seed(0)
    fmt = IntFormat(4, symmetric=False)
    x = torch.randn(8, 64, 32, generator=gen)  # [samples, tokens, channels]
    x[0, 0, 0] = 40.0  # one outlier in bucket 0, group 0
    buckets = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    groups = x.reshape(8, 64, 2, 16)
    lo = torch.stack([groups[buckets == b].amin((0, 1, 3)) for b in (0, 1)])  # [buckets, groups]
    hi = torch.stack([groups[buckets == b].amax((0, 1, 3)) for b in (0, 1)])
    search = ClipSearch(lo, hi, fmt)
    search.add(x[:5], buckets[:5])  # the data may come in any batches
    search.add(x[5:], buckets[5:])
    ratios = search.best_ratios()
    assert ratios.shape == (2, 2) and ratios[0, 0] < 0.5
    for b in (0, 1):
        for g in (0, 1):
            data = groups[buckets == b][:, :, g]
            errors = [_error(data, lo[b, g] * r, hi[b, g] * r, fmt) for r in RATIOS]
            chosen = min(range(len(RATIOS)), key=lambda i: abs(RATIOS[i] - float(ratios[b, g])))
            assert errors[chosen] <= min(errors) * (1 + 1e-6)
    clipped_lo, clipped_hi = search.clipped()
    torch.testing.assert_close(clipped_hi, hi * ratios)
    torch.testing.assert_close(clipped_lo, lo * ratios)


def test_whole_token_ranges_and_buckets_without_data_keep_the_full_range():
    fmt = IntFormat(4, symmetric=True)
    x = (torch.arange(-7, 8) * 0.1).repeat(2, 4, 1)  # on the full range's grid: clipping only adds error
    search = ClipSearch(torch.full((3,), -0.7), torch.full((3,), 0.7), fmt)
    search.add(x, torch.tensor([0, 2]))
    assert search.best_ratios().tolist() == [1.0, 1.0, 1.0]
    assert search.clipped()[0].shape == (3,)


def test_w4a4_switched_to_dynamic_activations_drops_its_static_only_choices():
    import pytest

    from exporter.errors import UserError
    from exporter.quant.recipes import ActivationSpec, get_recipe

    dynamic = get_recipe("w4a4").with_overrides(activation_mode="dynamic", kd_iterations=0).activation
    assert dynamic.mode == "dynamic" and dynamic.symmetric and not dynamic.clip_search
    with pytest.raises(UserError, match="clip search sets static ranges"):
        ActivationSpec(bits=4, mode="dynamic", clip_search=True)

"""Vector-quantization primitives (VQ4DiT): sub-vectors, k-means, nearest codewords, index packing."""

import math

import pytest
import torch

from exporter.numerics.vq import VqFormat, from_subvectors, kmeans, nearest, pack_indices, subvectors, unpack_indices


def test_formats_give_their_bits_per_weight_and_reject_bad_sizes():
    assert VqFormat(256, 4).bits_per_weight == 2 and VqFormat(64, 2).bits_per_weight == 3
    assert VqFormat(256, 4).name == "vq256x4"
    with pytest.raises(ValueError, match="power-of-two number of codewords"):
        VqFormat(100, 4)
    with pytest.raises(ValueError, match="dimension"):
        VqFormat(256, 0)
    assert VqFormat(256, 4).for_layer(4096) == VqFormat(256, 4)
    assert VqFormat(256, 4).for_layer(300) == VqFormat(64, 4)  # a quarter of 300, down to a power of two


@pytest.mark.parametrize("k", [8, 10, 33])
def test_subvectors_round_trip_and_pad_with_zeros(k):
    w = torch.randn(5, k)
    v = subvectors(w, 4)
    assert v.shape == (5, math.ceil(k / 4), 4)
    assert torch.equal(from_subvectors(v, k), w)
    assert torch.all(v.reshape(5, -1)[:, k:] == 0)


def test_nearest_matches_a_brute_force_search():
    gen = torch.Generator().manual_seed(0)
    points, codebook = torch.randn(500, 3, generator=gen), torch.randn(20, 3, generator=gen)
    idx, dist = nearest(points, codebook, n=3)
    full = torch.cdist(points, codebook).pow(2)
    expected = full.argsort(1)[:, :3]
    assert torch.equal(idx, expected)
    torch.testing.assert_close(dist, full.gather(1, expected), atol=1e-4, rtol=1e-4)


def test_kmeans_finds_well_separated_clusters_and_is_reproducible():
    gen = torch.Generator().manual_seed(1)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    points = (centres[torch.arange(400) % 4] + 0.1 * torch.randn(400, 2, generator=gen))
    codebook = kmeans(points, 4, seed=0)
    found = sorted(codebook.round().tolist())
    assert found == sorted(centres.tolist())
    assert torch.equal(codebook, kmeans(points, 4, seed=0))


def test_kmeans_iterations_improve_on_the_seeding():
    gen = torch.Generator().manual_seed(2)
    points = torch.randn(4000, 4, generator=gen)
    start = kmeans(points, 64, iterations=0)
    trained = kmeans(points, 64, iterations=30)
    error = {name: float(nearest(points, cb)[1].mean()) for name, cb in (("start", start), ("trained", trained))}
    assert error["trained"] < 0.8 * error["start"], error


@pytest.mark.parametrize("bits", [1, 3, 6, 8, 11])
@pytest.mark.parametrize("count", [1, 7, 8, 1001])
def test_index_packing_round_trips(bits, count):
    idx = torch.randint(0, 1 << bits, (count,), generator=torch.Generator().manual_seed(bits + count))
    packed = pack_indices(idx, bits)
    assert packed.dtype == torch.uint8 and len(packed) == math.ceil(count * bits / 8)
    assert torch.equal(unpack_indices(packed, bits, count), idx)


def test_index_packing_is_a_little_endian_bit_stream():
    # 6-bit indices 1, 2: bits 100000 010000 -> byte 0 = 0b10000001, byte 1 = 0b0000
    assert pack_indices(torch.tensor([1, 2]), 6).tolist() == [0b10000001, 0b0000]
    with pytest.raises(ValueError, match="do not hold"):
        unpack_indices(torch.zeros(3, dtype=torch.uint8), 6, 5)

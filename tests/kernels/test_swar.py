"""The four-bytes-at-a-time decoders of the 4-bit GEMMs (exporter/kernels/swar.py), run as a model
of their PTX instructions on every byte value against the operands of the recipes. The PTX itself
is assembled for each GPU target by tests/kernels/test_kernel_aot.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exporter.kernels import swar
from exporter.numerics import fp4_groups

BYTES = np.arange(256, dtype=np.uint32)
# every byte value in every byte position, with different neighbours in the other positions
WORDS = BYTES | (np.roll(BYTES, 1) << 8) | (np.roll(BYTES, 7) << 16) | (np.roll(BYTES, 101) << 24)


def _byte(words: np.ndarray, j: int) -> np.ndarray:
    return ((words >> (8 * j)) & 0xFF).astype(np.uint8)


def _replicated(value: int) -> np.ndarray:
    return np.full(len(WORDS), (value & 0xFF) * 0x01010101, dtype=np.uint32)


@pytest.mark.parametrize("low_factor", range(1, 17))
def test_int4_times_factor(low_factor):
    for high_factor in range(1, 17):
        out = swar.run(swar.INT4_TIMES_FACTOR, {"$2": WORDS, "$3": _replicated(low_factor),
                                                 "$4": _replicated(high_factor)})
        for j in range(4):
            packed = torch.from_numpy(_byte(WORDS, j).astype(np.int64))
            low = ((packed & 0xF) ^ 8) - 8
            high = ((packed >> 4) ^ 8) - 8
            assert torch.equal(torch.from_numpy(_byte(out["$0"], j).view(np.int8).astype(np.int64)), low * low_factor)
            assert torch.equal(torch.from_numpy(_byte(out["$1"], j).view(np.int8).astype(np.int64)), high * high_factor)


@pytest.mark.parametrize("kind", sorted(fp4_groups.EXPONENTS))
def test_fp4_to_e4m3(kind):
    program = swar.fp4_to_e4m3(fp4_groups.e4m3_table_words(kind))
    t_min, t_max = fp4_groups.EXPONENTS[kind]
    for t_low in range(t_min, t_max + 1):
        for t_high in range(t_min, t_max + 1):
            out = swar.run(program, {"$2": WORDS, "$3": _replicated(t_low - t_min), "$4": _replicated(t_high - t_min)})
            for j in range(4):
                packed = torch.from_numpy(_byte(WORDS, j))
                low = fp4_groups.e4m3_operand((packed & 0xF)[None], torch.full((1, 1), t_low), kind)[0]
                high = fp4_groups.e4m3_operand((packed >> 4)[None], torch.full((1, 1), t_high), kind)[0]
                assert torch.equal(torch.from_numpy(_byte(out["$0"], j)), low)
                assert torch.equal(torch.from_numpy(_byte(out["$1"], j)), high)


def test_ptx_declares_its_registers_and_writes_both_outputs():
    text = swar.ptx(swar.INT4_TIMES_FACTOR)
    assert text.startswith("{\n.reg .b32 ") and text.rstrip().endswith("}")
    assert "xor.b32 $0," in text and "xor.b32 $1," in text and "mad.lo.u32" in text

"""Weight operands built four bytes at a time in 32-bit registers (SIMD within a register): the
inner-loop decoders of the 4-bit GEMMs, as PTX for `tl.inline_asm_elementwise` (pack=4), and a
model of the same instructions in NumPy that the tests run on every input byte.

A register holds four bytes of packed codes, each byte two 4-bit codes (int8_gemm's chunk layout:
the low nibbles feed one MMA, the high nibbles the next). A program reads $2 (the codes) and $3 /
$4 (a per-row byte for the low and high halves: the INT4 group factor, or the FP4 group exponent
minus its minimum) and writes $0 / $1, the low and high halves' four 8-bit operands. The per-row
byte is taken from the register's lowest byte: the four elements of a register belong to one row
of the weight tile (the packed load gives each thread runs of consecutive channels of a row).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MASK = 0xFFFFFFFF


@dataclass(frozen=True)
class Op:
    name: str  # and, or, xor, shl, shr, mad (lo 32 bits of a * b + c), prmt (byte permute)
    dst: str
    srcs: tuple[str | int, ...]


def _ptx_operand(src: str | int) -> str:
    return f"0x{src & MASK:08X}" if isinstance(src, int) else src


def ptx(program: list[Op]) -> str:
    """The PTX of a program; registers named r* are declared, $N are the asm operands."""
    temps = sorted({op.dst for op in program if not op.dst.startswith("$")})
    suffix = {"and": "b32", "or": "b32", "xor": "b32", "shl": "b32", "shr": "u32", "mad": "lo.u32", "prmt": "b32"}
    lines = [f"{op.name}.{suffix[op.name]} {op.dst}, {', '.join(_ptx_operand(s) for s in op.srcs)};" for op in program]
    return "{\n.reg .b32 " + ", ".join(temps) + ";\n" + "\n".join(lines) + "\n}"


def _prmt(a: np.ndarray, b: np.ndarray, selector: np.ndarray) -> np.ndarray:
    """PTX prmt.b32 in its default mode, for selectors whose nibbles are 0..7 (no sign replication)."""
    pool = (b.astype(np.uint64) << 32) | a.astype(np.uint64)
    out = np.zeros_like(a, dtype=np.uint64)
    for j in range(4):
        index = (selector >> (4 * j)) & 7
        out |= ((pool >> (8 * index.astype(np.uint64))) & 0xFF) << (8 * j)
    return out.astype(np.uint32)


def run(program: list[Op], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Evaluates a program on uint32 arrays: the registers after it, $N included."""
    regs = {k: np.asarray(v, dtype=np.uint32) for k, v in inputs.items()}

    def value(src):
        return np.uint32(src & MASK) if isinstance(src, int) else regs[src]

    for op in program:
        a, *rest = (value(s) for s in op.srcs)
        with np.errstate(over="ignore"):
            if op.name == "and":
                r = a & rest[0]
            elif op.name == "or":
                r = a | rest[0]
            elif op.name == "xor":
                r = a ^ rest[0]
            elif op.name == "shl":
                r = (a.astype(np.uint64) << np.uint64(rest[0])) & MASK
            elif op.name == "shr":
                r = a >> rest[0]
            elif op.name == "mad":
                r = (a.astype(np.uint64) * np.uint64(rest[0]) + rest[1].astype(np.uint64)) & MASK
            elif op.name == "prmt":
                r = _prmt(*np.broadcast_arrays(a, rest[0], rest[1]))
            else:
                raise ValueError(f"unknown op {op.name}")
        regs[op.dst] = np.asarray(r, dtype=np.uint32)
    return regs


def _int4_half(out: str, nibbles: str, factor_byte: str, tag: str) -> list[Op]:
    """q * f per byte: u = q + 8 (offset binary), u f + 128 - 8 f stays in 0..240 (no carry
    between bytes), then xor 0x80 subtracts the 128 again, as two's complement bytes."""
    f, c, x = f"rf{tag}", f"rc{tag}", f"rx{tag}"
    return [Op("and", f, (factor_byte, 0xFF)),
            Op("mad", c, (f, -0x08080808, 0x80808080)),
            Op("and", x, (nibbles, 0x0F0F0F0F)),
            Op("mad", x, (x, f, c)),
            Op("xor", out, (x, 0x80808080))]


INT4_TIMES_FACTOR = [Op("xor", "ru", ("$2", 0x88888888)),
                     *_int4_half("$0", "ru", "$3", "l"),
                     Op("shr", "rh", ("ru", 4)),
                     *_int4_half("$1", "rh", "$4", "h")]


def _fp4_half(out: str, codes: str, offset_byte: str, sign: str, table: tuple[int, int], tag: str) -> list[Op]:
    """E4M3 bytes of four FP4 codes (magnitude index in bits 0-2 of each byte of `codes`): the
    index bytes are packed into prmt's selector nibbles, which look the bytes up in the table at
    the smallest exponent plus 8 per exponent step (index 0 stays 0), then the sign is set."""
    low, high = table
    e, tl_, th, i, y, s, m = (f"r{n}{tag}" for n in ("e", "tl", "th", "i", "y", "s", "m"))
    return [Op("and", e, (offset_byte, 0xFF)),
            Op("mad", tl_, (e, 0x08080800, low)),
            Op("mad", th, (e, 0x08080808, high)),
            Op("and", i, (codes, 0x07070707)),
            Op("prmt", y, (i, i, 0x3120)),
            Op("shr", s, (y, 12)),
            Op("or", s, (s, y)),
            Op("prmt", m, (tl_, th, s)),
            Op("or", out, (m, sign))]


def fp4_to_e4m3(table: tuple[int, int]) -> list[Op]:
    """The program for an FP4 format whose E4M3 table at the smallest exponent is `table`
    (bytes 0-3, bytes 4-7)."""
    return [Op("and", "rgl", ("$2", 0x08080808)),
            Op("shl", "rgl", ("rgl", 4)),
            *_fp4_half("$0", "$2", "$3", "rgl", table, "l"),
            Op("shr", "rc", ("$2", 4)),
            Op("and", "rgh", ("$2", 0x80808080)),
            *_fp4_half("$1", "rc", "$4", "rgh", table, "h")]

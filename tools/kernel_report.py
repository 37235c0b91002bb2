"""Static performance report of the project's GPU kernels, read from their compiled machine code.

    python tools/kernel_report.py                          # every variant, every arch it is built for
    python tools/kernel_report.py --arch 90 --out kernels.md

Compiles each variant of exporter/kernels/variants.py ahead of time (no GPU needed) and prints a
markdown table, one row per (variant, arch); exporter/kernels/sass.py explains what is counted.
Counts are per iteration of the MMA loop (static: both sides of a branch inside the loop count);
a kernel without one (the quantize family) is counted whole. "int/MMA" is per-thread integer ALU
instructions (not the warp-uniform U* ones) per tensor-core instruction, both issued per warp; an
sm_90 m64n128k32 warpgroup MMA does 16× the work per warp of an sm_80 m16n8k32 IMMA, so compare it
within an arch. "smem" is Triton's dynamic shared memory plus the cubin's static.

Exit code 1 when a declared 8-bit variant (family int8/fp8) is not a pure 8-bit MMA K loop, an fp16
variant's loop has no HMMA/HGMMA, a variant spills registers, or a variant does not compile;
2 when the variants cannot be imported.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporter.kernels.sass import KernelSummary, pure_8bit_problems, summarize  # noqa: E402

EIGHT_BIT_FAMILIES = ("int8", "fp8")
FP16_MMA = ("HMMA", "HGMMA")
COLUMNS = ("variant", "sm", "regs", "spills st/ld B", "smem dyn+static B", "MMA / iter", "global / iter", "shared / iter",
           "float cvt", "float math", "int/MMA", "instrs / iter", "verdict")


@dataclass
class Row:
    cells: list[str]
    failure: str | None  # why this row fails the report; None when it passes


def report(variants, archs: list[int] | None = None) -> list[Row]:
    """One row per (variant, arch), for the archs each variant is built for (those in `archs` if given)."""
    rows = []
    for variant in variants:
        for arch in variant.archs:
            if archs is None or arch in archs:
                rows.append(variant_row(variant, arch))
    return rows


def variant_row(variant, arch: int) -> Row:
    try:
        compiled = variant.compile(arch)
    except Exception as error:  # a variant that does not compile is a row of the report, not its end
        last_line = (str(error).strip().splitlines() or [""])[-1]
        reason = f"compile failed: {type(error).__name__}: {last_line[:200]}"
        return Row([variant.name, str(arch)] + [""] * (len(COLUMNS) - 3) + [reason], reason)
    kernels = summarize(compiled.asm["cubin"])
    kernel = kernels.get(compiled.metadata.name) or next(iter(kernels.values()))
    return kernel_row(variant.name, variant.family, kernel, compiled.metadata.shared)


def kernel_row(name: str, family: str, kernel: KernelSummary, dynamic_shared_bytes: int) -> Row:
    verdict, failure = _verdict(family, kernel)
    if kernel.spills:
        failure = "; ".join(filter(None, [failure, "spills registers"]))
    loop = kernel.mma_loop
    counts = loop.counts if loop else kernel.function_counts
    if loop:
        mma = _listing(counts.keys("mma"))
    else:
        outside = kernel.function_counts.keys("mma")
        mma = f"no MMA loop ({_listing(outside)} outside loops)" if outside else "no MMA"
    shared = f"{dynamic_shared_bytes}+{kernel.static_shared_bytes}" if kernel.static_shared_bytes else \
        str(dynamic_shared_bytes)
    cells = [
        name, str(kernel.arch), str(kernel.registers),
        f"{kernel.spill_store_bytes}/{kernel.spill_load_bytes}" if kernel.spills else "0",
        shared, mma,
        _listing(counts.keys("global_load") + counts.keys("async_copy") + counts.keys("global_store")),
        _listing(counts.keys("shared_load") + counts.keys("shared_store")),
        _listing(counts.keys("float_convert")),
        _listing(counts.keys("float_math")),
        f"{loop.ints_per_mma:.1f}" if loop else "—",
        f"{counts.total}" if loop else f"{counts.total} (whole kernel)",
        verdict,
    ]
    return Row(cells, failure)


def _verdict(family: str, kernel: KernelSummary) -> tuple[str, str | None]:
    """(verdict shown in the table, failure or None)."""
    if family in EIGHT_BIT_FAMILIES:
        problems = pure_8bit_problems(kernel)
        return ("pure 8-bit MMA", None) if not problems else (f"not pure: {'; '.join(problems)}", "not pure 8-bit")
    if family == "fp16":
        mmas = kernel.mma_loop.counts.keys("mma") if kernel.mma_loop else Counter()
        if any(op.split(".")[0] in FP16_MMA for op in mmas):
            return "FP16 MMA", None
        return "no HMMA/HGMMA in a loop", "fp16 variant without FP16 MMA"
    if family == "quantize":
        return "no MMA (quantize)", None
    raise ValueError(f"unknown kernel family {family!r}")


def _listing(counter: Counter) -> str:
    return ", ".join(f"{n}×{key}" for key, n in counter.most_common()) or "—"


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row.cells) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def load_variants() -> list:
    from exporter.kernels.variants import VARIANTS

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise ImportError("with TRITON_INTERPRET set the kernels are defined for Triton's interpreter and cannot be "
                          "compiled: run without it")
    return VARIANTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", help="only these archs (e.g. 90 80 89); default: each "
                                                            "variant's own")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    try:
        variants = load_variants()
    except ImportError as error:
        print(f"kernel_report: cannot import the kernel variants (exporter/kernels/variants.py): {error}",
              file=sys.stderr)
        return 2
    rows = report(variants, args.arch)
    table = markdown(rows)
    print(table, end="")
    if args.out:
        args.out.write_text("# Kernel report\n\nFrom `python tools/kernel_report.py`.\n\n" + table)
    failures = [f"{row.cells[0]} sm_{row.cells[1]}: {row.failure}" for row in rows if row.failure]
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

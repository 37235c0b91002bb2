"""Static performance summary of compiled GPU kernels, read from their machine code (SASS); no GPU.

    kernels = summarize(cubin)               # {kernel name: KernelSummary}
    k = kernels["gemm"]
    k.registers, k.spill_store_bytes, k.static_shared_bytes
    k.mma_loop.counts.keys("mma")            # Counter({"IGMMA.64x128x32.S8.S8": 2}) per iteration
    k.mma_loop.ints_per_mma, pure_8bit_problems(k)   # [] when the K loop is pure 8-bit MMA
    k.function_counts                        # the whole function

Disassembly comes from `nvdisasm -json`, bundled with Triton (triton/backends/nvidia/bin). It is
preferred to `cuobjdump -sass` because it gives one record per instruction (opcode with its
modifiers, operands, predicate), so nothing depends on the text listing's columns, its interleaved
encoding comments or its label syntax. Instructions are 16 bytes from sm_70 on, so an
instruction's byte offset is 16 × its index and branch targets (hex byte offsets) map to indices
exactly. Internal subroutines (ptxas's division slow path, reached by CALL) are left out: the JSON
lists them as functions of their own or not at all, and they are not counted in the kernel.

Resources come from `cuobjdump -res-usage` on the same cubin (registers, stack frame, static
shared memory): what the cubin holds, not a second ptxas run whose version or options could differ
from Triton's. Spills are the local-memory instructions (STL/LDL: Triton kernels use local memory
only to spill) summed by access width, which matches ptxas -v's "bytes spill stores/loads".

A loop is a backward branch whose target dominates it (a natural loop: out-of-line wait stubs that
jump back into the middle of a loop are not loops), merged per target; its body, counted as one
iteration, is the address range [target, branch]. The MMA loop is, among the loops holding
tensor-core instructions that hold no such loop inside, the one with the most of them.

Instruction categories, by opcode (the text before the first dot) unless said otherwise:

    mma             *MMA: HMMA IMMA QMMA (warp), HGMMA IGMMA QGMMA WGMMA (warpgroup)
    global_load     LDG                         global_store   STG UTMASTG
    async_copy      LDGSTS UTMALDG UBLKCP       local          LDL STL (spills)
    shared_load     LDS LDSM                    shared_store   STS STSM
    barrier         BAR SYNCS ARRIVES DEPBAR LDGDEPBAR WARPGROUP MEMBAR FENCE WARPSYNC ERRBAR
    float_convert   F2F F2I I2F F2FP I2FP FRND HADD2.F32, except the integer-division idiom
    float_math      FFMA FMUL FADD HFMA2 HMUL2 HADD2 FMNMX MUFU DFMA ... (HFMA2.MMA -RZ, RZ is a move)
    int_alu         IMAD IADD3 VIADD LOP3 SHF PRMT IMNMX SEL LEA ISETP ... and I2F.*.RP,
                    F2I.FTZ.U32.TRUNC (the reciprocal steps ptxas emits for an integer division)
    uniform         any other U* (the warp-uniform datapath)
    other           the rest (MOV, S2R, BRA, ...)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

EIGHT_BIT_TYPES = {"S8", "U8", "E4M3", "E5M2"}
FLOAT_MULTIPLIES = {"FFMA", "FMUL", "FFMA2", "FMUL2", "HFMA2", "HMUL2", "DFMA", "DMUL"}

_OPCODES = {
    "global_load": {"LDG"},
    "global_store": {"STG", "UTMASTG"},
    "async_copy": {"LDGSTS", "UTMALDG", "UBLKCP"},
    "local": {"LDL", "STL"},
    "shared_load": {"LDS", "LDSM"},
    "shared_store": {"STS", "STSM"},
    "barrier": {"BAR", "SYNCS", "ARRIVES", "DEPBAR", "LDGDEPBAR", "WARPGROUP", "MEMBAR", "FENCE", "WARPSYNC",
                "ERRBAR"},
    "float_convert": {"F2F", "F2I", "I2F", "F2FP", "I2FP", "FRND"},
    "float_math": {"FFMA", "FMUL", "FADD", "FFMA2", "FMUL2", "FADD2", "FMNMX", "FSEL", "FSET", "FSETP", "MUFU",
                   "FCHK", "FSWZADD", "HFMA2", "HMUL2", "HADD2", "HMNMX2", "HSET2", "HSETP2", "DFMA", "DMUL",
                   "DADD", "DSETP"},
    "int_alu": {"IMAD", "IADD3", "IADD", "VIADD", "VIADDMNMX", "LOP3", "LOP", "SHF", "SHL", "SHR", "PRMT", "IMNMX",
                "VIMNMX", "SEL", "LEA", "ISETP", "IABS", "POPC", "FLO", "BMSK", "SGXT", "BREV", "IDP", "IMUL",
                "I2I", "I2IP", "ISCADD", "BFE", "BFI"},
}
_CATEGORY_OF_BASE = {base: category for category, bases in _OPCODES.items() for base in bases}
_KEYED_BY_WIDTH = {"LDG", "STG", "LDGSTS", "LDL", "STL", "LDS", "STS", "LDSM", "STSM"}
_ENDS_FALLTHROUGH = {"BRA", "JMP", "BRX", "JMX", "EXIT", "RET", "KILL"}
_BRANCHES = {"BRA", "JMP", "CALL"}


@dataclass(frozen=True)
class Instruction:
    opcode: str  # with modifiers: "IGMMA.64x128x32.S8.S8"
    operands: str = ""
    predicate: str = ""  # "@!P0"; empty when always executed

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]

    @property
    def modifiers(self) -> list[str]:
        return self.opcode.split(".")[1:]

    @property
    def conditional(self) -> bool:
        return self.predicate not in ("", "@PT")

    def branch_target(self) -> int | None:
        """The byte offset a BRA/JMP/CALL goes to; None for anything else or an indirect jump."""
        if self.base not in _BRANCHES:
            return None
        literals = [token for token in self.operands.replace(" ", "").split(",") if re.fullmatch(r"0x[0-9a-f]+", token)]
        return int(literals[-1], 16) if literals else None


def category(instruction: Instruction) -> str:
    """The instruction's category (see the module docstring's table)."""
    opcode, base, modifiers = instruction.opcode, instruction.base, instruction.modifiers
    if base.endswith("MMA"):
        return "mma"
    if base == "HFMA2" and instruction.operands.replace(" ", "").split(",")[1:3] in (["-RZ", "RZ"], ["RZ", "RZ"]):
        return "other"  # ptxas's move of a constant: -0 * 0 + c
    if opcode.startswith("HADD2.F32"):
        return "float_convert"
    if (base == "I2F" and "RP" in modifiers) or opcode.startswith("F2I.FTZ.U32.TRUNC"):
        return "int_alu"
    if base in _CATEGORY_OF_BASE:
        return _CATEGORY_OF_BASE[base]
    return "uniform" if base.startswith("U") else "other"


def access_bits(instruction: Instruction) -> int:
    """Bits per thread of a memory access, from its modifiers (.U8 .S16 .64 .128; none is 32)."""
    bits = {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "64": 64, "128": 128}
    modifiers = instruction.modifiers
    if instruction.base in ("LDSM", "STSM"):  # .1 / .2 / .4 matrices of 8x8 16-bit, one register each
        return 32 * int(modifiers[-1]) if modifiers and modifiers[-1] in ("1", "2", "4") else 32
    return next((bits[m] for m in modifiers if m in bits), 32)


def counting_key(instruction: Instruction) -> str:
    """How an instruction is tallied in its category: memory ops by base and width, the rest by opcode."""
    if instruction.base in _KEYED_BY_WIDTH:
        return f"{instruction.base}.{access_bits(instruction)}"
    return instruction.opcode


@dataclass
class Counts:
    """Instruction counts of a range of code: per category, and per counting key within a category."""

    total: int = 0
    per_category: Counter = field(default_factory=Counter)
    per_key: dict[str, Counter] = field(default_factory=dict)

    @classmethod
    def of(cls, instructions: list[Instruction]) -> Counts:
        counts = cls(total=len(instructions))
        for instruction in instructions:
            kind = category(instruction)
            counts.per_category[kind] += 1
            counts.per_key.setdefault(kind, Counter())[counting_key(instruction)] += 1
        return counts

    def count(self, category_name: str) -> int:
        return self.per_category[category_name]

    def keys(self, category_name: str) -> Counter:
        return self.per_key.get(category_name, Counter())


@dataclass
class Loop:
    start: int  # byte offset of the loop header (the back edge's target)
    end: int  # byte offset of the back edge
    counts: Counts

    @property
    def mma_count(self) -> int:
        return self.counts.count("mma")

    @property
    def ints_per_mma(self) -> float | None:
        return self.counts.count("int_alu") / self.mma_count if self.mma_count else None

    def contains(self, other: Loop) -> bool:
        return self is not other and self.start <= other.start and other.end <= self.end


@dataclass
class KernelSummary:
    name: str
    arch: int  # 90 for sm_90a
    registers: int
    stack_bytes: int
    static_shared_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int
    function_counts: Counts  # the whole function
    loops: list[Loop]
    mma_loop: Loop | None

    @property
    def spills(self) -> bool:
        return bool(self.spill_store_bytes or self.spill_load_bytes)


def is_warpgroup_mma(opcode: str) -> bool:
    base = opcode.split(".")[0]
    return base.endswith("GMMA") or base == "WGMMA"


def is_eight_bit_mma(opcode: str) -> bool:
    return bool(EIGHT_BIT_TYPES & set(opcode.split(".")[1:]))


def pure_8bit_problems(kernel: KernelSummary) -> list[str]:
    """Why the kernel's MMA loop is not a pure 8-bit MMA K loop; empty when it is.

    Pure: 8-bit tensor-core MMA (warpgroup IGMMA/QGMMA on sm_90, IMMA/QMMA on sm_80/89), no other
    MMA (HMMA beside 8-bit MMA is ptxas emulating it), no float conversion or float multiply.
    Integer work and float adds (Triton's FP8 accumulator promotion) are reported, not judged."""
    loop = kernel.mma_loop
    if loop is None:
        return ["no loop contains tensor-core instructions"]
    mmas = loop.counts.keys("mma")
    eight_bit = [op for op in mmas if is_eight_bit_mma(op)]
    problems = []
    if not eight_bit:
        problems.append(f"no 8-bit MMA in the loop, only {_listing(mmas)}")
    elif kernel.arch // 10 == 9 and not any(is_warpgroup_mma(op) for op in eight_bit):
        problems.append(f"warp-level {_listing(Counter({op: mmas[op] for op in eight_bit}))} on sm_{kernel.arch}, "
                        "no warpgroup MMA")
    others = Counter({op: n for op, n in mmas.items() if op not in eight_bit})
    if eight_bit and others:
        problems.append(f"{_listing(others)} beside the 8-bit MMA (emulation)")
    if loop.counts.count("float_convert"):
        problems.append(f"float conversions {_listing(loop.counts.keys('float_convert'))}")
    multiplies = Counter({op: n for op, n in loop.counts.keys("float_math").items()
                          if op.split(".")[0] in FLOAT_MULTIPLIES})
    if multiplies:
        problems.append(f"float multiplies {_listing(multiplies)}")
    return problems


def _listing(counter: Counter) -> str:
    return ", ".join(f"{n}×{key}" for key, n in counter.most_common())


def summarize(cubin: bytes) -> dict[str, KernelSummary]:
    """One KernelSummary per kernel (global function) of the cubin."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        listing = json.loads(_run_tool("nvdisasm", "-json", "-c", "-ndf", str(path)))
        resources = _resource_usage(_run_tool("cuobjdump", "-res-usage", str(path)))
    header, functions = listing
    arch = 10 * header["SM"]["version"]["major"] + header["SM"]["version"]["minor"]
    summaries = {}
    for function in functions:
        name = function["function-name"]
        instructions = [Instruction(record["opcode"], record.get("operands", ""), record.get("predicate", ""))
                        for record in function["sass-instructions"]]
        if 16 * len(instructions) > function["length"]:
            raise ValueError(f"{name}: {len(instructions)} instructions in {function['length']} bytes; "
                             "expected 16 bytes each (sm_70 and later)")
        if name not in resources:  # an internal subroutine, not a kernel
            continue
        summaries[name] = _summarize_function(name, arch, instructions, function["start"], resources[name])
    return summaries


def _summarize_function(name: str, arch: int, instructions: list[Instruction], start: int,
                        resources: dict[str, int]) -> KernelSummary:
    loops = find_loops(instructions, start)
    with_mma = [loop for loop in loops if loop.mma_count]
    innermost = [loop for loop in with_mma if not any(loop.contains(inner) for inner in with_mma)]
    mma_loop = max(innermost, key=lambda loop: (loop.mma_count, -(loop.end - loop.start)), default=None)
    spill_bytes = {base: sum(access_bits(i) // 8 for i in instructions if i.base == base) for base in ("STL", "LDL")}
    return KernelSummary(name=name, arch=arch, registers=resources["REG"], stack_bytes=resources["STACK"],
                         static_shared_bytes=resources["SHARED"],
                         spill_store_bytes=spill_bytes["STL"], spill_load_bytes=spill_bytes["LDL"],
                         function_counts=Counts.of(instructions), loops=loops, mma_loop=mma_loop)


def find_loops(instructions: list[Instruction], start: int = 0) -> list[Loop]:
    """Natural loops, one per header, in address order: backward branches whose target dominates them."""

    def index_of(offset: int | None) -> int | None:
        if offset is None or (offset - start) % 16:
            return None
        index = (offset - start) // 16
        return index if 0 <= index < len(instructions) else None

    successors: list[list[int]] = []
    for index, instruction in enumerate(instructions):
        following = [] if instruction.base in _ENDS_FALLTHROUGH and not instruction.conditional else [index + 1]
        target = index_of(instruction.branch_target())
        successors.append([i for i in following + ([target] if target is not None else []) if i < len(instructions)])

    def reachable(avoiding: int | None) -> set[int]:
        seen, frontier = {0}, [0]
        while frontier:
            for successor in successors[frontier.pop()]:
                if successor not in seen and successor != avoiding:
                    seen.add(successor)
                    frontier.append(successor)
        return seen

    from_entry = reachable(None)
    back_edge_end: dict[int, int] = {}
    for index, instruction in enumerate(instructions):
        header = index_of(instruction.branch_target())
        if header is None or header > index or instruction.base == "CALL" or index not in from_entry:
            continue
        if index not in reachable(avoiding=header):
            back_edge_end[header] = max(index, back_edge_end.get(header, index))
    return [Loop(start + 16 * header, start + 16 * end, Counts.of(instructions[header:end + 1]))
            for header, end in sorted(back_edge_end.items())]


def _resource_usage(text: str) -> dict[str, dict[str, int]]:
    """`cuobjdump -res-usage` → {function: {"REG": 127, "STACK": 0, "SHARED": 1024, ...}}."""
    usage = {}
    for name, fields in re.findall(r"Function (\S+):\s*\n\s*(.+)", text):
        usage[name] = {key: int(value) for key, value in re.findall(r"([A-Z]+(?:\[\d+\])?):(\d+)", fields)}
    return usage


def _run_tool(name: str, *args: str) -> str:
    result = subprocess.run([str(_tool_path(name)), *args], capture_output=True, text=True)
    if result.returncode != 0:
        hint = " (this nvdisasm may predate -json; Triton 3.9 bundles one that has it)" if "-json" in args else ""
        raise RuntimeError(f"{name} {' '.join(args[:-1])} failed{hint}: {result.stderr.strip()[-500:]}")
    return result.stdout


def _tool_path(name: str) -> Path:
    """Triton's bundled copy (triton/backends/nvidia/bin), else the one on PATH."""
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        if bundled.exists():
            return bundled
    except ImportError:
        pass
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install triton (it bundles {name}) or put the CUDA toolkit on PATH")
    return Path(found)

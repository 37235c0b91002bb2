"""Fidelity of quantized variants of the embedded model against its FP model, on the same seeds.

    python tools/fidelity_table.py                       # 1,000 samples, writes RESULTS.md's table
    python tools/fidelity_table.py -n 200 --no-write     # quicker look
    python tools/fidelity_table.py --rows 5,6,7,8,9      # re-measure some rows, keep the others
    python tools/fidelity_table.py --rows 10-16          # the VQ rows
    python tools/fidelity_table.py --rows 17-22          # W4A4 with and without DilateQuant
    python tools/fidelity_table.py --rows 23-24          # W4A8: searched group sizes vs uniform
    python tools/fidelity_table.py --rows 2,25           # W4A8: FP32 group scales vs deployable two-level
    python tools/fidelity_table.py --rows 6,26           # W4A4-FP4: FP32 group scales vs the deployable grid
    python tools/fidelity_table.py --rows 27-29          # deployable W4A4-FP4: activation groups, formats, dilation
    python tools/fidelity_table.py --rows 7,30,31        # W4A4-FP4 without Hadamard: which grid costs what
    python tools/fidelity_table.py --rows 17,32          # W4A4 DilateQuant: FP32 group scales vs deployable
    python tools/fidelity_table.py --rows 26,33          # deployable W4A4-FP4 with and without Hadamard groups


Each row is calibrated from scratch (its time is reported), then evaluated with
`dit-export eval`'s code on the same N seeds as the FP row. The FP row carries the noise floor:
the same model on seed+1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporter.models.loading import (
    default_sampler,  # noqa: E402
    load_dit,  # noqa: E402
)
from exporter.quant.checkpoint import loaded_from_checkpoint  # noqa: E402
from exporter.quant.methods.qdit_group_search import SearchOptions  # noqa: E402
from exporter.quant.recipes import PER_CHANNEL, Recipe, get_recipe  # noqa: E402
from exporter.quant.weight_configs import IntWeights  # noqa: E402
from exporter.stages.calibrate import CalibrationOptions, run_calibrate  # noqa: E402
from exporter.stages.evaluate import evaluate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "RESULTS.md"


def _weight_only_rtn(bits: int) -> Recipe:
    return Recipe(f"int{bits}-rtn", f"baseline: INT{bits} per-channel round-to-nearest weights, FP activations",
                  IntWeights(bits=bits, group_size=PER_CHANNEL, method="rtn"), None)


# A W4A4 recipe's first design: one symmetric scale per timestep for the whole token, min/max.
PER_TENSOR_SYMMETRIC = {"activation_symmetric": True, "activation_group_size": -1, "activation_clip_search": False}
SEARCH = "group_search"  # an override that is no recipe field: runs the search with these options

W4A8_G32 = "W4A8-g32 reference (g32 GPTQ + clip search W4, FP32 group scales, dynamic per-token A8)"

# (row label, precision or recipe, recipe overrides); rows 2, 3, 9, 23 and 24 were measured with
# `w4a8` before it took two-level scales: today's `w4a8-g32`; rows 6, 7 and 8 with `fp4` before it
# took power-of-two groups: today's `fp4-g32`; rows 17-22 name `w4a4-g32`, which was `w4a4` until
# `w4a4` took two-level scales (row 32); rows 27-31 were measured with `fp4` before it rotated its
# activation groups (row 33 is that `fp4`).
ROWS = [
    ("W8A8 (per-channel W8 RTN, static per-timestep A8)", "w8a8", {}),
    (W4A8_G32, "w4a8-g32", {}),
    ("W4A8 (g32 GPTQ + clip search W4, static per-timestep A8)", "w4a8-g32", {"activation_mode": "static"}),
    ("W4A8 naive baseline (per-channel W4 RTN, static per-tensor A8)", "w4a8-naive", {}),
    ("W4A8-FP4 (g32 GPTQ FP4 W, format per layer, dynamic per-token A8)", "w4a8-fp4", {}),
    ("W4A4-FP4 (g32 GPTQ FP4 W, format per layer, dynamic g32 E2M1 A4, Hadamard)", "fp4-g32", {}),
    ("W4A4-FP4 without the Hadamard rotation", "fp4-g32", {"hadamard": False}),
    ("W4A4-FP4 with E2M1 everywhere (no per-layer format choice)", "fp4-g32", {"weight_format": "e2m1"}),
    ("W4A4 INT4 RTN baseline (g32 RTN W4, dynamic g32 INT4 A4)", "w4a8-g32",
     {"weight_method": "rtn", "weight_clip_search": False, "activation_bits": 4, "activation_group_size": 32}),
    ("vq3 (VQ4DiT: 64 x 2 codebooks per layer, calibrated block by block; FP activations)", "vq3", {}),
    ("vq2 (VQ4DiT: 256 x 4 codebooks per layer, calibrated block by block; FP activations)", "vq2", {}),
    ("vq3 with plain k-means codebooks (no VQ4DiT calibration)", "vq3", {"weight_method": "kmeans"}),
    ("vq2 with plain k-means codebooks (no VQ4DiT calibration)", "vq2", {"weight_method": "kmeans"}),
    ("INT3 RTN baseline (per-channel W3, FP activations)", _weight_only_rtn(3), {}),
    ("INT2 RTN baseline (per-channel W2, FP activations)", _weight_only_rtn(2), {}),
    ("vq2-a8 (vq2 weights, dynamic per-token INT8 activations)", "vq2-a8", {}),
    ("W4A4 DilateQuant (dilation, g32 GPTQ W4, asymmetric static INT4 A4 per timestep and 32 channels, "
     "clipped, distilled per block)", "w4a4-g32", {}),
    ("W4A4 without DilateQuant (the same static A4 grid and clip search; no dilation, no distillation)", "w4a4-g32",
     {"dilation": False, "kd_iterations": 0}),
    ("W4A4 with weight dilation only", "w4a4-g32", {"kd_iterations": 0}),
    ("W4A4 with distilled scales only", "w4a4-g32", {"dilation": False}),
    ("W4A4 DilateQuant with symmetric static INT4 A4, one scale per timestep (first design)", "w4a4-g32",
     PER_TENSOR_SYMMETRIC),
    ("W4A4 symmetric static INT4 A4, one scale per timestep, without DilateQuant", "w4a4-g32",
     {**PER_TENSOR_SYMMETRIC, "dilation": False, "kd_iterations": 0}),
    ("W4A8 with searched per-layer group sizes (budget: mean group >= 64; 6 epochs x 12)", "w4a8-g32",
     {SEARCH: SearchOptions(budget=64.0)}),
    ("W4A8 with the best uniform group size within the same budget (the search's seed: 0 epochs)", "w4a8-g32",
     {SEARCH: SearchOptions(budget=64.0, epochs=0)}),
    ("W4A8 deployable (g32 GPTQ + clip search W4, two-level scales: FP32 per row x integer 1..16 per group; "
     "dynamic per-token A8)", "w4a8", {}),
    ("W4A4-FP4 deployable (g32 GPTQ FP4 W on power-of-two groups, format per layer; dynamic E2M1 A4 on fine groups: "
     "FP32 per token x m 2^t, m 1, 1.25 or 1.5, per 32 channels, each group Hadamard-rotated first)", "fp4", {}),
    ("W4A4-FP4 deployable grid with fine activation groups of 16 channels (no Hadamard)", "fp4",
     {"activation_group_size": 16, "hadamard": False}),
    ("W4A4-FP4 deployable grid with E2M1 weights everywhere (no per-layer format choice; no Hadamard)", "fp4",
     {"weight_format": "e2m1", "hadamard": False}),
    ("W4A4-FP4 deployable grid with DilateQuant's weight dilation (folded into adaLN and to_v; no Hadamard)", "fp4",
     {"dilation": True, "hadamard": False}),
    ("W4A4-FP4 with power-of-two weight groups only (FP32 activation scales per 32 channels, no Hadamard)", "fp4",
     {"activation_scales": "float", "hadamard": False}),
    ("W4A4-FP4 with fine activation groups only (FP32 weight group scales, no Hadamard)", "fp4",
     {"weight_scales": "float", "hadamard": False}),
    ("W4A4 DilateQuant deployable (two-level scales for W4 and for the static A4 groups: a float per row or "
     "timestep bucket x an integer per group; INT8 operands)", "w4a4", {}),
    ("W4A4-FP4 deployable without the Hadamard rotation of each activation group", "fp4", {"hadamard": False}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trajectories", type=int, default=32)
    parser.add_argument("--rows", default="all",
                        help="row numbers (1-based), comma-separated, ranges as 10-15; or 'all'")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md as it is")
    args = parser.parse_args()

    loaded = load_dit()
    sampler = default_sampler(loaded)
    work = Path(tempfile.mkdtemp(prefix="fidelity-"))
    fp = evaluate(loaded, work, args.samples, args.seed, sampler, noise_floor=True, label="fp")
    nf = fp["noise_floor"]
    lines = [
        "| configuration | Fréchet distance to real digits | ratio to FP | accuracy | Δ accuracy (points) "
        "| Fréchet distance to FP samples | PSNR vs FP samples (dB) | calibration (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| FP32 | {fp['frechet_distance']:.3f} | 1.000 | {fp['accuracy']:.3f} | — | 0 | ∞ | — |",
        f"| FP32, seed {nf['seed']} (noise floor) | {nf['frechet_distance']:.3f} | {nf['distance_ratio']:.3f} | "
        f"{nf['accuracy']:.3f} | {100 * (nf['accuracy'] - fp['accuracy']):+.1f} | "
        f"{nf['distance_between_seeds']:.3f} (other seeds) | — | — |",
    ]
    rows = ROWS if args.rows == "all" else [ROWS[i - 1] for i in row_numbers(args.rows)]
    results = {"fp": fp, "rows": []}
    for label, precision, overrides in rows:
        fields = {k: v for k, v in overrides.items() if k != SEARCH}
        recipe = (get_recipe(precision) if isinstance(precision, str) else precision).with_overrides(**fields)
        out = work / re.sub(r"\W+", "-", label)[:40]
        started = time.monotonic()
        options = CalibrationOptions(trajectories=args.trajectories, group_search=overrides.get(SEARCH))
        run_calibrate(loaded, recipe, sampler, options, out)
        seconds = time.monotonic() - started
        quantized, _ = loaded_from_checkpoint(out / "quantized", loaded)
        q = evaluate(quantized, out, args.samples, args.seed, sampler, noise_floor=False, label=recipe.name,
                     reference_samples=work / fp["samples_file"])
        ratio = q["frechet_distance"] / fp["frechet_distance"]
        lines.append(f"| {label} | {q['frechet_distance']:.3f} | {ratio:.3f} | {q['accuracy']:.3f} | "
                     f"{100 * (q['accuracy'] - fp['accuracy']):+.1f} | {q['frechet_distance_to_reference']:.3f} | "
                     f"{q['psnr_to_reference_db']:.1f} | {seconds:.0f} |")
        results["rows"].append({"label": label, "precision": recipe.name,
                                "overrides": {k: str(v) for k, v in overrides.items()},
                                "calibration_seconds": round(seconds, 1), "ratio": ratio, **q})
        print(lines[-1], flush=True)
        if not args.no_write:
            write_table(lines)  # after every row: a long run keeps what it measured
    table = "\n".join(lines)
    print(table)
    (work / "fidelity_table.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"details and sample grids: {work}")


TABLE = re.compile(r"<!-- quantization-table -->\n(.*?)\n<!-- /quantization-table -->", re.S)


def write_table(lines: list[str]) -> None:
    """Replace the measured rows in RESULTS.md's table; rows not measured this time stay as they were."""
    text = RESULTS.read_text()
    match = TABLE.search(text)
    kept = {row_label(line): line for line in match.group(1).splitlines()[4:]} if match else {}
    kept.update({row_label(line): line for line in lines[4:]})
    order = [label for label, _, _ in ROWS]
    order += [label for label in kept if label not in order]  # rows this version no longer measures
    rows = [kept[label] for label in order if label in kept]
    block = "<!-- quantization-table -->\n" + "\n".join(lines[:4] + rows) + "\n<!-- /quantization-table -->"
    RESULTS.write_text(TABLE.sub(lambda _: block, text) if match else text + "\n" + block + "\n")


def row_numbers(spec: str) -> list[int]:
    """'5,7-9' -> [5, 7, 8, 9]."""
    numbers: list[int] = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        numbers += range(int(first), int(last or first) + 1)
    return numbers


def row_label(line: str) -> str:
    return line.split("|")[1].strip()


if __name__ == "__main__":
    main()

"""Squared error of the FP4 activation grids on a model's own activations, layer by layer.

    python tools/fp4_grid_error.py                   # the embedded model, 64 calibration inputs
    python tools/fp4_grid_error.py --inputs 256 --model PATH

Runs the FP model on calibration inputs, takes each block Linear's input and quantizes it to E2M1
in groups of 32 channels three ways: FP32 group scales (max|x| / 6, `fp4-g32` without rotation),
fine groups (`fp4`, exporter/numerics/fp4_fine_groups.py) and power-of-two groups
(exporter/numerics/fp4_groups.py). Prints each grid's relative squared error ||q(x) - x||^2 / ||x||^2
and the two deployable grids' ratios to the FP32 one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporter.models.loading import (
    default_sampler,  # noqa: E402
    load_dit,  # noqa: E402
)
from exporter.numerics import fp4_fine_groups, fp4_groups  # noqa: E402
from exporter.quant.calibration import collect_calibration_set  # noqa: E402

GROUP = 32
E2M1 = fp4_fine_groups.FORMAT


def grid_errors(x: torch.Tensor) -> dict[str, float]:
    """Relative squared error of each grid on rows x [R, K]."""
    r, k = x.shape
    groups = x.reshape(r, k // GROUP, GROUP)
    scale = (groups.abs().amax(-1, keepdim=True) / E2M1.qmax).clamp_min(fp4_groups.TINY)
    quantized = {
        "float": (E2M1.round(groups / scale) * scale).reshape(r, k),
        "fine": fp4_fine_groups.dequantize(*fp4_fine_groups.quantize(x, GROUP)),
        "pow2": fp4_groups.dequantize(*fp4_groups.quantize(x, GROUP, E2M1.kind), E2M1.kind),
    }
    return {name: float((q - x).pow(2).sum() / x.pow(2).sum()) for name, q in quantized.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a DiT folder or Hub id (default: the embedded model)")
    parser.add_argument("--inputs", type=int, default=64, help="calibration inputs to run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    loaded = load_dit(args.model)
    calib = collect_calibration_set(loaded, default_sampler(loaded), trajectories=2, seed=args.seed, progress=False)
    pick = torch.randperm(len(calib.x), generator=torch.Generator().manual_seed(args.seed))[:args.inputs]
    inputs: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: inputs.setdefault(n, []).append(i[0].detach()))
             for n, m in loaded.transformer.named_modules()
             if isinstance(m, torch.nn.Linear) and "transformer_blocks" in n]
    with torch.no_grad():
        loaded.transformer(calib.x[pick], timestep=calib.t[pick], class_labels=calib.y[pick])
    for h in hooks:
        h.remove()
    print("| layer | FP32 groups | fine / FP32 | power-of-two / FP32 |\n| --- | ---: | ---: | ---: |")
    for name, xs in inputs.items():
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in xs]).float()
        if x.shape[1] % GROUP:
            continue
        e = grid_errors(x)
        print(f"| {name} | {e['float']:.4f} | {e['fine'] / e['float']:.2f} | {e['pow2'] / e['float']:.2f} |")


if __name__ == "__main__":
    main()

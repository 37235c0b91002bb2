"""Export a DiT-XL/2-sized model (random weights) at W4A8 on this machine: time, peak memory and
file sizes of the FP and QDQ ONNX graphs.

    python tools/bench_export_xl.py                    # W4A8 recipe with RTN weights, g32
    python tools/bench_export_xl.py --group-size 128

DiT-XL/2 geometry: 28 blocks, hidden 1152, 16 heads, 4x32x32 latents, patch 2, learned sigma,
1,000 classes. As in checkpoints converted from the original DiT, every block's timestep and
class embedders hold the same weights (the exporter stores such repeats once). Weights are
rounded to nearest rather than by GPTQ, and calibration uses 8 random inputs at two timesteps:
this measures export at scale, not quality. Peak memory is the process's maximum resident set.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporter.models.sampling import SamplerConfig  # noqa: E402
from exporter.onnx.files import write_onnx  # noqa: E402
from exporter.quant.calibration import CalibrationSet  # noqa: E402
from exporter.quant.quantize import quantize_model  # noqa: E402
from exporter.quant.recipes import get_recipe  # noqa: E402
from exporter.stages.export import fp_onnx, qdq_onnx  # noqa: E402

XL = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
          sample_size=32, patch_size=2, num_embeds_ada_norm=1000)


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def size(path: Path) -> int:
    data = path.parent / f"{path.name}.data"
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="keep the files here (default: a temp folder)")
    args = parser.parse_args()
    from diffusers import DiTTransformer2DModel

    out = args.out or Path(tempfile.mkdtemp(prefix="xl-export-"))
    rows = []
    started = time.monotonic()
    torch.manual_seed(0)
    model = DiTTransformer2DModel(**XL).eval().requires_grad_(False)
    for block in model.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(model.transformer_blocks[0].norm1.emb.state_dict())
    params = sum(p.numel() for p in model.parameters())
    rows.append(("build model", time.monotonic() - started))

    started = time.monotonic()
    gen = torch.Generator().manual_seed(0)
    calib = CalibrationSet(torch.randn(8, 4, 32, 32, generator=gen), torch.tensor([999] * 4 + [500] * 4),
                           torch.tensor([1, 2, 3, 1000] * 2), SamplerConfig(steps=2))
    recipe = get_recipe("w4a8-g32").with_overrides(weight_method="rtn", weight_clip_search=False,
                                                   weight_group_size=args.group_size)
    qdit = quantize_model(model, recipe, calib, 1000)
    rows.append(("quantize (RTN, 8 inputs)", time.monotonic() - started))

    started = time.monotonic()
    fp_path = write_onnx(fp_onnx(model), out / "fp.onnx")
    rows.append(("export FP ONNX", time.monotonic() - started))
    started = time.monotonic()
    qdq_path = write_onnx(qdq_onnx(qdit), out / "w4a8.qdq.onnx")
    rows.append(("export QDQ ONNX", time.monotonic() - started))

    fp16_bytes = 2 * params
    print(f"DiT-XL/2 geometry: {params / 1e6:.1f} M parameters, W4A8 weights g{args.group_size} RTN")
    for name, seconds in rows:
        print(f"  {name:28s} {seconds:7.1f} s")
    for label, path in (("FP ONNX", fp_path), ("QDQ ONNX", qdq_path)):
        external = (path.parent / f"{path.name}.data").exists()
        print(f"  {label:9s} {size(path) / 2**20:8.1f} MiB ({size(path) / fp16_bytes:.3f} x FP16 weights "
              f"{fp16_bytes / 2**20:.0f} MiB), external data: {'yes' if external else 'no'}")
    print(f"  peak resident memory {peak_gib():.1f} GiB; files in {out}")


if __name__ == "__main__":
    main()

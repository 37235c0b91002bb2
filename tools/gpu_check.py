"""The GPU check: everything about the kernels that needs a GPU, in one command that fits in
8 minutes on an H100/H200 and needs no TensorRT.

    python tools/gpu_check.py [--out out/gpu_check] [--skip tests,gemm,forward,sampling,calibration]

1. builds every kernel variant ahead of time (exporter/kernels/aot.py);
2. runs the kernel tests on the GPU (Triton just in time, CUDA tensors);
3. times each GEMM family against cuBLAS FP16 (torch.matmul) and FP8 (torch._scaled_mm) at
   DiT-XL/2's layer shapes, M from 256 to 8192: CUDA events, warm-up, the median of repeats,
   ratios to both baselines measured in the same run, achieved TFLOP/s;
4. times a DiT-XL/2-geometry transformer forward (random weights, FP16) at batch 2 and 8 with its
   Linears on the kernels (two-level W4 weights, dynamic per-token A8; adaLN weight-only)
   against the FP16 forward;
5. samples the embedded model with its W4A8 Linears on the kernels and compares the samples with
   the simulated model's from the same seeds;
6. quantizes the same calibration data on the CPU and on the GPU (w4a8, w4a4, vq2) and compares
   the results, then calibrates w4a8 as `dit-export calibrate --device cuda` does.

Writes gpu_check.md and gpu_check.json under --out; prints progress as it goes. A section that
fails is recorded with its error and the others still run; the exit code is 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

# DiT-XL/2's GEMMs (K, N): qkv, attention out, fc1, fc2
SHAPES = [(1152, 3456), (1152, 1152), (1152, 4608), (4608, 1152)]
ROWS = [256, 512, 1024, 2048, 4096, 8192]
SECTIONS = ("aot", "tests", "gemm", "forward", "sampling", "calibration")


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def median_ms(fn, warmup: int = 5, repeats: int = 30) -> float:
    """Median time of fn() in milliseconds, each call timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def environment() -> dict:
    import triton

    props = torch.cuda.get_device_properties(0)
    return {"gpu": props.name, "compute_capability": f"{props.major}.{props.minor}", "sms": props.multi_processor_count,
            "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "date": time.strftime("%Y-%m-%d")}


def section_aot(out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "exporter.kernels.aot", "--out", str(out / "kernels")], cwd=ROOT,
                         env=env, capture_output=True, text=True)
    manifest = out / "kernels" / "kernels.json"
    count = len(json.loads(manifest.read_text())["kernels"]) if run.returncode == 0 else 0
    return {"ok": run.returncode == 0, "cubins": count, "seconds": round(time.monotonic() - started, 1),
            "tail": (run.stdout + run.stderr)[-2000:] if run.returncode else ""}


def section_tests() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    tests = ["tests/kernels/test_triton_kernels.py", "tests/kernels/test_kernel_linear.py", "tests/kernels/test_swar.py"]
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    summary = (run.stdout.strip().splitlines() or [""])[-1]
    return {"ok": run.returncode == 0, "summary": summary, "seconds": round(time.monotonic() - started, 1),
            "tail": run.stdout[-4000:] if run.returncode else ""}


def _gemm_candidates(m: int, k: int, n: int, fp8: bool):
    """(name, callable, operand check) for each kernel at this shape, with random operands."""
    from exporter.kernels.activation_quant import quantize_rows
    from exporter.kernels.fp8_gemm import Fp8Weights, fp8_gemm
    from exporter.kernels.int8_gemm import Int8Weights, int8_gemm
    from exporter.kernels.vq_gemm import VqWeights, vq_gemm
    from exporter.numerics import fp4_groups, two_level_activations

    dev = "cuda"
    x = torch.randn(m, k, device=dev, dtype=torch.float16)
    a_codes = torch.randint(-127, 128, (m, k), device=dev, dtype=torch.int8)
    a_scale = torch.rand(m, device=dev) * 1e-2
    w8 = Int8Weights(torch.randint(-127, 128, (n, k), device=dev, dtype=torch.int8), torch.rand(n, device=dev) * 1e-2)
    q = torch.randint(-8, 8, (n, k), dtype=torch.int8)
    w4 = Int8Weights.four_bit_from_codes(q, torch.randint(1, 17, (n, k // 32), dtype=torch.uint8),
                                         torch.rand(n) * 1e-3, 32)
    w4 = Int8Weights(w4.codes.to(dev), w4.w_scale.to(dev), w4.factor.to(dev), 32)
    raw = torch.exp(torch.randn(1, k // 32)) * 1e-2  # one timestep bucket of static UINT4 group scales
    s4, groups = two_level_activations.kernel_tables(two_level_activations.project(raw),
                                                     torch.randint(0, 16, raw.shape).float())
    s4, groups, bucket = s4.to(dev), groups.to(dev), torch.zeros(1, dtype=torch.int64, device=dev)
    out = [("int8 W8A8", lambda: int8_gemm(a_codes, a_scale, w8)),
           ("int8 W4A8 (two-level)", lambda: int8_gemm(a_codes, a_scale, w4)),
           ("quantize + int8 W4A8", lambda: int8_gemm(*quantize_rows(x, "int8"), w4)),
           ("quantize + int8 W4A4 (static UINT4)",
            lambda: int8_gemm(*quantize_rows(x, "int4", s4, bucket, 32, groups), w4))]
    if fp8:
        a8 = x.to(torch.float8_e4m3fn)
        codes, t, s = fp4_groups.quantize(torch.randn(n, k), 32)
        f4 = Fp8Weights.fp4_from_codes(codes, t, s, 32)
        f4 = Fp8Weights(f4.codes.to(dev), f4.w_scale.to(dev), f4.offset.to(dev), 32)
        f8 = Fp8Weights(torch.randn(n, k, device=dev).to(torch.float8_e4m3fn), torch.rand(n, device=dev))
        out += [("fp8 W8A8", lambda: fp8_gemm(a8, a_scale, f8)),
                ("fp8 W4A4 (FP4 weights)", lambda: fp8_gemm(a8, a_scale, f4)),
                ("quantize + fp8 FP4", lambda: fp8_gemm(*quantize_rows(x, "fp4"), f4)),
                ("quantize (Hadamard groups) + fp8 FP4", lambda: fp8_gemm(*quantize_rows(x, "fp4_hadamard"), f4))]
    for codewords, dim in ((256, 4), (64, 2)):
        vq = VqWeights(torch.randn(codewords, dim, device=dev, dtype=torch.float16),
                       torch.randint(0, codewords, (n, k // dim), device=dev, dtype=torch.uint8))
        out.append((f"vq {codewords}x{dim} (FP16)", lambda vq=vq: vq_gemm(x, vq)))
    return out


def section_gemm() -> dict:
    fp8 = torch.cuda.get_device_capability() >= (8, 9)
    rows = []
    for k, n in SHAPES:
        w16 = torch.randn(n, k, device="cuda", dtype=torch.float16)
        w8 = w16.to(torch.float8_e4m3fn)
        for m in ROWS:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            flops = 2.0 * m * n * k
            fp16_ms = median_ms(lambda: torch.matmul(x, w16.T))
            base = {"K": k, "N": n, "M": m, "fp16_ms": fp16_ms, "fp16_tflops": flops / fp16_ms / 1e9}
            if fp8:
                x8 = x.to(torch.float8_e4m3fn)
                one = torch.ones((), device="cuda")
                fp8_ms = median_ms(lambda: torch._scaled_mm(x8, w8.T, scale_a=one, scale_b=one,
                                                            out_dtype=torch.float16))
                base |= {"fp8_ms": fp8_ms, "fp8_tflops": flops / fp8_ms / 1e9}
            for name, fn in _gemm_candidates(m, k, n, fp8):
                ms = median_ms(fn)
                row = base | {"kernel": name, "ms": ms, "tflops": flops / ms / 1e9, "vs_fp16": fp16_ms / ms}
                if fp8:
                    row["vs_fp8"] = base["fp8_ms"] / ms
                rows.append(row)
            log(f"GEMM K={k} N={n} M={m}: fp16 {fp16_ms:.3f} ms; "
                + ", ".join(f"{r['kernel']} x{r['vs_fp16']:.2f}" for r in rows if r["M"] == m and r["K"] == k
                            and r["N"] == n))
    return {"ok": True, "rows": rows}


def _dit_xl(device: str = "cuda"):
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    return DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                                 num_layers=28, sample_size=32, patch_size=2, num_embeds_ada_norm=1000
                                 ).to(device, torch.float16).eval()


def _quantize_on_kernels(model) -> int:
    """Each block's Linears as two-level W4 (round to nearest, groups of 32) on the kernels, with
    dynamic per-token INT8 activations, adaLN's modulation weight-only and the embedders FP
    (Q-DiT's layer policy)."""
    from exporter.kernels.linear import KernelLinear
    from exporter.numerics.primitives import IntFormat, quantize
    from exporter.numerics.two_level import two_level_scales
    from exporter.quant.module_tree import replace_module
    from exporter.quant.qlinear import DynamicActivationQuant, QuantLinear

    int4 = IntFormat(4)
    count = 0
    for name, module in list(model.named_modules()):
        if not (isinstance(module, torch.nn.Linear) and name.startswith("transformer_blocks.")) or ".emb." in name:
            continue
        w = module.weight.detach().float()
        scale = two_level_scales(w, 32)
        codes = quantize(w, scale, torch.zeros_like(scale), int4, 32)
        act = None if name.endswith("norm1.linear") else DynamicActivationQuant(IntFormat(8), -1)
        layer = QuantLinear(codes, scale, torch.zeros_like(scale), int4, 32, module.bias, act)
        replace_module(model, name, KernelLinear(name, layer, None).to(w.device))
        count += 1
    return count


def section_forward() -> dict:
    model = _dit_xl()
    results = []
    inputs = {}
    for batch in (2, 8):
        x = torch.randn(batch, 4, 32, 32, device="cuda", dtype=torch.float16)
        t = torch.randint(0, 1000, (batch,), device="cuda")
        y = torch.randint(0, 1000, (batch,), device="cuda")
        inputs[batch] = (x, t, y)
        with torch.no_grad():
            results.append({"batch": batch, "fp16_ms": median_ms(lambda: model(x, t, y), warmup=3, repeats=10)})
        log(f"DiT-XL/2 forward FP16, batch {batch}: {results[-1]['fp16_ms']:.2f} ms")
    with torch.no_grad():
        reference = model(*inputs[2]).sample.float()
    layers = _quantize_on_kernels(model)
    for row in results:
        x, t, y = inputs[row["batch"]]
        with torch.no_grad():
            row["w4a8_ms"] = median_ms(lambda: model(x, t, y), warmup=3, repeats=10)
        row["speedup"] = row["fp16_ms"] / row["w4a8_ms"]
        log(f"DiT-XL/2 forward W4A8 kernels, batch {row['batch']}: {row['w4a8_ms']:.2f} ms (x{row['speedup']:.2f})")
    with torch.no_grad():
        quantized = model(*inputs[2]).sample.float()
    sqnr = 20 * torch.log10(reference.norm() / (reference - quantized).norm())
    return {"ok": True, "layers_on_kernels": layers, "rows": results, "output_sqnr_db_vs_fp16": float(sqnr)}


def section_sampling(n: int = 256) -> dict:
    import copy

    from exporter.evaluation.fidelity import DigitsJudge
    from exporter.kernels.linear import use_kernels
    from exporter.models.embedded import EMBEDDED_SAMPLER
    from exporter.models.loading import load_dit
    from exporter.models.sampling import balanced_labels, sample, sample_seeds
    from exporter.quant.calibration import collect_calibration_set
    from exporter.quant.quantize import quantize_model
    from exporter.quant.recipes import get_recipe

    loaded = load_dit(None)
    started = time.monotonic()
    calib = collect_calibration_set(loaded, EMBEDDED_SAMPLER, trajectories=32, seed=0, progress=False)
    qdit = quantize_model(loaded.transformer, get_recipe("w4a8"), calib, 1000, progress=False)
    log(f"embedded model calibrated at w4a8 in {time.monotonic() - started:.0f} s")
    labels = balanced_labels(n, int(loaded.transformer.config.num_embeds_ada_norm))
    seeds = sample_seeds(0, n)

    def draw(transformer):
        return sample(transformer, loaded.scheduler_config, labels, seeds, EMBEDDED_SAMPLER, progress=False)

    fp = draw(loaded.transformer.cuda())
    simulated = draw(qdit.transformer.cuda())
    on_kernels = copy.deepcopy(qdit)
    use_kernels(on_kernels)
    kernels = draw(on_kernels.transformer.cuda())
    judge = DigitsJudge()
    return {"ok": True, "samples": n,
            "kernels_vs_simulated": judge.compare_paired(kernels, simulated),
            "simulated_vs_fp": judge.compare_paired(simulated, fp),
            "kernels_vs_fp": judge.compare_paired(kernels, fp)}


def _stored_codes(layer) -> torch.Tensor:
    """What a quantized layer stores per weight: integer / FP4 codes, or codebook assignments."""
    return layer.codes if hasattr(layer, "codes") else layer.assignments


def section_calibration(precisions: tuple[str, ...] = ("w4a8", "w4a4", "vq2")) -> dict:
    """The same calibration data quantized on the CPU and on the GPU (float32 both): what share of
    the weight codes agree, and how close the two models' outputs are (float reordering only);
    then a whole calibration on the GPU as `dit-export calibrate --device cuda` runs it (FP16 sampling)."""
    import tempfile

    from exporter.models.embedded import EMBEDDED_SAMPLER
    from exporter.models.loading import load_dit
    from exporter.models.placement import resolve_placement
    from exporter.numerics.primitives import sqnr_db
    from exporter.quant.calibration import collect_calibration_set
    from exporter.quant.quantize import quantize_model
    from exporter.quant.recipes import get_recipe
    from exporter.stages.calibrate import CalibrationOptions, run_calibrate

    loaded = load_dit(None)
    calib = collect_calibration_set(loaded, EMBEDDED_SAMPLER, trajectories=4, seed=0, progress=False)
    x, t, y = calib.x[:64], calib.t[:64], calib.y[:64]
    rows = []
    for precision in precisions:
        recipe = get_recipe(precision)
        if recipe.weight.kind == "vq":
            recipe = recipe.with_overrides(weight_iterations=20)
        elif recipe.kd_iterations:
            recipe = recipe.with_overrides(kd_iterations=20)
        timed = {}
        models = {}
        for device in ("cpu", "cuda"):
            started = time.monotonic()
            models[device] = quantize_model(loaded.transformer, recipe, calib, 1000, progress=False,
                                            device=torch.device(device)).to(torch.device("cpu"))
            timed[device] = round(time.monotonic() - started, 1)
        cpu, gpu = ({n: _stored_codes(m) for n, m in models[d].quant_linears().items()} for d in ("cpu", "cuda"))
        same = sum(int((codes == gpu[n]).sum()) for n, codes in cpu.items())
        total = sum(codes.numel() for codes in cpu.values())
        with torch.no_grad():
            out_cpu = models["cpu"].transformer(x, t, y).sample
            out_gpu = models["cuda"].transformer(x, t, y).sample
        rows.append({"precision": precision, "cpu_seconds": timed["cpu"], "gpu_seconds": timed["cuda"],
                     "codes_equal": same / total, "output_sqnr_db_gpu_vs_cpu": sqnr_db(out_cpu, out_gpu)})
        log(f"calibration {precision}: codes equal {same / total:.4f}, CPU {timed['cpu']} s, GPU {timed['cuda']} s")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as out:
        _, summary = run_calibrate(loaded, get_recipe("w4a8"), EMBEDDED_SAMPLER,
                                   CalibrationOptions(placement=resolve_placement("cuda")), Path(out), progress=False)
    whole = {"seconds": round(time.monotonic() - started, 1), "output_sqnr_db_mean": summary.output_sqnr_db_mean,
             "peak_device_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    return {"ok": all(r["codes_equal"] > 0.99 for r in rows), "rows": rows, "w4a8_on_gpu": whole}


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# GPU check: {env['gpu']} (sm_{env['compute_capability'].replace('.', '')}), {env['date']}", "",
             f"torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}; `python tools/gpu_check.py`", ""]
    for name in SECTIONS:
        result = report.get(name)
        if result is None:
            continue
        lines.append(f"## {name}: {'ok' if result.get('ok') else 'FAILED'}")
        if "error" in result:
            lines += ["", "```", result["error"][-3000:], "```"]
        if name == "aot" and result.get("ok"):
            lines.append(f"{result['cubins']} cubins in {result['seconds']} s")
        if name == "tests":
            lines.append(f"{result.get('summary', '')} ({result.get('seconds')} s)")
            if result.get("tail"):
                lines += ["```", result["tail"], "```"]
        if name == "gemm" and result.get("rows"):
            lines += ["", "| K | N | M | kernel | ms | TFLOP/s | x FP16 | x FP8 |", "|---|---|---|---|---|---|---|---|"]
            for r in result["rows"]:
                vs_fp8 = f"{r['vs_fp8']:.2f}" if "vs_fp8" in r else "—"
                lines.append(f"| {r['K']} | {r['N']} | {r['M']} | {r['kernel']} | {r['ms']:.4f} | {r['tflops']:.0f} | "
                             f"{r['vs_fp16']:.2f} | {vs_fp8} |")
            lines += ["", "Baselines in the same run (ms, TFLOP/s): FP16 / FP8 per shape are in gpu_check.json."]
        if name == "forward" and result.get("rows"):
            lines += ["", f"{result['layers_on_kernels']} Linears on the kernels; output SQNR vs FP16 "
                      f"{result['output_sqnr_db_vs_fp16']:.1f} dB", "", "| batch | FP16 ms | W4A8 ms | speed-up |",
                      "|---|---|---|---|"]
            lines += [f"| {r['batch']} | {r['fp16_ms']:.2f} | {r['w4a8_ms']:.2f} | {r['speedup']:.2f} |"
                      for r in result["rows"]]
        if name == "sampling" and result.get("ok"):
            lines += ["", f"{result['samples']} samples, same seeds:", ""]
            for key in ("kernels_vs_simulated", "simulated_vs_fp", "kernels_vs_fp"):
                v = result[key]
                lines.append(f"- {key.replace('_', ' ')}: Fréchet distance {v['frechet_distance_to_reference']:.3f}, "
                             f"PSNR {v['psnr_to_reference_db']:.1f} dB")
        if name == "calibration" and result.get("rows"):
            lines += ["", "Same calibration data, quantized on the CPU and on the GPU (float32):", "",
                      "| precision | codes equal | output SQNR GPU vs CPU (dB) | CPU s | GPU s |", "|---|---|---|---|---|"]
            lines += [f"| {r['precision']} | {r['codes_equal']:.4f} | {r['output_sqnr_db_gpu_vs_cpu']:.1f} | "
                      f"{r['cpu_seconds']} | {r['gpu_seconds']} |" for r in result["rows"]]
            whole = result.get("w4a8_on_gpu", {})
            lines += ["", f"`calibrate --device cuda` (FP16 sampling), w4a8, embedded: {whole.get('seconds')} s, "
                      f"output SQNR mean {whole.get('output_sqnr_db_mean')} dB, peak device memory "
                      f"{whole.get('peak_device_gib')} GiB"]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "gpu_check")
    parser.add_argument("--skip", default="", help=f"comma-separated sections to skip: {', '.join(SECTIONS)}")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("gpu_check: unset TRITON_INTERPRET: the check runs the kernels on the GPU", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is visible to PyTorch", file=sys.stderr)
        return 2
    skip = {s for s in args.skip.split(",") if s}
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"environment": environment()}
    log(f"{report['environment']['gpu']}, torch {torch.__version__}")
    runners = {"aot": lambda: section_aot(args.out), "tests": section_tests, "gemm": section_gemm,
               "forward": section_forward, "sampling": section_sampling, "calibration": section_calibration}
    for name in SECTIONS:
        if name in skip:
            continue
        log(f"{name} ...")
        started = time.monotonic()
        try:
            report[name] = runners[name]()
        except Exception:  # a failed section is reported; the others still run
            report[name] = {"ok": False, "error": traceback.format_exc()}
        report[name]["section_seconds"] = round(time.monotonic() - started, 1)
        log(f"{name}: {'ok' if report[name].get('ok') else 'FAILED'} in {report[name]['section_seconds']} s")
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "gpu_check.md").write_text(markdown(report))
    return 0 if all(report[s].get("ok") for s in SECTIONS if s in report) else 1


if __name__ == "__main__":
    sys.exit(main())

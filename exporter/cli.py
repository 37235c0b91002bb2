"""The dit-export command line."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import typer

from exporter import artifacts
from exporter.cli_options import CalibrationFlags, PlacementFlags, RecipeFlags, takes_options
from exporter.errors import UserError
from exporter.models.sampling import SamplerConfig
from exporter.quant.methods.qdit_group_search import SearchOptions
from exporter.quant.recipes import RECIPES
from exporter.stages.validate import REWRITE_ATOL

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Quantize a Diffusion Transformer (DiT) and export it to ONNX and TensorRT.")

MODEL_HELP = "diffusers DiT folder or Hugging Face Hub id; the embedded default model when omitted"


def user_errors_exit_2(command):
    """A UserError becomes one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def sampler_from_options(loaded, sampler: Optional[str], steps: Optional[int], guidance: Optional[float],
                         base=None):
    from dataclasses import replace

    from exporter.models.loading import default_sampler

    base = base or default_sampler(loaded)
    overrides = {k: v for k, v in dict(kind=sampler, steps=steps, guidance_scale=guidance).items() if v is not None}
    return replace(base, **overrides)


WEIGHT_METHODS = ("rtn", "gptq", "vq4dit", "kmeans")


def recipe_from_options(flags: RecipeFlags):
    from dataclasses import replace

    from exporter.quant.policy import LayerPolicy
    from exporter.quant.recipes import get_recipe

    recipe = get_recipe(flags.precision)
    if flags.weight_method is not None and flags.weight_method not in WEIGHT_METHODS:
        raise UserError(f"unknown weight method '{flags.weight_method}'; valid: {', '.join(WEIGHT_METHODS)}")
    if flags.activations is not None and flags.activations not in ("static", "dynamic"):
        raise UserError(f"unknown activation mode '{flags.activations}'; valid: static, dynamic")
    recipe = recipe.with_overrides(weight_group_size=flags.weight_group_size, weight_method=flags.weight_method,
                                   activation_mode=flags.activations, activation_per_timestep=flags.per_timestep,
                                   activation_group_size=flags.activation_group_size,
                                   activation_kind=flags.activation_format, weight_iterations=flags.vq_iterations,
                                   dilation=flags.dilation, kd_iterations=flags.kd_iterations, hadamard=flags.hadamard)
    if flags.weight_layers is not None or flags.activation_layers is not None:
        policy = LayerPolicy.parse(
            flags.weight_layers if flags.weight_layers is not None else ",".join(sorted(recipe.policy.weights)),
            flags.activation_layers if flags.activation_layers is not None
            else ",".join(sorted(recipe.policy.activations)))
        recipe = replace(recipe, policy=policy)
    return recipe


def calibration_options(flags: CalibrationFlags, placement: PlacementFlags):
    from exporter.models.placement import resolve_placement
    from exporter.quant.activation_store import parse_bytes
    from exporter.stages.calibrate import CalibrationOptions

    if flags.group_search and (flags.search_epochs < 1 or flags.search_population < 2 or flags.search_budget <= 0
                               or flags.search_samples < 2):
        raise UserError("the group-size search needs --search-epochs >= 1, --search-population >= 2, "
                        "--search-samples >= 2 and a positive --search-budget")
    search = SearchOptions(budget=flags.search_budget, epochs=flags.search_epochs, population=flags.search_population,
                           samples=flags.search_samples, seed=flags.calibration_seed) if flags.group_search else None
    if flags.max_memory is not None:
        parse_bytes(flags.max_memory)  # a bad size fails before any work
    return CalibrationOptions(placement=resolve_placement(placement.device, placement.dtype),
                              resume=flags.resume, trajectories=flags.trajectories, seed=flags.calibration_seed,
                              buckets=flags.buckets, data=flags.calibration_data, group_search=search,
                              max_memory=flags.max_memory)


@app.command()
def precisions() -> None:
    """List the precisions, whether each deploys at full speed, and the layer roles a policy can name."""
    from exporter.quant.policy import ROLES

    for recipe in RECIPES.values():
        typer.echo(f"{recipe.name:12s} {'deployable' if recipe.deployable else 'reference':10s}  {recipe.description}")
    typer.echo("deployable: its GEMM runs at full speed (integer weights: a pure INT8 MMA, one rescale in the "
               "epilogue; FP4 weights on power-of-two groups, activations on fine groups, each optionally "
               "Hadamard-rotated by the quantizer: a pure FP8 MMA, sm_89+; codebook weights: an FP16 GEMM); "
               "reference: an accuracy reference, no such kernel (float rescales of each group's partial sums, "
               "4-bit operands with float group scales, other Hadamard rotations, or codebooks with INT8 "
               "activations)")
    typer.echo(f"layer roles: {', '.join(ROLES)}")


@app.command()
@user_errors_exit_2
@takes_options
def calibrate(
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    out: Path = typer.Option(Path("out"), help="folder for the checkpoint (out/quantized), data and reports"),
    recipe_flags: RecipeFlags = None, calibration_flags: CalibrationFlags = None,
    placement_flags: PlacementFlags = None,
) -> None:
    """Calibrate and quantize a DiT; write the quantized checkpoint and SQNR / range reports."""
    from exporter.models.loading import default_sampler, load_dit
    from exporter.stages.calibrate import run_calibrate

    recipe = recipe_from_options(recipe_flags)
    options = calibration_options(calibration_flags, placement_flags)
    loaded = load_dit(model)
    _, summary = run_calibrate(loaded, recipe, default_sampler(loaded), options, out)
    for key, value in summary.to_dict().items():
        typer.echo(f"{key}: {value}")


@app.command()
@user_errors_exit_2
@takes_options
def build(
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    out: Path = typer.Option(Path("out"), help="folder for every artifact and the build report"),
    checkpoint: Optional[Path] = typer.Option(None, help="use this quantized checkpoint instead of calibrating"),
    eval_samples: int = typer.Option(200, help="samples for the FP vs quantized fidelity check (0 skips it)"),
    seed: int = typer.Option(0, help="seed of the evaluation samples"),
    recipe_flags: RecipeFlags = None, calibration_flags: CalibrationFlags = None,
    placement_flags: PlacementFlags = None,
) -> None:
    """Run every stage of the pipeline that exists, writing artifacts and a build report."""
    from exporter.stages.build import run_build

    recipe = recipe_from_options(recipe_flags)
    run_build(model, recipe, out, checkpoint, eval_samples, seed,
              calibration_options(calibration_flags, placement_flags))


@app.command("export")
@user_errors_exit_2
def export_command(
    checkpoint: Path = typer.Option(Path("out/quantized"), help="quantized checkpoint (dit-export calibrate)"),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP + "; the FP reference, must be the checkpoint's"),
    out: Path = typer.Option(Path("out"), help="the ONNX files go to OUT/onnx/"),
    external_data: Optional[bool] = typer.Option(None, "--external-data/--no-external-data",
                                                 help="weights in NAME.onnx.data (default: only over 2 GB)"),
) -> None:
    """Export the FP reference ONNX and the QDQ ONNX of a quantized checkpoint."""
    from exporter.models.loading import load_dit
    from exporter.results import plain
    from exporter.stages.export import export_checkpoint

    result = export_checkpoint(checkpoint, load_dit(model), out, external_data)
    for key, value in plain(result).items():
        typer.echo(f"{key}: {value}")


@app.command()
@user_errors_exit_2
def validate(
    checkpoint: Path = typer.Option(Path("out/quantized"), help="quantized checkpoint the graphs were exported from"),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP + "; must be the checkpoint's"),
    out: Path = typer.Option(Path("out"), help="folder holding onnx/; reports and Polygraphy files go here"),
    exporter_atol: float = typer.Option(5e-3, help="QDQ vs PyTorch simulated model: absolute tolerance"),
    exporter_stat: str = typer.Option("median", help="error statistic checked for that: max, mean or median"),
    quantization_atol: float = typer.Option(0.02, help="QDQ vs FP reference: absolute tolerance on the error "
                                            "times the step weight (how far it moves the sampler's next sample)"),
    quantization_stat: str = typer.Option("mean", help="error statistic checked for that: max, mean or median"),
) -> None:
    """Compare the exported graphs with Polygraphy in ONNX Runtime: QDQ vs the PyTorch simulated
    model (exporter check) and QDQ vs the FP reference (quantization error)."""
    from exporter.models.loading import load_dit
    from exporter.models.sampling import validation_step_weights, validation_timesteps
    from exporter.onnx.comparison import Tolerances, worst
    from exporter.quant.calibration import saved_calibration
    from exporter.quant.checkpoint import loaded_from_checkpoint
    from exporter.stages.validate import run_validation

    tolerances = Tolerances(exporter_atol, exporter_stat, quantization_atol, quantization_stat)
    quantized, manifest = loaded_from_checkpoint(checkpoint, load_dit(model))
    timesteps = validation_timesteps(manifest)
    report = run_validation(artifacts.fp_onnx(out), artifacts.qdq_onnx(out, manifest["precision"]),
                            quantized.transformer, timesteps, validation_step_weights(manifest, timesteps), out,
                            tolerances, calibration=saved_calibration(out))
    for key, stat in (("exporter_check", tolerances.exporter_stat), ("quantization_error", tolerances.quantization_stat)):
        typer.echo(f"{key}: passed (worst {stat} {worst(report[key], stat):.3g})")
    typer.echo(f"report: {artifacts.report(out, artifacts.VALIDATION_REPORT, 'md')}")


@app.command()
@user_errors_exit_2
def rewrite(
    checkpoint: Path = typer.Option(Path("out/quantized"), help="quantized checkpoint the QDQ graph was exported from"),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP + "; must be the checkpoint's"),
    out: Path = typer.Option(Path("out"), help="folder holding onnx/ (dit-export export); the report goes here"),
    atol: float = typer.Option(REWRITE_ATOL, help="rewritten vs QDQ graph: tolerance on the max absolute difference"),
) -> None:
    """Replace every quantized GEMM of the QDQ graph by a TensorRT plugin node: writes
    NAME.rewritten.onnx (with reference functions, runs in ONNX Runtime) and NAME.trt.onnx (for
    TensorRT), then compares the rewritten graph with the QDQ graph with Polygraphy."""
    from exporter.models.loading import load_dit
    from exporter.models.sampling import validation_timesteps
    from exporter.onnx.comparison import worst
    from exporter.quant.calibration import saved_calibration
    from exporter.quant.checkpoint import loaded_from_checkpoint, manifest_recipe, read_manifest
    from exporter.stages.rewrite import check_deployable, run_rewrite
    from exporter.stages.validate import run_rewrite_validation

    check_deployable(manifest_recipe(read_manifest(checkpoint)))
    quantized, manifest = loaded_from_checkpoint(checkpoint, load_dit(model))
    qdq = artifacts.qdq_onnx(out, manifest["precision"])
    result = run_rewrite(qdq)
    for plugin, count in result.replaced.items():
        typer.echo(f"replaced: {count} x {plugin}")
    for layer, why in result.not_replaced.items():
        typer.echo(f"not replaced: {layer}: {why}")
    report = run_rewrite_validation(result.qdq_fp16io_onnx, result.rewritten_onnx,
                                    quantized.transformer, validation_timesteps(manifest), out, atol,
                                    calibration=saved_calibration(out))
    typer.echo(f"rewritten vs QDQ (FP16 at the plugins): passed (worst max abs {worst(report['rewrite_check'], 'max'):.3g})")
    typer.echo(f"rewritten_onnx: {result.rewritten_onnx}\ntensorrt_onnx: {result.tensorrt_onnx}")


def _engine_context(checkpoint: Path, out: Path):
    """Precision, model config, validation timesteps and step weights of a checkpoint's build."""
    from types import SimpleNamespace

    from exporter.models.sampling import validation_step_weights, validation_timesteps
    from exporter.quant.checkpoint import manifest_recipe, read_manifest
    from exporter.stages.rewrite import check_deployable

    manifest = read_manifest(checkpoint)
    check_deployable(manifest_recipe(manifest))
    timesteps = validation_timesteps(manifest)
    return (manifest["precision"], SimpleNamespace(**manifest["transformer_config"]), timesteps,
            validation_step_weights(manifest, timesteps))


@app.command()
@user_errors_exit_2
def engine(
    checkpoint: Path = typer.Option(Path("out/quantized"), help="quantized checkpoint the graphs were exported from"),
    out: Path = typer.Option(Path("out"), help="folder holding onnx/ and the validation files; engines go to "
                             "OUT/engines/"),
    plugin_library: Optional[Path] = typer.Option(None, help="libdit_export_plugins.so (default: plugins/build/)"),
    batch: str = typer.Option("1,2,16", help="optimization profile batch sizes MIN,OPT,MAX (CFG: 2 per image)"),
    resolution: Optional[int] = typer.Option(None, help="latent size (default and only choice: the model's)"),
    optimization_level: int = typer.Option(3, help="TensorRT builder optimization level, 0 to 5"),
    quantization_atol: float = typer.Option(0.02, help="engine vs FP reference: tolerance on the error times the "
                                            "step weight, as in validate"),
    quantization_stat: str = typer.Option("mean", help="error statistic checked: max, mean or median"),
) -> None:
    """Build the quantized TensorRT engine (with the plugins) and the FP16 baseline engine, and
    validate the quantized one against the FP reference outputs with Polygraphy."""
    from engines.profiles import EngineProfile
    from engines.stage import plan_engines, run_engine_stage
    from exporter.onnx.comparison import Tolerances

    precision, config, timesteps, weights = _engine_context(checkpoint, out)
    tolerances = Tolerances(quantization_atol=quantization_atol, quantization_stat=quantization_stat)
    plan = plan_engines(out, precision, config, EngineProfile.parse(batch, resolution), plugin_library,
                        optimization_level)
    result = run_engine_stage(plan, out, timesteps, weights, tolerances)
    if result.status == "not-available":
        typer.echo(f"engine: not available: {result.reason}; the same with the files written here:")
        for command in result.commands:
            typer.echo(f"    {command}")
        return
    typer.echo(f"quantized engine: {result.quantized.engine}\nfp16 engine: {result.fp16.engine}")
    typer.echo(f"validation: passed (worst {quantization_stat} x step weight {result.validation_worst:.3g}); "
               f"report: {result.report}")


@app.command()
@user_errors_exit_2
def bench(
    checkpoint: Path = typer.Option(Path("out/quantized"), help="quantized checkpoint the engines were built from"),
    out: Path = typer.Option(Path("out"), help="folder holding engines/"),
    plugin_library: Optional[Path] = typer.Option(None, help="libdit_export_plugins.so (default: plugins/build/)"),
    batch: int = typer.Option(2, help="model batch (CFG: 2 per image)"),
    warmup: int = typer.Option(10, help="untimed runs first"),
    iterations: int = typer.Option(50, help="timed runs; the median is reported"),
) -> None:
    """Latency and memory of the quantized and FP16 engines, measured in one run; prints the ratio."""
    from engines.bench import bench_engines
    from engines.profiles import EngineProfile
    from engines.tensorrt_support import PLUGIN_LIBRARY, check_plugin_library

    precision, config, _, _ = _engine_context(checkpoint, out)
    shapes = {name: s[1] for name, s in EngineProfile(batch, batch, batch).shapes(config).items()}
    library = check_plugin_library(plugin_library or PLUGIN_LIBRARY)
    result = bench_engines(artifacts.engine(out, precision), artifacts.engine(out, artifacts.FP16_ENGINE), shapes,
                           library, warmup, iterations)
    q, fp = result["quantized"], result["fp16"]
    typer.echo(f"{result['device']}, batch {batch}, median of {iterations} after {warmup} warm-up runs")
    typer.echo(f"fp16:      {fp['median_ms']:.3f} ms, engine {fp['engine_bytes'] / 2**20:.1f} MiB, "
               f"activations {fp['activation_bytes'] / 2**20:.1f} MiB")
    typer.echo(f"{precision}: {q['median_ms']:.3f} ms, engine {q['engine_bytes'] / 2**20:.1f} MiB, "
               f"activations {q['activation_bytes'] / 2**20:.1f} MiB")
    typer.echo(f"speedup over fp16: {result['speedup']:.2f}x; engine size ratio {result['engine_size_ratio']:.2f}")


@app.command("eval")
@user_errors_exit_2
@takes_options
def eval_command(
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    out: Path = typer.Option(Path("out/eval"), help="folder for the report JSON and sample grid"),
    samples: int = typer.Option(1000, "--samples", "-n", help="number of class-conditional samples"),
    seed: int = typer.Option(0, help="seed of the sample set (noise floor uses seed+1)"),
    sampler: Optional[str] = typer.Option(None, help="ddim or ddpm (default: the model's)"),
    steps: Optional[int] = typer.Option(None, help="sampling steps (default: the model's)"),
    guidance: Optional[float] = typer.Option(None, help="classifier-free guidance scale (1 = off)"),
    metrics: str = typer.Option("digits", help="digits (embedded-style models) or inception (real models)"),
    noise_floor: bool = typer.Option(True, help="also sample seed+1 and report the distance between the sets"),
    reference_images: Optional[Path] = typer.Option(None, help="real images for --metrics inception"),
    checkpoint: Optional[Path] = typer.Option(None, help="evaluate this quantized checkpoint (with --model: "
                                              "check it was made from that model)"),
    reference_samples: Optional[Path] = typer.Option(None, help="samples file of another run on the same seeds "
                                                     "(e.g. the FP model's fp_samples.safetensors) to compare with"),
    placement_flags: PlacementFlags = None,
) -> None:
    """Fidelity benchmark: sample N images with fixed seeds, score them, draw a grid. A quantized
    checkpoint samples in float32 (the arithmetic its simulation defines); --dtype is the FP model's."""
    from dataclasses import replace

    import torch

    from exporter.models.loading import load_dit
    from exporter.models.placement import resolve_placement
    from exporter.stages.evaluate import evaluate

    placement = resolve_placement(placement_flags.device, placement_flags.dtype)
    if checkpoint is not None:
        if placement_flags.dtype not in (None, "float32"):
            raise UserError("a quantized checkpoint samples in float32 (its simulation's arithmetic); --dtype "
                            "applies to FP models")
        placement = replace(placement, dtype=torch.float32)

    label = "fp"
    if checkpoint is not None:
        from exporter.quant.checkpoint import loaded_from_checkpoint

        loaded, manifest = loaded_from_checkpoint(checkpoint, load_dit(model) if model else None)
        label = manifest["precision"]
        base = SamplerConfig(**manifest["sampler"])
    else:
        loaded = load_dit(model)
        base = None
    config = sampler_from_options(loaded, sampler, steps, guidance, base)
    report = evaluate(loaded, out, samples, seed, config, metrics=metrics, noise_floor=noise_floor,
                      reference_images=reference_images, label=label, reference_samples=reference_samples,
                      placement=placement)
    for key, value in report.items():
        typer.echo(f"{key}: {value}")



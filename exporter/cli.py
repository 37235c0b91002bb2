"""The dit-export command line."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import typer

from exporter.errors import UserError

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


def sampler_from_options(loaded, sampler: Optional[str], steps: Optional[int], guidance: Optional[float]):
    from dataclasses import replace

    from exporter.build import default_sampler

    base = default_sampler(loaded)
    overrides = {k: v for k, v in dict(kind=sampler, steps=steps, guidance_scale=guidance).items() if v is not None}
    return replace(base, **overrides)


@app.command()
@user_errors_exit_2
def build(
    precision: str = typer.Option("w4a8", help="target precision"),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    out: Path = typer.Option(Path("out"), help="folder for every artifact and the build report"),
    eval_samples: int = typer.Option(200, help="samples for the reference fidelity check (0 skips it)"),
    seed: int = typer.Option(0, help="seed of the evaluation samples"),
) -> None:
    """Run every stage of the pipeline that exists, writing artifacts and a build report."""
    from exporter.build import run_build

    run_build(model, precision, out, None, eval_samples, seed)


@app.command("eval")
@user_errors_exit_2
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
) -> None:
    """Fidelity benchmark: sample N images with fixed seeds, score them, draw a grid."""
    from exporter.evaluate import evaluate
    from exporter.model_loading import load_dit

    loaded = load_dit(model)
    config = sampler_from_options(loaded, sampler, steps, guidance)
    report = evaluate(loaded, out, samples, seed, config, metrics=metrics, noise_floor=noise_floor,
                      reference_images=reference_images)
    for key, value in report.items():
        typer.echo(f"{key}: {value}")



"""Command-line options that several commands take, each declared once.

An option group is a dataclass whose fields are the options (annotation: the value's type,
default: the typer.Option). A command names the group as one parameter annotated with it, and
``takes_options`` spreads the group's options into the command's signature, which typer reads,
and gathers their values back into one instance of the group when the command runs:

    @app.command()
    @takes_options
    def calibrate(out: Path = ..., recipe: RecipeFlags = None, calibration: CalibrationFlags = None): ...
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from typing import Optional

import typer

from exporter.models.placement import DEVICE_HELP, DTYPE_HELP
from exporter.quant.methods.qdit_group_search import SearchOptions
from exporter.quant.recipes import RECIPES

PRECISION_HELP = f"{', '.join(RECIPES)} (dit-export precisions describes them)"


@dataclasses.dataclass
class RecipeFlags:
    """The precision and the overrides of its recipe (None: the recipe's own choice)."""

    precision: str = typer.Option("w4a8", help=PRECISION_HELP)
    weight_group_size: Optional[int] = typer.Option(
        None, help="weight group size along input channels (-1: per output channel)")
    weight_method: Optional[str] = typer.Option(
        None, help="weight rounding: rtn or gptq; for VQ precisions vq4dit or kmeans")
    activations: Optional[str] = typer.Option(
        None, help="activation quantization: static (per-timestep tables) or dynamic")
    per_timestep: Optional[bool] = typer.Option(
        None, "--per-timestep/--one-scale", help="static scales per timestep bucket or one")
    activation_group_size: Optional[int] = typer.Option(
        None, help="activation group size along channels, static or dynamic (-1: whole token)")
    activation_format: Optional[str] = typer.Option(
        None, help="activation number format: int, fp8 (FP8 E4M3) or fp4 (FP4 E2M1)")
    weight_layers: Optional[str] = typer.Option(
        None, help="comma-separated layer roles whose weights are quantized")
    activation_layers: Optional[str] = typer.Option(
        None, help="comma-separated layer roles whose input activations are quantized")
    vq_iterations: Optional[int] = typer.Option(
        None, help="VQ4DiT calibration iterations per block (vq2 / vq3; default 300)")
    dilation: Optional[bool] = typer.Option(
        None, "--dilation/--no-dilation", help="DilateQuant's weight dilation (w4a4: on)")
    kd_iterations: Optional[int] = typer.Option(
        None, help="block-wise distillation iterations of static activation scales (w4a4: 100)")
    hadamard: Optional[bool] = typer.Option(
        None, "--hadamard/--no-hadamard",
        help="Hadamard-rotate the quantized layers' inputs (fp4: each activation group of 32; fp4-g32: on)")


@dataclasses.dataclass
class CalibrationFlags:
    """Where the calibration data comes from, and Q-DiT's group-size search."""

    trajectories: int = typer.Option(32, help="sampling trajectories for calibration (every step of each is used)")
    calibration_seed: int = typer.Option(0, "--calibration-seed", help="seed of the calibration trajectories")
    buckets: Optional[int] = typer.Option(
        None, help="timestep buckets of static scales (default: one per sampler step)")
    calibration_data: Optional[Path] = typer.Option(
        None, help="reuse a saved calibration.safetensors instead of sampling")
    max_memory: Optional[str] = typer.Option(
        None, help="block inputs calibration keeps in memory, e.g. 8GiB (on a GPU: device memory, then pinned host "
        "memory); beyond it they go to files under OUT (default: half of the free memory)")
    resume: bool = typer.Option(
        False, "--resume", help="continue the calibration interrupted in OUT from its last finished block (the same "
        "model, recipe and calibration data, which it reuses; a different one is refused)")
    group_search: bool = typer.Option(
        False, "--group-search",
        help="Q-DiT's per-layer group-size search before quantizing (integer weights, dynamic activations)")
    search_budget: float = typer.Option(
        SearchOptions.budget, help="group-size search: mean group size over all layers, at least")
    search_epochs: int = typer.Option(SearchOptions.epochs, help="group-size search: generations (its cost)")
    search_population: int = typer.Option(
        SearchOptions.population, help="group-size search: candidates per generation (its cost)")
    search_samples: int = typer.Option(
        SearchOptions.samples,
        help="group-size search: samples a candidate draws to be compared with FP's from the same seeds (its cost)")


@dataclasses.dataclass
class PlacementFlags:
    """Where the models run (exporter/models/placement.py)."""

    device: str = typer.Option("auto", help=DEVICE_HELP)
    dtype: Optional[str] = typer.Option(None, help=DTYPE_HELP)


def flags(group: type, **values):
    """An option group as the command line gives it when only ``values`` are passed."""
    return group(**{f.name: values.pop(f.name, f.default.default) for f in dataclasses.fields(group)}, **values)


def _groups(hints: dict[str, typing.Any]) -> dict[str, type]:
    return {name: kind for name, kind in hints.items() if dataclasses.is_dataclass(kind) and isinstance(kind, type)}


def takes_options(command):
    """The command with each parameter annotated with an option group replaced by the group's
    options (in the group's order, where the parameter stood); it receives the group instance."""
    hints = typing.get_type_hints(command)
    groups = _groups(hints)
    parameters = []
    for parameter in inspect.signature(command).parameters.values():
        if parameter.name not in groups:
            parameters.append(parameter.replace(annotation=hints.get(parameter.name, parameter.annotation)))
            continue
        group_hints = typing.get_type_hints(groups[parameter.name])
        parameters += [inspect.Parameter(f.name, parameter.kind, default=f.default,
                                         annotation=group_hints[f.name])
                       for f in dataclasses.fields(groups[parameter.name])]
    names = [p.name for p in parameters]
    if len(set(names)) != len(names):
        raise TypeError(f"{command.__name__}: an option is declared twice")

    @functools.wraps(command)
    def wrapper(**kwargs):
        for name, group in groups.items():
            kwargs[name] = group(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(group)})
        return command(**kwargs)

    wrapper.__signature__ = inspect.Signature(parameters)
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    del wrapper.__wrapped__  # typer must read the new signature, not the command's
    return wrapper


__all__ = ["PRECISION_HELP", "CalibrationFlags", "PlacementFlags", "RecipeFlags", "flags", "takes_options"]

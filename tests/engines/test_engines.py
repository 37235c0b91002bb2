"""The engine stage without TensorRT: argument checks and error paths, the one-line skip with the
trtexec / polygraphy commands (which name files that exist), and the type check of engines/
against TensorRT's stubs. Tests that build engines need TensorRT and a GPU and skip without."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from engines.bench import bench_engines
from engines.engine_builder import EngineSpec, build_engine
from engines.profiles import EngineProfile
from engines.stage import plan_engines, run_engine_stage
from engines.tensorrt_support import tensorrt_missing
from exporter.errors import UserError
from exporter.models.sampling import epsilon_step_weights
from exporter.quant.quantize import quantize_model
from exporter.quant.recipes import get_recipe
from exporter.stages.export import run_export
from exporter.stages.rewrite import run_rewrite
from exporter.stages.validate import run_validation
from tests.conftest import SAMPLER

ROOT = Path(__file__).resolve().parents[2]
needs_tensorrt = pytest.mark.skipif(tensorrt_missing() is not None, reason=str(tensorrt_missing()))


@pytest.fixture(scope="module")
def built_out(tiny, calib, tmp_path_factory):
    """What `dit-export build` leaves before its engine stage, for a tiny model at w4a8."""
    out = tmp_path_factory.mktemp("out")
    qdit = quantize_model(tiny.transformer, get_recipe("w4a8"), calib, 1000, progress=False)
    timesteps = calib.timesteps[:3]
    weights = epsilon_step_weights(tiny.scheduler_config, SAMPLER, timesteps)
    exported = run_export(qdit, tiny.transformer, out, timesteps)
    run_validation(Path(exported.fp_onnx), Path(exported.qdq_onnx), qdit.transformer, timesteps, weights, out,
                   calibration=calib)
    run_rewrite(Path(exported.qdq_onnx))
    return out, tiny.transformer.config, timesteps, weights


def test_engine_code_type_checks_against_tensorrt_stubs():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "typecheck_engines.py")], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Success: no issues found" in result.stdout


def test_profiles_default_to_cfg_batches_and_the_models_resolution(tiny):
    cfg = tiny.transformer.config
    shapes = EngineProfile().shapes(cfg)
    assert shapes["sample"] == ((1, cfg.in_channels, cfg.sample_size, cfg.sample_size),
                                (2, cfg.in_channels, cfg.sample_size, cfg.sample_size),
                                (16, cfg.in_channels, cfg.sample_size, cfg.sample_size))
    assert shapes["timestep"] == ((1,), (2,), (16,)) == shapes["class_labels"]
    assert EngineProfile.parse("4") == EngineProfile(4, 4, 4)
    assert EngineProfile.trtexec_flags(EngineProfile.parse("1,2,4").shapes(cfg))[0] == (
        f"--minShapes=sample:1x{cfg.in_channels}x{cfg.sample_size}x{cfg.sample_size},timestep:1,class_labels:1")


@pytest.mark.parametrize("batches, resolution, message", [
    ("2,1,4", None, "1 <= min <= opt <= max"),
    ("0", None, "1 <= min <= opt <= max"),
    ("1,2", None, "MIN,OPT,MAX"),
    ("a,b,c", None, "must be integers"),
    ("1,2,4", 64, "does not fit the model"),
])
def test_profile_shapes_that_do_not_fit_are_refused(tiny, batches, resolution, message):
    with pytest.raises(UserError, match=message):
        EngineProfile.parse(batches, resolution).shapes(tiny.transformer.config)


def test_missing_onnx_and_missing_plugin_library_are_clear_errors(built_out, tmp_path):
    out, config, _, _ = built_out
    with pytest.raises(UserError, match=r"w8a8.trt.onnx' does not exist \(run dit-export export and rewrite"):
        plan_engines(out, "w8a8", config)
    with pytest.raises(UserError, match="plugin library .*nothing.so does not exist: build it with"):
        plan_engines(out, "w4a8", config, plugin_library=tmp_path / "nothing.so")
    with pytest.raises(UserError, match="optimization level must be 0 to 5"):
        build_engine(EngineSpec(out / "onnx" / "fp.onnx", tmp_path / "e.engine", False, True), {}, 7)
    with pytest.raises(UserError, match="does not exist"):
        bench_engines(tmp_path / "q.engine", tmp_path / "fp16.engine", {}, None)


@pytest.mark.skipif(tensorrt_missing() is None, reason="TensorRT is installed: the stage builds engines instead")
def test_without_tensorrt_the_stage_says_so_and_lists_commands_naming_written_files(built_out):
    out, config, timesteps, weights = built_out
    result = run_engine_stage(plan_engines(out, "w4a8", config), out, timesteps, weights)
    assert result.status == "not-available" and result.reason.startswith("TensorRT is not installed")
    commands = result.commands
    assert any(c.startswith("trtexec") and "--stronglyTyped" in c and "w4a8.trt.onnx" in c for c in commands)
    assert any(c.startswith("trtexec") and "--fp16" in c and "fp.onnx" in c for c in commands)
    assert any(c.startswith("polygraphy run") and "--trt" in c for c in commands)
    read = [token.split("=", 1)[-1] for c in commands for token in shlex.split(c)
            if re.search(r"\.(onnx|json)$", token)]
    assert len(read) == 4 and all(Path(p).is_file() for p in read), read
    assert not (out / "engines").exists()


def test_the_stage_needs_the_validation_files(built_out, tmp_path):
    out, config, timesteps, weights = built_out
    plan = plan_engines(out, "w4a8", config)
    with pytest.raises(UserError, match="validation_inputs.json does not exist"):
        run_engine_stage(plan, tmp_path, timesteps, weights)


@needs_tensorrt
def test_engines_build_and_the_quantized_one_validates(built_out):
    from engines.tensorrt_support import PLUGIN_LIBRARY

    out, config, timesteps, weights = built_out
    if not PLUGIN_LIBRARY.is_file():
        pytest.skip(f"build the plugin library first: {PLUGIN_LIBRARY}")
    result = run_engine_stage(plan_engines(out, "w4a8", config), out, timesteps, weights)
    assert result.status == "done" and Path(result.quantized.engine).is_file()

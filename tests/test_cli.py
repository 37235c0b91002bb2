import json
import subprocess
import sys

import pytest

from exporter.cli_options import CalibrationFlags, RecipeFlags, flags, takes_options


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def assert_one_line_error(result, fragment):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


def test_build_runs_the_existing_stages_and_says_what_is_missing(tmp_path):
    result = run_cli("build", "--precision", "w8a8", "--trajectories", "4", "--eval-samples", "20",
                     "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "build_report.json").read_text())
    stages = {s["stage"]: s for s in report["stages"]}
    assert stages["load"]["status"] == "done" and stages["calibrate"]["status"] == "done"
    assert stages["fidelity"]["status"] == "done" and stages["fidelity"]["distance_ratio"] > 0
    assert stages["export"]["status"] == "done"
    assert stages["export"]["details"]["qdq_vs_simulated"]["mean_abs"] < stages["export"]["details"]["qdq_vs_fp"]["mean_abs"]
    assert (tmp_path / "onnx" / "fp.onnx").is_file() and (tmp_path / "onnx" / "w8a8.qdq.onnx").is_file()
    assert stages["validate"]["status"] == "done" and (tmp_path / "validation.md").is_file()
    assert stages["rewrite"]["status"] == "done" and stages["rewrite"]["details"]["not_replaced"] == {}
    assert stages["rewrite"]["plugins"] == f"DitIntGemm x{stages['calibrate']['layers']}"
    assert (tmp_path / "onnx" / "w8a8.trt.onnx").is_file() and (tmp_path / "rewrite_validation.md").is_file()
    assert stages["engine"]["status"] == "not-available" == stages["engine-validate"]["status"]
    assert stages["engine"]["reason"].startswith("TensorRT is not installed")
    assert "[engine] not-available" in result.stdout and "trtexec --onnx=" in result.stdout
    assert any("w8a8.trt.onnx" in c for c in stages["engine"]["commands"])
    assert "calibrating blocks" in result.stderr  # progress
    for png in ("fp_samples.png", "w8a8_samples.png", "layer_sqnr.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    strict = run_cli("validate", "--checkpoint", str(tmp_path / "quantized"), "--out", str(tmp_path),
                     "--quantization-atol", "1e-9", "--quantization-stat", "max")
    assert_one_line_error(strict, "validation failed: QDQ vs FP reference, output out_sample")
    rewritten = run_cli("rewrite", "--checkpoint", str(tmp_path / "quantized"), "--out", str(tmp_path))
    assert rewritten.returncode == 0, rewritten.stderr
    assert f"replaced: {stages['calibrate']['layers']} x DitIntGemm" in rewritten.stdout
    assert "rewritten vs QDQ (FP16 at the plugins): passed" in rewritten.stdout
    engine = run_cli("engine", "--checkpoint", str(tmp_path / "quantized"), "--out", str(tmp_path))
    assert engine.returncode == 0 and "engine: not available: TensorRT is not installed" in engine.stdout
    assert_one_line_error(run_cli("engine", "--checkpoint", str(tmp_path / "quantized"), "--out", str(tmp_path),
                                  "--batch", "4,2,8"), "batch sizes must satisfy 1 <= min <= opt <= max")
    assert_one_line_error(run_cli("bench", "--checkpoint", str(tmp_path / "quantized"), "--out", str(tmp_path),
                                  "--plugin-library", str(tmp_path / "none.so")), "none.so does not exist")

    again = run_cli("build", "--checkpoint", str(tmp_path / "quantized"), "--eval-samples", "0",
                    "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    reused = json.loads((tmp_path / "again" / "build_report.json").read_text())
    assert reused["precision"] == "w8a8" and reused["stages"][1]["status"] == "reused"


@pytest.mark.parametrize("args, fragment", [
    (["build", "--model", "/no/such/model"], "does not exist"),
    (["eval", "--model", "/no/such/model"], "does not exist"),
    (["eval", "-n", "4", "--sampler", "euler"], "unknown sampler 'euler'"),
    (["eval", "-n", "4", "--metrics", "clip"], "unknown metrics 'clip'"),
    (["eval", "-n", "4", "--metrics", "inception"], "--reference-images"),
    (["calibrate", "--precision", "w3a5"], "unknown precision 'w3a5'; valid: w8a8, w4a8, w4a8-g32, w4a8-naive"),
    (["build", "--precision", "int2"], "unknown precision 'int2'"),
    (["calibrate", "--weight-method", "adaround"], "unknown weight method"),
    (["calibrate", "--weight-layers", "attn_qkv,conv"], "unknown layer roles"),
    (["eval", "--checkpoint", "/no/such/ckpt"], "not a quantized checkpoint"),
    (["export", "--checkpoint", "/no/such/ckpt"], "not a quantized checkpoint"),
    (["validate", "--checkpoint", "/no/such/ckpt"], "not a quantized checkpoint"),
    (["validate", "--exporter-stat", "p99"], "unknown error statistic"),
    (["calibrate", "--group-search", "--search-samples", "1"], "--search-samples >= 2"),
    (["calibrate", "--group-search", "--precision", "w4a4"], "takes integer weights with dynamic activations"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, fragment, tmp_path):
    assert_one_line_error(run_cli(*args, "--out", str(tmp_path / "o")), fragment)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_standard_metrics_without_their_library_say_how_to_get_it(tmp_path):
    pytest.importorskip("PIL")
    try:
        import torch_fidelity  # noqa: F401
        pytest.skip("torch-fidelity is installed: the error path is not reachable")
    except ImportError:
        pass
    result = run_cli("eval", "-n", "2", "--steps", "1", "--no-noise-floor", "--metrics", "inception",
                     "--reference-images", str(tmp_path), "--out", str(tmp_path / "o"))
    assert_one_line_error(result, "pip install 'dit-export[inception]'")
    assert not (tmp_path / "o").exists()


def test_eval_writes_report_and_grid(tmp_path):
    result = run_cli("eval", "-n", "20", "--steps", "5", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "fp_eval.json").read_text())
    assert report["n"] == 20 and 0.0 <= report["accuracy"] <= 1.0
    assert report["noise_floor"]["seed"] == 1 and report["noise_floor"]["distance_between_seeds"] > 0
    assert "sampling:" in result.stderr  # progress


def test_a_reference_precision_gets_no_plugins(tmp_path):
    """The build reports rewrite and engines as skipped with the one-line reason; rewrite and engine
    alone stop with it (exit code 2)."""
    result = run_cli("build", "--precision", "w4a8-g32", "--trajectories", "2", "--eval-samples", "0",
                     "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    stages = {s["stage"]: s for s in json.loads((tmp_path / "build_report.json").read_text())["stages"]}
    reason = "precision w4a8-g32 is an accuracy reference with no plugin kernel: deploy w4a8 instead"
    for stage in ("rewrite", "engine", "engine-validate"):
        assert stages[stage] == {"stage": stage, "status": "skipped", "seconds": 0.0, "reason": reason}
    assert stages["validate"]["status"] == "done" and not list((tmp_path / "onnx").glob("*.trt.onnx"))
    for command in ("rewrite", "engine"):
        assert_one_line_error(run_cli(command, "--checkpoint", str(tmp_path / "quantized"), "--out", str(tmp_path)),
                              reason)


def test_hadamard_option_reaches_the_recipe():
    from exporter.cli import recipe_from_options

    def recipe(precision, hadamard):
        return recipe_from_options(flags(RecipeFlags, precision=precision, hadamard=hadamard))

    assert recipe("fp4", None).hadamard and recipe("fp4", None).deployable
    assert not recipe("fp4", False).hadamard and recipe("fp4", False).deployable
    assert recipe("w8a8", True).hadamard and not recipe("w8a8", True).deployable


def test_option_groups_are_declared_once_and_reach_the_command_whole():
    import typer
    from typer.testing import CliRunner

    app, seen = typer.Typer(), {}

    @app.command()
    @takes_options
    def command(out: str = typer.Option("o"), recipe_flags: RecipeFlags = None,
                calibration_flags: CalibrationFlags = None) -> None:
        seen.update(out=out, recipe=recipe_flags, calibration=calibration_flags)

    result = CliRunner().invoke(app, ["--precision", "fp4", "--no-hadamard", "--trajectories", "3"])
    assert result.exit_code == 0, result.output
    assert seen["out"] == "o" and seen["recipe"] == flags(RecipeFlags, precision="fp4", hadamard=False)
    assert seen["calibration"] == flags(CalibrationFlags, trajectories=3)
    def twice(precision: str = "x", recipe_flags: RecipeFlags = None) -> None:
        pass

    with pytest.raises(TypeError, match="declared twice"):
        takes_options(twice)
    with pytest.raises(TypeError):
        flags(RecipeFlags, no_such_option=1)

"""--device and --dtype: which placements a machine offers, the dtype policy (the FP model samples
in the placement's dtype, quantization accumulates in float32 / float64 whatever it is), and the
one-line refusal of a GPU this machine does not have."""

from __future__ import annotations

import pytest
import torch

from exporter.errors import UserError
from exporter.models.placement import CPU, Placement, model_dtype, placed, resolve_placement
from exporter.quant.calibration import collect_calibration_set
from exporter.quant.quantize import quantize_model
from exporter.quant.recipes import get_recipe
from tests.conftest import SAMPLER
from tests.test_cli import assert_one_line_error, run_cli

NO_GPU = not torch.cuda.is_available()
BF16 = Placement(torch.device("cpu"), torch.bfloat16)


def test_auto_takes_the_gpu_when_there_is_one_and_the_dtype_follows_the_device():
    auto = resolve_placement()
    assert auto.device.type == ("cpu" if NO_GPU else "cuda")
    assert auto.dtype == (torch.float32 if NO_GPU else torch.float16)
    assert resolve_placement("cpu") == CPU
    assert resolve_placement("cpu", "bfloat16") == BF16
    for device, dtype, message in (("tpu", None, "unknown device 'tpu'"), ("cpu", "float8", "unknown dtype"),
                                   ("cuda:x", None, "unknown device")):
        with pytest.raises(UserError, match=message):
            resolve_placement(device, dtype)


@pytest.mark.skipif(not NO_GPU, reason="this machine has a CUDA GPU")
def test_a_gpu_this_machine_lacks_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="PyTorch sees no CUDA GPU"):
        resolve_placement("cuda:0")
    for command in ("calibrate", "build", "eval"):
        result = run_cli(command, "--device", "cuda", "--out", str(tmp_path / command))
        assert_one_line_error(result, "--device cuda: PyTorch sees no CUDA GPU")
        assert not (tmp_path / command).exists()


def test_placed_copies_only_what_must_move_and_leaves_the_model_as_it_was(tiny):
    master = tiny.transformer
    assert placed(master, CPU) is master
    low = placed(master, BF16)
    assert low is not master and model_dtype(low) == torch.bfloat16 and model_dtype(master) == torch.float32


def test_a_low_precision_fp_model_samples_the_calibration_data_and_quantization_stays_float32(tiny, calib):
    low = collect_calibration_set(tiny, SAMPLER, trajectories=4, seed=0, progress=False, placement=BF16)
    assert low.x.dtype == torch.float32 and torch.equal(low.t, calib.t) and torch.equal(low.y, calib.y)
    drift = (low.x - calib.x).abs().mean() / calib.x.abs().mean()
    assert 0 < drift < 0.05  # the same trajectories, bfloat16's rounding apart
    qdit = quantize_model(tiny.transformer, get_recipe("w4a8"), low, 1000, progress=False)
    reference = quantize_model(tiny.transformer, get_recipe("w4a8"), calib, 1000, progress=False)
    for name, layer in qdit.quant_linears().items():
        assert layer.w_scale.dtype == torch.float32 and layer.weight.dtype == torch.float32
        fp = tiny.transformer.get_submodule(name).weight
        ref_error = (reference.quant_linears()[name].weight - fp).norm()
        assert (layer.weight - fp).norm() < 1.5 * ref_error, name  # as close to FP as float32 statistics get
    x, t, y = calib.x[:4], calib.t[:4], calib.y[:4]
    with torch.no_grad():
        out, expected = qdit.transformer(x, t, y).sample, reference.transformer(x, t, y).sample
    assert (out - expected).pow(2).mean() < 0.05 * expected.pow(2).mean()

"""`dit-export bench`: latency and memory of the quantized and FP16 engines, measured in one run
on the same inputs with CUDA events, after a warm-up, as medians; the ratio is FP16 over
quantized (above 1: the quantized engine is faster)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.tensorrt_support import load_plugin_library, require_tensorrt
from exporter.errors import UserError

if TYPE_CHECKING:
    import tensorrt as trt


def _time_engine(runtime: "trt.Runtime", path: Path, shapes: dict[str, tuple[int, ...]], warmup: int,
                 iterations: int) -> dict[str, Any]:
    import tensorrt as trt
    import torch

    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise UserError(f"cannot deserialize engine {path} (built by another TensorRT version or GPU?)")
    context = engine.create_execution_context()
    gen = torch.Generator(device="cuda").manual_seed(0)
    buffers = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                 trt.DataType.INT64: torch.int64, trt.DataType.INT32: torch.int32}[engine.get_tensor_dtype(name)]
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            shape = shapes[name]
            context.set_input_shape(name, shape)
            buffers[name] = (torch.randn(shape, device="cuda", generator=gen).to(dtype) if dtype.is_floating_point
                             else torch.randint(0, 10, shape, device="cuda", generator=gen).to(dtype))
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if name not in buffers:
            dtype = torch.float32 if engine.get_tensor_dtype(name) == trt.DataType.FLOAT else torch.float16
            dims = context.get_tensor_shape(name)
            buffers[name] = torch.empty([dims[d] for d in range(len(dims))], dtype=dtype, device="cuda")
        context.set_tensor_address(name, buffers[name].data_ptr())
    stream = torch.cuda.Stream()
    times = []
    for i in range(warmup + iterations):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        if not context.execute_async_v3(stream.cuda_stream):
            raise UserError(f"engine {path} failed to run")
        end.record(stream)
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
    return {"median_ms": statistics.median(times), "engine_bytes": path.stat().st_size,
            "activation_bytes": int(engine.device_memory_size_v2)}


def bench_engines(quantized: Path, fp16: Path, shapes: dict[str, tuple[int, ...]], plugin_library: Path | None,
                  warmup: int = 10, iterations: int = 50) -> dict[str, Any]:
    if warmup < 0 or iterations < 1:
        raise UserError("bench needs a warm-up of 0 or more and at least 1 timed iteration")
    for path in (quantized, fp16):
        if not Path(path).is_file():
            raise UserError(f"engine {path} does not exist (run dit-export engine first)")
    require_tensorrt()
    import tensorrt as trt
    import torch

    if not torch.cuda.is_available():
        raise UserError("bench needs a CUDA GPU and a CUDA build of PyTorch")
    if plugin_library is not None:
        load_plugin_library(plugin_library)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    fp = _time_engine(runtime, Path(fp16), shapes, warmup, iterations)
    q = _time_engine(runtime, Path(quantized), shapes, warmup, iterations)
    return {"shapes": {k: list(v) for k, v in shapes.items()}, "warmup": warmup, "iterations": iterations,
            "fp16": fp, "quantized": q, "speedup": fp["median_ms"] / q["median_ms"],
            "engine_size_ratio": q["engine_bytes"] / fp["engine_bytes"],
            "device": torch.cuda.get_device_name()}

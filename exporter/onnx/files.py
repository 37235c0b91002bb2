"""Writing and opening ONNX files, with external data for models over protobuf's 2 GB limit.

A model written with external data is `NAME.onnx` plus one `NAME.onnx.data` beside it. Opening
a model refuses external-data locations that resolve outside the model's folder (an absolute
path, `..`, or a symbolic link leading out), so a crafted file cannot make a loader read
arbitrary files.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from onnx.external_data_helper import uses_external_data

from exporter.errors import UserError

EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # bytes of initializers; protobuf's hard limit is 2 GiB


def initializer_bytes(proto: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) or t.ByteSize() for t in proto.graph.initializer)


def deduplicate_initializers(proto: onnx.ModelProto) -> int:
    """Stores initializers with identical type, shape and bytes once (diffusers' DiT repeats the
    timestep and class embedders in every block, with the same weights in converted checkpoints);
    returns how many were dropped."""
    import hashlib

    first: dict[tuple, str] = {}
    alias: dict[str, str] = {}
    kept = []
    for tensor in proto.graph.initializer:
        if tensor.raw_data:
            content = tensor.raw_data
        else:
            anonymous = onnx.TensorProto()
            anonymous.CopyFrom(tensor)
            anonymous.name = ""
            content = anonymous.SerializeToString(deterministic=True)
        key = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(content).hexdigest())
        if key in first:
            alias[tensor.name] = first[key]
        else:
            first[key] = tensor.name
            kept.append(tensor)
    if alias:
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(kept)
        for node in proto.graph.node:
            for i, name in enumerate(node.input):
                if name in alias:
                    node.input[i] = alias[name]
    return len(alias)


def write_onnx(proto: onnx.ModelProto, path: Path, external_data: bool | None = None) -> Path:
    """Writes atomically and checks the written model; external data when asked or when needed.
    The proto may be modified (external references) and should not be reused."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = initializer_bytes(proto) > EXTERNAL_DATA_THRESHOLD
    data_name = f"{path.name}.data"
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        staged = Path(tmp) / path.name
        if external_data:
            onnx.save_model(proto, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
        else:
            staged.write_bytes(proto.SerializeToString())
        onnx.checker.check_model(str(staged))
        for f in Path(tmp).iterdir():
            os.chmod(f, 0o644)
        if external_data:
            os.replace(Path(tmp) / data_name, path.parent / data_name)
        elif (path.parent / data_name).exists():
            (path.parent / data_name).unlink()
        os.replace(staged, path)
    return path


def check_external_data(path: Path) -> None:
    """UserError if the model at ``path`` is malformed or names external data outside its folder."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX file '{path}' does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf decode errors have several types
        raise UserError(f"malformed ONNX file {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    folder = path.parent.resolve()
    for tensor in proto.graph.initializer:
        if not uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(folder):
            raise UserError(f"ONNX file {path}: external data '{location}' of tensor {tensor.name} "
                            "points outside the model's folder")
        if not target.is_file():
            raise UserError(f"ONNX file {path}: external data file '{location}' is missing")


def load_onnx(path: Path) -> onnx.ModelProto:
    check_external_data(path)
    return onnx.load(str(path))

"""A new kind of weight is a config type, its block driver, its layer's storage and its graph
emitter, registered where each role lives; recipes, overrides, manifests, checkpoints, model
loading and ONNX export then take it without a list of its fields anywhere else. Shown with a toy
kind defined here (1-bit weights: the sign of each weight times its row's mean magnitude)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch

from exporter.errors import UserError
from exporter.onnx import qdq
from exporter.onnx.graph_builder import Builder, float_tensor, int64_tensor
from exporter.onnx.ort_check import run, session
from exporter.quant import layer_storage, quantize, weight_configs
from exporter.quant.checkpoint import load_checkpoint, save_checkpoint
from exporter.quant.module_tree import replace_module
from exporter.quant.policy import linear_roles
from exporter.quant.qlinear import DecodedLinear, TimestepContext
from exporter.quant.quantize import quantize_model
from exporter.quant.quantized_model import QuantizedDiT
from exporter.quant.recipes import Recipe
from exporter.stages.export import check_inputs, qdq_onnx


@dataclass(frozen=True)
class SignWeights:
    kind: ClassVar[str] = "sign"
    bits: ClassVar[int] = 1
    method: str = "rtn"

    def __post_init__(self) -> None:
        if self.method != "rtn":
            raise UserError(f"weight method '{self.method}' does not apply to sign weights; valid: rtn")


class SignLinear(DecodedLinear):
    def __init__(self, signs: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                 act: torch.nn.Module | None = None) -> None:
        super().__init__(signs.shape[1], signs.shape[0], bias, act)
        self.register_buffer("signs", signs.to(torch.int8))
        self.register_buffer("scale", scale.float())
        self.register_buffer("weight", self.signs.float() * self.scale[:, None], persistent=False)


def quantize_signs(fp_transformer, recipe, calib, buckets, run) -> QuantizedDiT:
    model = copy.deepcopy(fp_transformer).eval()
    context = TimestepContext()
    context.attach(model)
    roles = {n: r for n, r in linear_roles(model).items() if r in recipe.policy.weights}
    for name in roles:
        linear = model.get_submodule(name)
        w = linear.weight.detach().float()
        replace_module(model, name, SignLinear(torch.where(w < 0, -1, 1), w.abs().mean(1), linear.bias))
    return QuantizedDiT(model, context, recipe, buckets, roles)


class SignStorage:
    def save(self, name: str, q: SignLinear, config: SignWeights, tensors: dict) -> dict[str, Any]:
        tensors[f"{name}.signs"], tensors[f"{name}.scale"] = q.signs.contiguous(), q.scale.contiguous()
        if q.bias is not None:
            tensors[f"{name}.bias"] = q.bias.contiguous()
        return {"weight": {"kind": config.kind, "method": config.method},
                "activation": layer_storage.save_activation(name, q.act, tensors), "rotation_block": 0,
                "weight_bytes": q.signs.numel() + 4 * q.scale.numel()}

    def load(self, layer: dict[str, Any], tensors: dict, act) -> SignLinear:
        name = layer["name"]
        return SignLinear(tensors[f"{name}.signs"], tensors[f"{name}.scale"], tensors.get(f"{name}.bias"), act)


def sign_weight(b: Builder, q: SignLinear) -> str:
    signs = b.node("Cast", [b.const(float_tensor(b.name("signs"), q.signs.float()))], to=1)
    scaled = b.node("Mul", [signs, b.node("Unsqueeze", [b.const(float_tensor(b.name("scale"), q.scale)),
                                                        b.const(int64_tensor(b.name("axis"), [1]))])])
    return b.node("Transpose", [scaled], perm=[1, 0])


@pytest.fixture
def sign_kind(monkeypatch):
    monkeypatch.setitem(weight_configs.WEIGHT_CONFIGS, "sign", SignWeights)
    monkeypatch.setitem(quantize.QUANTIZERS, SignWeights, quantize_signs)
    monkeypatch.setitem(layer_storage.LAYER_STORAGE, SignWeights, SignStorage())
    monkeypatch.setitem(qdq.WEIGHT_EMITTERS, SignLinear, sign_weight)


def test_a_new_weight_kind_runs_through_recipes_checkpoints_and_export(sign_kind, tiny, calib, tmp_path):
    recipe = Recipe("w1", "sign weights", SignWeights(), None)
    assert not recipe.deployable
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert recipe.with_overrides(weight_method="rtn") == recipe
    with pytest.raises(UserError, match="sign weights have no setting group_size"):
        recipe.with_overrides(weight_group_size=32)

    qdit = quantize_model(tiny.transformer, recipe, calib, 1000, progress=False)
    layers = qdit.quant_linears()
    assert layers and all(isinstance(m, SignLinear) for m in layers.values())
    save_checkpoint(qdit, tmp_path / "q", {"model_fingerprint": "x"})
    loaded, _ = load_checkpoint(tmp_path / "q")
    assert loaded.recipe == recipe
    x, t, y = check_inputs(tiny.transformer, calib.timesteps[:3])
    with torch.no_grad():
        simulated = qdit.transformer(x, t, y).sample
        assert torch.equal(loaded.transformer(x, t, y).sample, simulated)
    exported = run(session(qdq_onnx(loaded).SerializeToString()), x, t, y)
    assert float((torch.from_numpy(exported) - simulated).abs().max()) < 1e-4 * float(simulated.abs().max())

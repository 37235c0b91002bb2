"""Which layers of a DiT are quantized: every Linear gets a role, and a policy names the roles
whose weights and whose input activations are quantized.

Defaults follow Q-DiT: the four linears of each block (q/k/v, attention output, MLP fc1/fc2)
with their input activations; adaLN modulation weights without their activations (its input is
the conditioning embedding, not the token stream); embedders and the final layer stay FP.
The attention matmuls (QK^T, AV) stay FP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from exporter.errors import UserError

ROLE_PATTERNS = {
    "attn_qkv": r"transformer_blocks\.\d+\.attn1\.to_[qkv]$",
    "attn_out": r"transformer_blocks\.\d+\.attn1\.to_out\.0$",
    "mlp_fc1": r"transformer_blocks\.\d+\.ff\.net\.0\.proj$",
    "mlp_fc2": r"transformer_blocks\.\d+\.ff\.net\.2$",
    "adaln": r"transformer_blocks\.\d+\.norm1\.linear$",
    "timestep_embedder": r"transformer_blocks\.\d+\.norm1\.emb\.timestep_embedder\.linear_[12]$",
    "final_adaln": r"proj_out_1$",
    "final_linear": r"proj_out_2$",
}
ROLES = tuple(ROLE_PATTERNS)
BLOCK_ROLES = frozenset({"attn_qkv", "attn_out", "mlp_fc1", "mlp_fc2"})


def role_of(name: str) -> str | None:
    for role, pattern in ROLE_PATTERNS.items():
        if re.search(pattern, name):
            return role
    return None


def linear_roles(transformer: nn.Module) -> dict[str, str]:
    """name -> role of every nn.Linear, in module order; a Linear with no role is an error."""
    roles = {}
    for name, module in transformer.named_modules():
        if isinstance(module, nn.Linear):
            role = role_of(name)
            if role is None:
                raise UserError(f"unsupported architecture: Linear '{name}' has no known role in a DiT")
            roles[name] = role
    return roles


@dataclass(frozen=True)
class LayerPolicy:
    weights: frozenset[str] = BLOCK_ROLES | {"adaln"}
    activations: frozenset[str] = BLOCK_ROLES

    def __post_init__(self) -> None:
        unknown = (self.weights | self.activations) - set(ROLES)
        if unknown:
            raise UserError(f"unknown layer roles {sorted(unknown)}; valid: {', '.join(ROLES)}")
        if not self.activations <= self.weights:
            raise UserError("a role whose activations are quantized must have its weights quantized too")

    @classmethod
    def parse(cls, weights: str, activations: str) -> "LayerPolicy":
        def split(s: str) -> frozenset[str]:
            return frozenset(r.strip() for r in s.split(",") if r.strip())
        return cls(split(weights), split(activations))

    @classmethod
    def from_dict(cls, d: dict[str, list[str]]) -> "LayerPolicy":
        return cls(frozenset(d["weights"]), frozenset(d["activations"]))

    def to_dict(self) -> dict[str, list[str]]:
        return {"weights": sorted(self.weights), "activations": sorted(self.activations)}

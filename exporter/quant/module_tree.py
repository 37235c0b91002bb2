"""Editing a model's module tree by dotted name (what named_modules() reports)."""

from __future__ import annotations

from torch import nn


def replace_module(root: nn.Module, name: str, module: nn.Module) -> None:
    """Puts ``module`` where ``root.get_submodule(name)`` is."""
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


__all__ = ["replace_module"]

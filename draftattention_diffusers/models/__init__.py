"""Supported model families, found by transformer class. Adding one: a module with a ModelFamily subclass and a
line in ``_FAMILIES``."""

from __future__ import annotations

import torch

from .base import AttentionRole, ModelFamily
from .hunyuan_video import HunyuanVideoFamily
from .wan import WanFamily

_FAMILIES: tuple[ModelFamily, ...] = (WanFamily(), HunyuanVideoFamily())


def supported_transformers() -> list[str]:
    return [c for f in _FAMILIES for c in f.transformer_classes]


def family_for(transformer: torch.nn.Module) -> ModelFamily | None:
    """The family of a transformer instance (by class name, subclasses included), or None."""
    names = {c.__name__ for c in type(transformer).__mro__}
    for family in _FAMILIES:
        if names.intersection(family.transformer_classes):
            return family
    return None


def require_family(transformer: torch.nn.Module) -> ModelFamily:
    family = family_for(transformer)
    if family is None:
        raise ValueError(f"draft attention does not support {type(transformer).__name__}; supported transformers: "
                         f"{', '.join(supported_transformers())}")
    return family


__all__ = ["AttentionRole", "ModelFamily", "family_for", "require_family", "supported_transformers"]

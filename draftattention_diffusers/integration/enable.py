"""One-line enable / disable on a pipeline (or a bare transformer), and a context-manager form."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from ..config import DraftAttentionConfig
from ..models import family_for, supported_transformers
from .processor import DraftAttnProcessor
from .stats import DraftStats

_ATTR = "_draftattention_installed"  # set on each transformer: (processor, original processors)


def _transformers(obj) -> tuple[list[torch.nn.Module], Any]:
    """The supported transformers of a pipeline (``transformer`` and ``transformer_2``) or a transformer itself."""
    if isinstance(obj, torch.nn.Module):
        found, pipe = [obj], None
    else:
        found = [t for t in (getattr(obj, "transformer", None), getattr(obj, "transformer_2", None)) if t is not None]
        pipe = obj
    if not found or any(family_for(t) is None for t in found):
        names = ", ".join(type(t).__name__ for t in found) or f"no transformer in {type(obj).__name__}"
        raise ValueError(f"draft attention does not support {names}; supported transformers: "
                         f"{', '.join(supported_transformers())} (WanPipeline, WanImageToVideoPipeline, "
                         "HunyuanVideoPipeline and other pipelines built on them)")
    return found, pipe


def enable_draft_attention(obj, config: DraftAttentionConfig | dict | None = None, **overrides: Any):
    """Install draft attention on a Wan / HunyuanVideo pipeline (``transformer`` and ``transformer_2``) or on a
    bare transformer. Returns ``obj``.

    Args:
        obj: a diffusers pipeline (WanPipeline, WanImageToVideoPipeline, HunyuanVideoPipeline, ...) or a
            ``WanTransformer3DModel`` / ``HunyuanVideoTransformer3DModel``. With a bare transformer the denoising
            step is unknown: use ``dense_steps_fraction=0`` or ``get_draft_processor(obj).set_step(i, n)``.
        config: a :class:`DraftAttentionConfig` or a dict of its fields; ``**overrides`` change single fields.

    Example:
        >>> pipe = enable_draft_attention(pipe, sparsity=0.9)     # doctest: +SKIP
        >>> video = pipe(prompt).frames                           # doctest: +SKIP
        >>> print(get_draft_stats(pipe).format())                 # doctest: +SKIP

    Raises:
        ValueError: unsupported pipeline/transformer (lists the supported ones) or a bad config field.
        RuntimeError: draft attention is already enabled (disable it first).
    """
    transformers, pipe = _transformers(obj)
    for t in transformers:
        if hasattr(t, _ATTR):
            raise RuntimeError(f"draft attention is already enabled on {type(t).__name__}; "
                               "call disable_draft_attention() first")
    processor = DraftAttnProcessor(config, **overrides)
    for t in transformers:
        originals = dict(t.attn_processors)
        processor.attach(t, pipe)  # before installing: the current processors become the dense path
        t.set_attn_processor(processor)
        setattr(t, _ATTR, (processor, originals))
    return obj


def disable_draft_attention(obj) -> None:
    """Restore the processors that were installed before :func:`enable_draft_attention` and remove its hooks.

    Raises ``RuntimeError`` if draft attention is not enabled on ``obj``.
    """
    transformers, _ = _transformers(obj)
    installed = [t for t in transformers if hasattr(t, _ATTR)]
    if not installed:
        raise RuntimeError(f"draft attention is not enabled on {type(obj).__name__}")
    for t in installed:
        processor, originals = getattr(t, _ATTR)
        t.set_attn_processor(dict(originals))  # diffusers empties the dict it gets
        processor.detach()
        delattr(t, _ATTR)


@contextlib.contextmanager
def draft_attention_enabled(obj, config: DraftAttentionConfig | dict | None = None, **overrides: Any) -> Iterator:
    """``with draft_attention_enabled(pipe, sparsity=0.9): pipe(...)``: enabled inside, restored on exit."""
    enable_draft_attention(obj, config, **overrides)
    try:
        yield obj
    finally:
        disable_draft_attention(obj)


def get_draft_processor(obj) -> DraftAttnProcessor:
    """The :class:`DraftAttnProcessor` serving ``obj`` (a pipeline or transformer), installed either way."""
    transformers, _ = _transformers(obj)
    for t in transformers:
        if hasattr(t, _ATTR):
            return getattr(t, _ATTR)[0]
        for proc in t.attn_processors.values():
            if isinstance(proc, DraftAttnProcessor):
                return proc
    raise RuntimeError(f"draft attention is not enabled on {type(obj).__name__}")


def get_draft_stats(obj) -> DraftStats:
    """Statistics of the last pipeline call: see :class:`DraftStats` (``.summary()``, ``.format()``)."""
    return get_draft_processor(obj).stats

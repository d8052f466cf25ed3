"""One-line enable / disable on a pipeline (or a bare transformer), and a context-manager form."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from ..config import DraftAttentionConfig
from ..models import family_for, supported_transformers
from .parallel import check_context_parallel
from .processor import DraftAttnProcessor
from .stats import DraftStats, warn_once

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

    Context parallelism (several GPUs): ``transformer.enable_parallelism(config=ContextParallelConfig(
    ulysses_degree=N))`` may run before or after this call; each rank then runs draft attention on the whole
    sequence for its share of the heads, with the masks and output of one GPU. HunyuanVideo needs
    ``cp_plan=hunyuan_video_cp_plan()``. See ``docs/design.md``, "Several GPUs".

    Raises:
        ValueError: unsupported pipeline/transformer (lists the supported ones), a bad config field, or a
            context-parallel setting draft attention cannot run exactly (ring attention, uneven heads).
        RuntimeError: draft attention is already enabled (disable it first).
    """
    transformers, pipe = _transformers(obj)
    for t in transformers:
        if hasattr(t, _ATTR):
            raise RuntimeError(f"draft attention is already enabled on {type(t).__name__}; "
                               "call disable_draft_attention() first")
        check_context_parallel(t, family_for(t).name, None)  # parallelism enabled first: refuse early
    processor = DraftAttnProcessor(config, **overrides)
    for t in transformers:
        originals = dict(t.attn_processors)
        processor.attach(t, pipe)  # before installing: the current processors become the dense path
        t.set_attn_processor(processor)
        # set_attn_processor does not hand the model's parallel config to a new processor (diffusers would then
        # run attention on the local share only, silently wrong); copy it. The processor also re-reads it from
        # the model at every forward, so enable_parallelism may equally run after this.
        if getattr(t, "_parallel_config", None) is not None:
            processor._parallel_config = t._parallel_config
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
        config = getattr(t, "_parallel_config", None)
        if config is not None and config.context_parallel_config is not None:
            # enable_parallelism ran while ours was installed: give the restored processors the config it would
            # have given them, or they would attend within each rank's share only.
            for proc in t.attn_processors.values():
                if hasattr(proc, "_parallel_config"):
                    proc._parallel_config = config
            if family_for(t).name == "hunyuan_video":
                warn_once("draft attention was disabled on a HunyuanVideo transformer under context parallelism: "
                          "diffusers' own processor does not rebuild the key mask of a split padded prompt "
                          "(hunyuan_video_cp_plan), so padded text keys are attended; keep draft attention "
                          "enabled (dense_steps_fraction=1.0 for dense attention)")
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

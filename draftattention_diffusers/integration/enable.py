"""One-line enable / disable on a pipeline (or a bare transformer), and a context-manager form."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from diffusers.utils.torch_utils import unwrap_module

from ..config import DraftAttentionConfig
from ..models import ModelFamily, family_for, refusal, supported_pipelines, supported_transformers
from .lifecycle import attention_processors, installation, is_draft_processor, set_processors, uninstall
from .parallel import check_context_parallel
from .processor import DraftAttnProcessor
from .stats import DraftStats, warn_once

_PIPELINE_TRANSFORMERS = ("transformer", "transformer_2")  # Wan2.2 has two experts


def _transformers(obj) -> tuple[list[torch.nn.Module], list[str | None], list[ModelFamily]]:
    """The supported transformers of a pipeline (``transformer`` and ``transformer_2``) or a transformer itself,
    with their pipeline attribute names (None for a bare transformer) and their families."""
    if isinstance(obj, torch.nn.Module):
        found, names = [obj], [None]
    else:
        names = [n for n in _PIPELINE_TRANSFORMERS if getattr(obj, n, None) is not None]
        found = [getattr(obj, n) for n in names]
    # pipe.transformer = torch.compile(pipe.transformer): the compiled wrapper runs the module it wraps, which
    # carries draft attention (dynamo recompiles for the new processors and hooks)
    found = [unwrap_module(t) for t in found]
    families = [family_for(t) for t in found]
    refused = next((r for r in map(refusal, found) if r is not None), None)
    if refused is not None:  # a model draft attention cannot serve: its reason, not the list of supported ones
        raise ValueError(refused)
    if not found or any(f is None for f in families):
        what = ", ".join(type(t).__name__ for t in found) or f"no transformer in {type(obj).__name__}"
        raise ValueError(f"draft attention does not support {what}; supported transformers: "
                         f"{', '.join(supported_transformers())} ({', '.join(supported_pipelines())} and other "
                         "pipelines built on them)")
    return found, names, families


def enable_draft_attention(obj, config: DraftAttentionConfig | dict | None = None, **overrides: Any):
    """Install draft attention on a Wan / HunyuanVideo pipeline (``transformer`` and ``transformer_2``) or on a
    bare transformer. Returns ``obj``.

    Args:
        obj: a diffusers pipeline (WanPipeline, WanImageToVideoPipeline, HunyuanVideoPipeline, ...) or a
            ``WanTransformer3DModel`` / ``HunyuanVideoTransformer3DModel``. The denoising step always comes from the
            pipeline that calls the transformer (any pipeline sharing it); transformer calls without a pipeline use
            ``get_draft_processor(obj).set_step(i, n)`` (or ``dense_steps_fraction=0``).
        config: a :class:`DraftAttentionConfig` or a dict of its fields; ``**overrides`` change single fields.

    Example:
        >>> pipe = enable_draft_attention(pipe, sparsity=0.9)     # doctest: +SKIP
        >>> video = pipe(prompt).frames                           # doctest: +SKIP
        >>> print(get_draft_stats(pipe).format())                 # doctest: +SKIP

    A processor installed with ``transformer.set_attn_processor(DraftAttnProcessor(...))`` is replaced. The
    processors each module had before (the model's own, a user's, with their attention backend) are kept: they run
    cross-attention and dense video self-attention, and ``disable_draft_attention`` restores them.

    Context parallelism (several GPUs): ``transformer.enable_parallelism(config=ContextParallelConfig(
    ulysses_degree=N))`` may run before or after this call; each rank then runs draft attention on the whole
    sequence for its share of the heads, with the masks and output of one GPU. HunyuanVideo needs
    ``cp_plan=hunyuan_video_cp_plan()``. See ``docs/design.md``, "Several GPUs".

    Raises:
        ValueError: unsupported pipeline/transformer (lists the supported ones), a bad config field, an explicit
            ``backend`` that cannot run where the model is (or on this machine's GPU),
            ``dense_layers`` beyond the transformer's blocks, or a context-parallel setting draft attention cannot
            run exactly (ring attention, uneven heads).
        RuntimeError: draft attention is already enabled (disable it first).
    """
    transformers, names, families = _transformers(obj)
    for t, family in zip(transformers, families):
        inst = installation(t)
        if inst is not None and inst.via_enable:
            raise RuntimeError(f"draft attention is already enabled on {type(t).__name__}; "
                               "call disable_draft_attention() first")
        check_context_parallel(t, family, None)  # parallelism enabled first: refuse early
    processor = DraftAttnProcessor(config, **overrides)
    _check_explicit_backend(processor.config, transformers, families)
    for t, name in zip(transformers, names):
        inst = uninstall(t)
        dense = dict(inst.restore) if inst is not None else attention_processors(t)
        processor.attach(t, dense, prefix=name, via_enable=True)  # raises (nothing changed yet) on bad dense_layers
        set_processors(t, processor)
        # set_attn_processor does not hand the model's parallel config to a new processor (diffusers would then
        # run attention on the local share only, silently wrong); copy it. The processor also re-reads it from
        # the model at every forward, so enable_parallelism may equally run after this.
        if getattr(t, "_parallel_config", None) is not None:
            processor._parallel_config = t._parallel_config
    return obj


def _check_explicit_backend(config: DraftAttentionConfig, transformers: list[torch.nn.Module],
                            families: list[ModelFamily]) -> None:
    """An explicit ``backend`` that cannot run where the model will run raises now, not at the first sparse step
    (after the dense quarter of a run). Checked on the model's device, or the current CUDA GPU for a model still
    on the CPU while CUDA exists (``pipe.to("cuda")`` or offloading may follow); a bfloat16 stand-in for a float32
    model (autocast may follow), so only what cannot change is judged: package, device, GPU, head dim."""
    name = config.backend
    if name == "auto":
        return
    from ..backends import AttentionInputs, get_backend

    for t, family in zip(transformers, families):
        param = next(t.parameters(), None)
        if param is None:
            continue
        device = param.device
        if device.type == "cpu" and torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
        dtype = param.dtype if param.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
        cc = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
        head_dim = family.head_dim(t)
        probe = AttentionInputs(device.type, cc, dtype, head_dim, head_dim, config.tile_size, False)
        reasons = get_backend(name).not_supported_reasons(probe)
        if reasons:
            raise ValueError(f"backend={name!r} cannot run on {probe.describe()} ({type(t).__name__}): "
                             f"{'; '.join(reasons)}; use backend='auto' (the fastest that can run) or see "
                             "`draftattention info`")


def disable_draft_attention(obj) -> None:
    """Restore the processors that were installed before draft attention (with the attention backend and parallel
    config diffusers gave them since) and remove every hook of draft attention.

    Raises ``RuntimeError`` if draft attention is not enabled on ``obj``.
    """
    transformers, _, families = _transformers(obj)
    done = False
    for t, family in zip(transformers, families):
        inst = installation(t)
        if inst is None:
            if any(is_draft_processor(p) for p in attention_processors(t).values()):  # installed, never called yet
                roles = family.roles(t, attention_processors(t))
                set_processors(t, {f"{r.name}.processor": r.default_processor for r in roles.values()})
                done = True
            continue
        uninstall(t)
        set_processors(t, inst.restore)
        done = True
        config = getattr(t, "_parallel_config", None)
        if config is not None and config.context_parallel_config is not None and inst.family.cp_disable_warning:
            warn_once(inst.family.cp_disable_warning)
    if not done:
        raise RuntimeError(f"draft attention is not enabled on {type(obj).__name__}")


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
    transformers, _, _ = _transformers(obj)
    for t in transformers:
        inst = installation(t)
        if inst is not None:
            return inst.processor
        for proc in attention_processors(t).values():
            if is_draft_processor(proc):
                return proc
    raise RuntimeError(f"draft attention is not enabled on {type(obj).__name__}")


def get_draft_stats(obj) -> DraftStats:
    """Statistics of the last pipeline call: see :class:`DraftStats` (``.summary()``, ``.format()``).

    For a pipeline whose last call ran no transformer forward (``num_inference_steps=0``), or that is not the one
    that last called a shared transformer, the statistics are empty: never those of another call."""
    processor = get_draft_processor(obj)
    if not isinstance(obj, torch.nn.Module):
        # each call sets new scheduler timesteps, and the processor keys its statistics to the call's timesteps
        timesteps = getattr(getattr(obj, "scheduler", None), "timesteps", None)
        run_key = getattr(processor, "_run_key", None)
        if timesteps is not None and run_key is not None and timesteps is not run_key and not (
                getattr(processor, "_run_resets_after", False) and _same_timesteps(timesteps, run_key)):
            return DraftStats()  # (Wan-Animate sets them once more after its last segment: the same schedule)
    return processor.stats


def _same_timesteps(a, b) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and a.device == b.device and torch.equal(a, b))

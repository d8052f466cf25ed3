"""The fastest stack in one call: draft attention, a step cache, regional ``torch.compile`` and, optionally, float8
linear layers, applied to a diffusers pipeline in the order that works, and undone exactly.

    >>> stack = enable_fast_stack(pipe, cache="first_block")       # doctest: +SKIP
    >>> pipe(**call); pipe(**call)                                  # doctest: +SKIP  (two warm-up calls: compile)
    >>> video = pipe(**call).frames                                 # doctest: +SKIP
    >>> disable_fast_stack(pipe)                                    # doctest: +SKIP

Order (each part sees the ones before it): draft attention first (so that a cache keeps tensors of one token order:
``reorder="per_forward"`` puts every forward that can be sparse in tile order), then the step cache (diffusers'
``enable_cache`` on every transformer, or cache-dit's ``enable_cache`` on the pipeline), then float8 quantization of
the transformer blocks' linear layers (torchao), then regional compile (``compile_repeated_blocks`` on every
transformer), which must come last so that it traces what the others installed. ``disable_fast_stack`` undoes them in
the reverse order.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from typing import Any, Callable, Sequence

import torch
from diffusers.modular_pipelines import ModularPipeline

from ..config import DraftAttentionConfig, make_config
from .enable import _transformers, disable_draft_attention, enable_draft_attention
from ..models import family_for
from .lifecycle import installation
from .processor import calling_step

STACK_ATTR = "_draftattention_fast_stack"
CACHE_NAMES = ("first_block", "taylorseer", "dbcache", "dbcache+taylorseer")
"""Shorthand caches of :func:`enable_fast_stack` (``cache=<name>``); see its docstring for their settings."""
RECOMPILE_LIMIT = 16
"""dynamo's recompile limit while a compiled stack is enabled (default 8 is too few, docs/benchmarks.md section 10)."""
FP8_GRANULARITIES = ("row", "tensor")
FP8_EAGER_WARNING = ("fp8=True with compile=False: measured slower than bf16 (Wan 14B 720p on an H100: 5.62 s against "
                     "4.88 s per sparse forward; the float8 casts run as separate kernels and only compile fuses them, "
                     "docs/benchmarks.md section 13)")
FP8_INDUCTOR_OPTIONS = {"max_autotune_gemm_backends": "ATEN"}
"""Inductor options of a float8 stack's regional compile: inductor lowers ``aten._scaled_mm`` by autotuning Triton
templates against cuBLAS for every matmul shape, also without ``max_autotune`` (``tuned_scaled_mm`` calls
``use_triton_template(..., check_max_autotune=False)``); with ``"ATEN"`` only cuBLAS's ``_scaled_mm`` is a choice, the
kernel the eager float8 measurements ran (docs/benchmarks.md section 13)."""

_MAGCACHE_WHY = ("diffusers wraps MagCache's block hooks (MagCacheHeadHook.new_forward, MagCacheBlockHook.new_forward) in "
                 "torch.compiler.disable, so every transformer block runs inside a compiler-disabled frame and "
                 "compile_repeated_blocks compiles nothing (measured: MagCache + compile = MagCache, "
                 "docs/benchmarks.md section 10)")


@dataclasses.dataclass
class FastStack:
    """What :func:`enable_fast_stack` installed on a pipeline (``get_fast_stack(pipe)``); ``describe()`` lists it.

    Attributes: ``draft`` (the DraftAttentionConfig, or None), ``cache`` (the cache config object, or None),
    ``cache_library`` ("diffusers" / "cache-dit" / None), ``calibrator`` (cache-dit's calibrator config),
    ``compute_mask`` (a fixed full-compute schedule, or None), ``compiled`` (bool), ``fp8`` ("row" / "tensor" /
    None), ``transformers`` (pipeline attribute names: "transformer", "transformer_2").
    """

    pipe: Any
    transformers: list[str]
    draft: DraftAttentionConfig | None = None
    cache: Any = None
    cache_library: str | None = None
    cache_name: str | None = None
    calibrator: Any = None
    compute_mask: Sequence[bool] | Callable[[int], Sequence[bool]] | None = None
    compiled: bool = False
    compile_kwargs: dict = dataclasses.field(default_factory=dict)
    fp8: str | None = None
    num_inference_steps: int | None = None
    # undo state
    _done: list[str] = dataclasses.field(default_factory=list)
    _recompile_limit: int | None = None
    _compiled_modules: list = dataclasses.field(default_factory=list)
    _fp8_weights: dict = dataclasses.field(default_factory=dict)  # (transformer name, module name) -> CPU copy
    _fp8_modules: list = dataclasses.field(default_factory=list)
    _mag_ratios: list | None = None
    _before_cache: dict = dataclasses.field(default_factory=dict)  # id(module) -> its __dict__ before the cache
    _child_order: dict = dataclasses.field(default_factory=dict)  # id(module) -> its children's names, in order

    def modules(self) -> list[torch.nn.Module]:
        return [getattr(self.pipe, n) for n in self.transformers]

    def describe(self) -> list[str]:
        """One line per part, in the order they were applied."""
        out = []
        if self.draft is not None:
            c = self.draft
            out.append(f"draft attention (sparsity {c.sparsity}, {c.selection}, dense steps fraction "
                       f"{c.dense_steps_fraction}, dense layers {list(c.dense_layers)}, backend {c.backend}, "
                       f"dense backend {c.dense_backend})")
        if self.cache is not None:
            name = type(self.cache).__name__
            fields = _config_fields(self.cache)
            line = f"{self.cache_library} {name}({fields})"
            if self.calibrator is not None:
                line += f" + {type(self.calibrator).__name__}({_config_fields(self.calibrator)})"
            if self.compute_mask is not None:
                line += " with a fixed compute mask"
            out.append(line + f" on {', '.join(self.transformers)}")
        if self.fp8:
            out.append(f"torchao Float8DynamicActivationFloat8WeightConfig (per {self.fp8}) on "
                       f"{len(self._fp8_modules)} linear layers of the transformer blocks")
        if self.compiled:
            out.append(f"compile_repeated_blocks({_kwargs_text(self.compile_kwargs)}) on {', '.join(self.transformers)}"
                       f" (dynamo recompile_limit {torch._dynamo.config.recompile_limit})")
        return out

    def set_num_inference_steps(self, num_steps: int) -> None:
        """Adapt the settings that depend on the step count to ``num_steps`` (call it before a pipeline call with a
        different step count): MagCache's step count and ratios (interpolated from the ones given at enable), the
        ``"taylorseer"`` shorthand's first cached step, cache-dit's step count and a compute mask given as a
        function of the step count. (First Block Cache with a compute mask needs nothing: it reads the step count
        of the running pipeline call.)"""
        if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
            raise ValueError(f"num_steps={num_steps!r}: expected a positive integer")
        mask = _mask_for(self.compute_mask, num_steps)  # a fixed list of another length: an error, nothing changed
        self.num_inference_steps = num_steps
        if self.cache is None:
            return
        name = type(self.cache).__name__
        if name == "MagCacheConfig":
            from diffusers.hooks.mag_cache import nearest_interp

            ratios = torch.tensor(self._mag_ratios)
            self.cache.num_inference_steps = num_steps  # the hooks share this object
            self.cache.mag_ratios = nearest_interp(ratios, num_steps) if len(ratios) != num_steps else ratios
        elif self.cache_name == "taylorseer":
            start = _first_cached_step(num_steps)
            for t in self.modules():
                for hook in _diffusers_hooks(t, "taylorseer_cache"):
                    hook.disable_cache_before_step = start
                t._cache_config.disable_cache_before_step = start
            self.cache.disable_cache_before_step = start
        elif self.cache_library == "cache-dit":
            for cfg in _cache_dit_context_configs(self.pipe, self.modules()):
                cfg.num_inference_steps = num_steps
                if mask is not None:
                    cfg.steps_computation_mask = [int(m) for m in mask]


def enable_fast_stack(pipe, cache: str | Any = None, *, compile: bool = True, fp8: bool | str = False,
                      draft: bool | DraftAttentionConfig | dict = True, calibrator: Any = None,
                      compute_mask: Sequence[bool] | Callable[[int], Sequence[bool]] | None = None,
                      num_inference_steps: int | None = None, compile_kwargs: dict | None = None,
                      recompile_limit: int = RECOMPILE_LIMIT, fp8_keep_weights: bool = True,
                      **draft_overrides: Any) -> FastStack:
    """Draft attention + a step cache + regional compile (+ float8 linear layers) on ``pipe``, in that order.

    Args:
        pipe: a pipeline of a supported family (``WanPipeline``, ``HunyuanVideoPipeline``, ...). Wan2.2's two experts
            (``transformer``, ``transformer_2``) both get every part.
        cache: ``None`` (no cache); a diffusers cache config (``FirstBlockCacheConfig``, ``MagCacheConfig``,
            ``TaylorSeerCacheConfig``, or another that ``enable_cache`` takes), enabled on every transformer; a
            cache-dit ``DBCacheConfig`` (needs ``pip install cache-dit``), enabled on the pipeline; or a name:
            ``"first_block"`` = ``FirstBlockCacheConfig(threshold=0.05)`` (README's measured stack);
            ``"taylorseer"`` = ``TaylorSeerCacheConfig(cache_interval=3, max_order=1, every transformer block,
            disable_cache_before_step=`` the first sparse step of draft attention's default warm-up, ``ceil(0.25 n)``,
            so it needs ``num_inference_steps``) as in docs/benchmarks.md section 9; ``"dbcache"`` = cache-dit's
            ``DBCacheConfig()`` defaults; ``"dbcache+taylorseer"`` = the same with
            ``TaylorSeerCalibratorConfig(taylorseer_order=1)``.
        compile: regional ``torch.compile`` of every transformer (``compile_repeated_blocks(**compile_kwargs)``),
            applied last. While enabled, dynamo's ``recompile_limit`` is at least ``recompile_limit`` (16: a step
            cache's state and draft attention's dense/sparse switch each need graphs); ``disable_fast_stack``
            restores it.
        fp8: ``False``, ``True``/``"row"`` (per-row scales) or ``"tensor"``: torchao's
            ``Float8DynamicActivationFloat8WeightConfig`` on the linear layers of the transformer blocks (the
            ``_repeated_blocks`` classes; embeddings and the output projection stay in their dtype). Needs torchao
            and a GPU torchao runs float8 on (CUDA compute capability >= 8.9). With ``fp8_keep_weights`` (default) a
            CPU copy of the replaced weights is kept so that ``disable_fast_stack`` restores them exactly; without
            it, disabling leaves the layers in float8 and warns. Measured at Wan 14B 720p on an H100
            (docs/benchmarks.md sections 13 and 16): with compile 1.18x over the same stack in bf16 (a sparse CFG
            step 7.6 -> 5.6 s, a dense one 19.9 -> 18.0 s), 2.2% of the output's range from bf16; without compile
            slower than bf16 (it warns). With compile, inductor gets ``options=FP8_INDUCTOR_OPTIONS`` (cuBLAS float8
            matmuls, no Triton autotuning of each matmul shape) unless ``compile_kwargs`` chooses a mode, options or
            backend; torchao is asked to leave inductor's global settings alone (``set_inductor_config=False``).
        draft: ``True`` (default config), ``False`` (the same stack without draft attention, for comparisons), or
            a :class:`DraftAttentionConfig` / dict; ``**draft_overrides`` change single fields.
        calibrator: with a cache-dit cache, a calibrator config (e.g. ``TaylorSeerCalibratorConfig``).
        compute_mask: a fixed full-compute schedule (one bool per step, or a function of the step count), for
            benchmarks on random weights, where a data-dependent cache decides nothing meaningful: First Block Cache
            then computes the remaining blocks exactly on the marked steps (its threshold is not consulted); cache-dit
            gets ``steps_computation_mask`` with ``steps_computation_policy="static"``. Other caches have schedules of
            their own and refuse it.
        num_inference_steps: the pipeline's step count, for caches whose settings depend on it (MagCache's ratios,
            ``"taylorseer"``, cache-dit); change it later with ``stack.set_num_inference_steps(n)``.

    Returns:
        the :class:`FastStack` (also ``get_fast_stack(pipe)``).

    Warm-up: with ``compile=True`` the first pipeline calls compile. Run **two** warm-up calls at the shape and step
    count you will use, then time: the first compiles the dense and the sparse graphs, the second the variants that
    a step cache's state adds after a skipped step (docs/benchmarks.md section 10: with one warm-up call, First Block
    Cache + draft + compile still compiled 3 graphs inside the timed run; with two, none).

    Refused (``ValueError``, nothing changed): MagCache with ``compile=True`` (diffusers compiler-disables its hooks,
    so compile adds nothing); MagCache on a two-expert pipeline (its ratios are indexed by each transformer's own
    forward count, and ``transformer_2`` starts counting at 0 in the middle of the schedule); ``compute_mask``
    without a cache or with a cache other than First Block Cache / cache-dit; a cache-dit compute mask on two
    experts (cache-dit counts steps per expert); a diffusers cache that cannot run on this transformer or pipeline
    (its block classes missing from diffusers' block registry; First Block Cache on blocks that do not take
    ``hidden_states`` by that name, as Kandinsky 5's; First Block Cache or TaylorSeer in a pipeline that sets no
    ``cache_context``, as FramePack's, HunyuanVideo I2V's, ChronoEdit's, Kandinsky 5's, modular Wan's); a cache-dit
    cache on a modular pipeline (cache-dit takes DiffusionPipelines); ``fp8`` where torchao cannot run float8; a
    pipeline that already has draft attention, a cache or compiled blocks; unknown names. ``RuntimeError`` if a
    stack is already enabled.
    """
    transformers, names, families = _transformers(pipe)
    if any(n is None for n in names):
        raise ValueError("enable_fast_stack takes a pipeline (its caches and compile act on the pipeline's "
                         f"transformers and loop), not a bare {type(pipe).__name__}")
    if getattr(pipe, STACK_ATTR, None) is not None:
        raise RuntimeError("a fast stack is already enabled on this pipeline; call disable_fast_stack(pipe) first")
    draft_cfg = _draft_config(draft, draft_overrides)
    for t in transformers:
        if installation(t) is not None and draft_cfg is not None:
            raise ValueError(f"draft attention is already enabled on {type(t).__name__}; disable it first (the stack "
                             "installs it itself, before the cache)")
        if getattr(t, "is_cache_enabled", False) or getattr(t, "_is_cached", False):
            raise ValueError(f"{type(t).__name__} already has a step cache; disable it first (the stack installs the "
                             "cache itself, after draft attention)")
        if compile and any(getattr(m, "_compiled_call_impl", None) is not None for m in t.modules()):
            raise ValueError(f"{type(t).__name__} is already compiled; the stack compiles last, after installing the "
                             "other parts (undo your compile, or pass compile=False)")
    if not isinstance(compile, bool):
        raise ValueError(f"compile={compile!r}: expected True or False")
    if num_inference_steps is not None and (not isinstance(num_inference_steps, int)
                                            or isinstance(num_inference_steps, bool) or num_inference_steps < 1):
        raise ValueError(f"num_inference_steps={num_inference_steps!r}: expected a positive integer")
    if not isinstance(recompile_limit, int) or isinstance(recompile_limit, bool) or recompile_limit < 1:
        raise ValueError(f"recompile_limit={recompile_limit!r}: expected a positive integer")
    fp8_kind = _fp8_kind(fp8)
    cache_obj, library, cache_name, calibrator = _cache_config(cache, calibrator, draft_cfg, num_inference_steps,
                                                               transformers)
    _check_combination(cache_obj, library, compile, compute_mask, len(transformers), num_inference_steps)
    if library == "cache-dit" and isinstance(pipe, ModularPipeline):
        raise ValueError(f"cache-dit's enable_cache takes a DiffusionPipeline (or a BlockAdapter), not a modular "
                         f"pipeline ({type(pipe).__name__}, cache-dit 1.5.3); use cache=None or a diffusers cache "
                         "that its denoise loop supports")
    for t in transformers if library == "diffusers" else ():
        why = _diffusers_cache_problem(pipe, t, cache_obj)
        if why:
            raise ValueError(why)
    if compile:
        for t in transformers:
            if not getattr(t, "_repeated_blocks", None) or not hasattr(t, "compile_repeated_blocks"):
                raise ValueError(f"{type(t).__name__} declares no repeated blocks, so compile_repeated_blocks cannot "
                                 "compile it regionally; pass compile=False and compile its blocks yourself")
    if fp8_kind:
        _check_fp8(fp8_kind)
        for t in transformers:  # refuses a transformer without declared blocks, or float32 rows, before any change
            _check_fp8_dtypes(t, fp8_block_linears(t), fp8_kind)
        if not compile:
            warnings.warn(FP8_EAGER_WARNING, stacklevel=2)

    stack = FastStack(pipe, [n for n in names], draft=draft_cfg, cache=cache_obj, cache_library=library,
                      cache_name=cache_name, calibrator=calibrator, compute_mask=compute_mask, compiled=compile,
                      compile_kwargs=_compile_kwargs(compile_kwargs, fp8_kind), fp8=fp8_kind,
                      num_inference_steps=num_inference_steps)
    if type(cache_obj).__name__ == "MagCacheConfig":
        stack._mag_ratios = [float(x) for x in cache_obj.mag_ratios]
    try:
        if draft_cfg is not None:
            enable_draft_attention(pipe, draft_cfg)
            stack._done.append("draft")
        if cache_obj is not None:
            stack._before_cache = {id(m): dict(m.__dict__) for t in transformers for m in t.modules()}
            stack._child_order = {id(m): list(m._modules) for t in transformers for m in t.modules()}
            _enable_cache(stack)
            stack._done.append("cache")
        if fp8_kind:
            stack._done.append("fp8")  # before quantizing: a failure half way still restores what was replaced
            _quantize_fp8(stack, fp8_keep_weights)
        if compile:
            stack._recompile_limit = torch._dynamo.config.recompile_limit
            torch._dynamo.config.recompile_limit = max(stack._recompile_limit, recompile_limit)
            stack._done.append("compile")
            for t in transformers:
                before = {id(m) for m in t.modules() if getattr(m, "_compiled_call_impl", None) is not None}
                t.compile_repeated_blocks(**stack.compile_kwargs)
                stack._compiled_modules += [m for m in t.modules()
                                            if getattr(m, "_compiled_call_impl", None) is not None
                                            and id(m) not in before]
        if num_inference_steps is not None:
            stack.set_num_inference_steps(num_inference_steps)
    except BaseException:
        _undo(stack, reset_dynamo=compile)
        raise
    object.__setattr__(pipe, STACK_ATTR, stack)
    return stack


def disable_fast_stack(pipe, reset_dynamo: bool | None = None) -> None:
    """Undo :func:`enable_fast_stack` in the reverse order: compiled blocks back to eager and the recompile limit as
    it was, the original linear weights, no cache, the processors from before draft attention.

    ``reset_dynamo`` (default: when the stack compiled) also calls ``torch._dynamo.reset()``, so that a later
    stack starts with no graphs guarded on this one's state (it drops every compiled graph of the process).

    Raises ``RuntimeError`` if no fast stack is enabled on ``pipe``.
    """
    stack = getattr(pipe, STACK_ATTR, None)
    if stack is None:
        raise RuntimeError(f"no fast stack is enabled on {type(pipe).__name__}")
    try:
        _undo(stack, reset_dynamo=stack.compiled if reset_dynamo is None else reset_dynamo)
    finally:
        object.__delattr__(pipe, STACK_ATTR)


def get_fast_stack(pipe) -> FastStack | None:
    """The :class:`FastStack` enabled on ``pipe``, or None."""
    return getattr(pipe, STACK_ATTR, None)


# ------------------------------------------------------------------------------------------------ validation
def _draft_config(draft, overrides: dict) -> DraftAttentionConfig | None:
    if draft is False:
        if overrides:
            raise ValueError(f"draft=False with draft-attention fields {sorted(overrides)}: pass one or the other")
        return None
    if draft is True:
        return make_config(None, **overrides)
    if isinstance(draft, (DraftAttentionConfig, dict)):
        return make_config(draft, **overrides)
    raise ValueError(f"draft={draft!r}: expected True, False, a DraftAttentionConfig or a dict of its fields")


def _compile_kwargs(user: dict | None, fp8_kind: str | None) -> dict:
    """The keyword arguments of ``compile_repeated_blocks``: the user's, plus :data:`FP8_INDUCTOR_OPTIONS` for a
    float8 stack compiled by inductor, unless the user chose how inductor tunes (a ``mode``, autotuning options or
    gemm backends; torch.compile refuses ``mode`` together with ``options``)."""
    kw = dict(user or {})
    if not fp8_kind or kw.get("backend", "inductor") != "inductor" or kw.get("mode") is not None:
        return kw
    options = dict(kw.get("options") or {})
    if options.get("max_autotune") or options.get("max_autotune_gemm") or "max_autotune_gemm_backends" in options:
        return kw
    kw["options"] = {**options, **FP8_INDUCTOR_OPTIONS}
    return kw


def _fp8_kind(fp8) -> str | None:
    if fp8 is False or fp8 is None:
        return None
    if fp8 is True:
        return "row"
    if fp8 in FP8_GRANULARITIES:
        return fp8
    raise ValueError(f"fp8={fp8!r}: expected False, True (= 'row') or one of {FP8_GRANULARITIES}")


def _first_cached_step(num_steps: int) -> int:
    """Where draft attention's default warm-up ends, ``ceil(0.25 x n)`` (13 of 50), whatever draft attention's own
    setting (so that the stack with and without draft attention caches the same steps); at least 1, since
    TaylorSeer cannot predict before it computed once."""
    f = DraftAttentionConfig().dense_steps_fraction
    return max(1, min(num_steps, math.ceil(round(f * num_steps, 9))))


def _cache_config(cache, calibrator, draft, num_steps, transformers):
    """(config object, library, shorthand name, calibrator) of the ``cache`` argument."""
    if cache is None or cache == "none":
        if calibrator is not None:
            raise ValueError("calibrator= needs a cache-dit cache (cache='dbcache' or a DBCacheConfig)")
        return None, None, None, None
    name = None
    if isinstance(cache, str):
        if cache not in CACHE_NAMES:
            raise ValueError(f"cache={cache!r}: expected None, one of {CACHE_NAMES}, a diffusers cache config or a "
                             "cache-dit DBCacheConfig")
        name = cache
    if cache in ("first_block", "taylorseer") or type(cache).__module__.startswith("diffusers"):
        for t in transformers:  # diffusers' caches install through the transformer's CacheMixin.enable_cache
            if not callable(getattr(t, "enable_cache", None)):
                raise ValueError(f"{type(t).__name__} has no diffusers cache support (no CacheMixin.enable_cache in "
                                 "this diffusers), so a diffusers cache cannot be enabled on it; use a cache-dit "
                                 "cache (cache='dbcache') if cache-dit supports its pipeline, or cache=None")
    if isinstance(cache, str):
        if cache == "first_block":
            from diffusers import FirstBlockCacheConfig

            cache = FirstBlockCacheConfig(threshold=0.05)
        elif cache == "taylorseer":
            if num_steps is None:
                raise ValueError("cache='taylorseer' needs num_inference_steps: its first cached step is draft "
                                 "attention's first sparse step, ceil(0.25 x steps)")
            from diffusers import TaylorSeerCacheConfig

            dtype = next(transformers[0].parameters()).dtype
            cache = TaylorSeerCacheConfig(cache_interval=3, disable_cache_before_step=_first_cached_step(num_steps),
                                          max_order=1, taylor_factors_dtype=dtype,
                                          cache_identifiers=_block_patterns(transformers[0]))
        else:
            cache_dit = _import_cache_dit()
            if calibrator is not None and cache == "dbcache+taylorseer":
                raise ValueError("cache='dbcache+taylorseer' brings its own calibrator; pass cache='dbcache' with "
                                 "calibrator=")
            if cache == "dbcache+taylorseer":
                calibrator = cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=1)
            cache = cache_dit.DBCacheConfig()
    module = type(cache).__module__
    if module.startswith("cache_dit"):
        if calibrator is not None and not type(calibrator).__module__.startswith("cache_dit"):
            raise ValueError(f"calibrator={calibrator!r}: expected a cache-dit calibrator config")
        return cache, "cache-dit", name, calibrator
    if module.startswith("diffusers"):
        if calibrator is not None:
            raise ValueError("calibrator= is a cache-dit option; diffusers caches take their settings in their config")
        return cache, "diffusers", name, None
    raise ValueError(f"cache={cache!r}: expected None, one of {CACHE_NAMES}, a diffusers cache config "
                     "(FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig, ...) or a cache-dit DBCacheConfig")


def _check_combination(cache, library, compile, compute_mask, experts, num_steps) -> None:
    name = type(cache).__name__ if cache is not None else None
    if name == "MagCacheConfig":
        if compile:
            raise ValueError(f"MagCache with compile=True cannot work: {_MAGCACHE_WHY}. Use cache='first_block' "
                             "(its block hooks compile) with compile, or MagCache with compile=False")
        if experts > 1:
            raise ValueError("MagCache on a two-expert pipeline (Wan2.2) cannot work: its mag_ratios are indexed by "
                             "each transformer's own forward count, and transformer_2 starts counting at 0 in the "
                             "middle of the schedule; use cache='first_block' or cache-dit's DBCache")
    if compute_mask is not None:
        if cache is None:
            raise ValueError("compute_mask needs a cache (it fixes which steps the cache computes)")
        if library == "diffusers" and name != "FirstBlockCacheConfig":
            raise ValueError(f"compute_mask works with First Block Cache and cache-dit, not {name}: its skip schedule "
                             "is fixed by its own parameters")
        if library == "cache-dit" and experts > 1:
            raise ValueError("compute_mask with cache-dit on a two-expert pipeline is not supported: cache-dit counts "
                             "steps per expert, so one mask would need splitting at the expert boundary")
        if not callable(compute_mask):
            mask = list(compute_mask)
            if not mask or not all(isinstance(m, (bool, int)) and m in (0, 1) for m in mask):
                raise ValueError("compute_mask: expected a non-empty sequence of bools (or 0/1), one per step, or a "
                                 "function of the step count")
            if num_steps is not None and len(mask) != num_steps:
                raise ValueError(f"compute_mask has {len(mask)} entries for num_inference_steps={num_steps}")
        elif library == "cache-dit" and num_steps is None:
            raise ValueError("a compute_mask function with cache-dit needs num_inference_steps (cache-dit reads the "
                             "mask when each pipeline call starts)")


# What diffusers' caches need from a transformer and its pipeline (read in diffusers 0.42.1, hooks/): First Block
# Cache's and MagCache's hooks read every block's inputs and outputs through diffusers' TransformerBlockRegistry,
# and First Block Cache asks each block for its input by the name "hidden_states"; First Block Cache's and
# TaylorSeer's per-call state exists only inside the pipeline's `transformer.cache_context(...)` (MagCache makes a
# context of its own). Where one of these fails, diffusers raises on the first call ("Model class ... not
# registered", "No cache context is set", "Parameter 'hidden_states' not found"); the stack refuses first.
_NEEDS_BLOCK_METADATA = ("FirstBlockCacheConfig", "MagCacheConfig")
_NEEDS_CACHE_CONTEXT = ("FirstBlockCacheConfig", "TaylorSeerCacheConfig")


def _diffusers_cache_problem(pipe, transformer: torch.nn.Module, cache) -> str | None:
    """Why diffusers' ``cache`` config cannot run on ``transformer`` in ``pipe`` (None where it can)."""
    import inspect

    import diffusers

    name, where = type(cache).__name__, f"diffusers {diffusers.__version__}"
    if name in _NEEDS_CACHE_CONTEXT:
        module = inspect.getmodule(type(pipe))
        source = inspect.getsource(module) if module is not None else ""
        if "cache_context(" not in source:
            return (f"{name} cannot run in {type(pipe).__name__}: the pipeline does not wrap its transformer calls in "
                    f"`transformer.cache_context(...)` ({where}), where the cache keeps its per-call state; use "
                    "cache=None, or a MagCacheConfig (it sets its own context)")
    if name not in _NEEDS_BLOCK_METADATA:
        return None
    try:
        from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS
        from diffusers.hooks._helpers import TransformerBlockRegistry
    except ImportError:  # another diffusers layout: its own error on the first call
        return None
    classes = {type(b): None for n, blocks in transformer.named_children()
               if n in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(blocks, torch.nn.ModuleList) for b in blocks}
    for cls in classes:
        try:
            meta = TransformerBlockRegistry.get(cls)
        except ValueError:
            return (f"{name} cannot run on {type(transformer).__name__}: diffusers has no block metadata for "
                    f"{cls.__name__} (not in its TransformerBlockRegistry, {where}), through which the cache reads "
                    "each block's inputs and outputs; use cache='taylorseer', a cache-dit cache or cache=None")
        arg = meta.hidden_states_argument_name
        if name == "FirstBlockCacheConfig" and arg != "hidden_states":
            return (f"FirstBlockCache cannot run on {type(transformer).__name__}: its hooks ask each block for "
                    f"'hidden_states' by that name ({where}), and {cls.__name__} takes it as '{arg}'; use a "
                    "MagCacheConfig, cache='taylorseer' or cache=None")
    return None


def check_fp8(fp8: bool | str = True) -> None:
    """Raise ``ValueError`` (with the reason) where ``enable_fast_stack(fp8=fp8)`` would refuse float8 linear layers:
    torchao missing, or no GPU it runs float8 on. For front ends that check before loading a model."""
    kind = _fp8_kind(fp8)
    if kind is not None:
        _check_fp8(kind)


def _check_fp8(kind: str) -> None:
    """torchao installed, and its own hardware check passes (before anything is changed)."""
    try:
        import torchao.quantization as tq
    except ImportError:
        raise ValueError("fp8=True needs torchao: pip install torchao (the GPU machine uses torchao 0.18.0)") from None
    if not hasattr(tq, "Float8DynamicActivationFloat8WeightConfig"):
        raise ValueError("this torchao has no Float8DynamicActivationFloat8WeightConfig (needs torchao >= 0.10)")
    try:
        from torchao.quantization.quant_api import _check_hardware_support
    except ImportError:  # torchao moved it: quantize_ still checks, later
        return
    gran = tq.PerRow() if kind == "row" else tq.PerTensor()
    try:
        _check_hardware_support((gran, gran))
    except AssertionError as e:
        raise ValueError(f"fp8: torchao cannot run float8 dynamic quantization here: {e}") from None


def _import_cache_dit():
    try:
        import cache_dit
    except ImportError:
        raise ValueError("a cache-dit cache needs the cache-dit package: pip install cache-dit (tested with 1.5.3)"
                         ) from None
    return cache_dit


def _block_patterns(transformer) -> list[str]:
    """TaylorSeer's identifiers for every transformer block (top-level ModuleLists named ``*block*``)."""
    try:
        from diffusers.hooks.taylorseer_cache import _BLOCK_IDENTIFIERS as blocks
    except ImportError:
        blocks = ("^[^.]*block[^.]*\\.[^.]+$",)
    return list(blocks)


def _mask_for(mask, num_steps: int | None):
    if mask is None or num_steps is None:
        return None if mask is None or callable(mask) else list(mask)
    out = list(mask(num_steps)) if callable(mask) else list(mask)
    if len(out) != num_steps:
        raise ValueError(f"compute_mask has {len(out)} entries for {num_steps} steps")
    return out


# ------------------------------------------------------------------------------------------------ the parts
def _diffusers_hooks(module: torch.nn.Module, hook_name: str) -> list:
    found = []
    for _, m in module.named_modules():
        registry = getattr(m, "_diffusers_hook", None)
        hook = registry.get_hook(hook_name) if registry is not None else None
        if hook is not None:
            found.append(hook)
    return found


def _enable_cache(stack: FastStack) -> None:
    if stack.cache_library == "cache-dit":
        cache_dit = _import_cache_dit()
        cfg = stack.cache
        mask = _mask_for(stack.compute_mask, stack.num_inference_steps)
        if mask is not None:
            cfg.steps_computation_mask = [int(m) for m in mask]
            cfg.steps_computation_policy = "static"
        if stack.num_inference_steps is not None:
            cfg.num_inference_steps = stack.num_inference_steps
        cache_dit.enable_cache(stack.pipe, cache_config=cfg, calibrator_config=stack.calibrator)
        return
    for t in stack.modules():
        t.enable_cache(stack.cache)
    if stack.compute_mask is not None:  # First Block Cache (checked): its decision becomes the mask
        for t in stack.modules():
            heads = _diffusers_hooks(t, "fbc_leader_block_hook")
            if len(heads) != 1:
                raise RuntimeError(f"expected one First Block Cache head hook on {type(t).__name__}, found {len(heads)}")
            heads[0]._should_compute_remaining_blocks = _fixed_decision(stack, family_for(t))


def _fixed_decision(stack: FastStack, family):
    @torch.compiler.disable
    def decide(hidden_states_residual) -> bool:  # replaces FBCHeadBlockHook._should_compute_remaining_blocks
        # the calling pipeline's step as draft attention reads it (CogVideoX's DDIM keeps no step_index)
        step_info = calling_step(family, sys._getframe(1))
        if step_info is None:
            raise RuntimeError("compute_mask: no denoising step found; call the transformer through its pipeline")
        step, n = step_info
        mask = _mask_for(stack.compute_mask, n)
        if step >= len(mask):
            raise ValueError(f"compute_mask has {len(mask)} entries but the pipeline runs step {step} of {n}")
        return bool(mask[step])

    return decide


def _cache_dit_context_configs(pipe, transformers) -> list:
    """cache-dit's per-context DBCacheConfig copies (what each pipeline call resets its contexts with)."""
    out, seen = [], set()
    for t in transformers:
        for m in t.modules():
            kw = m.__dict__.get("_context_kwargs")
            cfg = kw.get("cache_config") if isinstance(kw, dict) else None
            if cfg is not None and id(cfg) not in seen:
                seen.add(id(cfg))
                out.append(cfg)
    if not out:
        raise RuntimeError("cache-dit's per-context configs were not found (cache-dit internals changed?)")
    return out


def fp8_block_linears(transformer: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The linear layers that ``fp8`` quantizes: those inside the transformer's ``_repeated_blocks`` classes whose
    dims are divisible by 16 (what float8 matmuls take); embeddings and the output projection stay in their dtype.
    Keys are module names in ``transformer``."""
    block_classes = set(getattr(transformer, "_repeated_blocks", None) or ())
    if not block_classes:
        raise ValueError(f"fp8: {type(transformer).__name__} declares no repeated blocks (_repeated_blocks), so the "
                         "stack cannot tell which linear layers are its blocks'; quantize it yourself with torchao")
    targets: dict[str, torch.nn.Linear] = {}
    for bname, block in transformer.named_modules():
        if type(block).__name__ not in block_classes:
            continue
        for lname, lin in block.named_modules():
            full = f"{bname}.{lname}" if lname else bname
            if (isinstance(lin, torch.nn.Linear) and lin.in_features % 16 == 0 and lin.out_features % 16 == 0
                    and full not in targets):
                targets[full] = lin
    if not targets:
        raise ValueError(f"fp8: no linear layer of {type(transformer).__name__}'s blocks has dims divisible by 16")
    return targets


def quantize_fp8(transformer: torch.nn.Module, granularity: str = "row") -> dict[str, torch.nn.Linear]:
    """torchao float8 dynamic quantization (``Float8DynamicActivationFloat8WeightConfig``, per-row or per-tensor
    scales) of :func:`fp8_block_linears`, in place, with no way back: what ``enable_fast_stack(fp8=...)`` applies,
    for a bare transformer (benchmarks). Returns the quantized layers. Raises ``ValueError`` where torchao cannot run
    float8 (no torchao, or a GPU below compute capability 8.9)."""
    kind = _fp8_kind(granularity)
    _check_fp8(kind)
    targets = fp8_block_linears(transformer)
    _check_fp8_dtypes(transformer, targets, kind)
    _quantize_linears(transformer, targets, kind)
    return targets


def _check_fp8_dtypes(transformer: torch.nn.Module, targets: dict[str, torch.nn.Linear], kind: str) -> None:
    """torchao quantizes per-row scales from bfloat16 weights only (it asserts midway otherwise)."""
    if kind != "row":
        return
    other = sorted({str(lin.weight.dtype).replace("torch.", "") for lin in targets.values()} - {"bfloat16"})
    if other:
        raise ValueError(f"fp8=True (per-row scales): torchao needs bfloat16 weights, but {type(transformer).__name__}'s"
                         f" block linears are {', '.join(other)}; load the transformer in torch.bfloat16 (the usual "
                         "dtype on the GPU), or pass fp8='tensor' (per-tensor scales)")


def _quantize_linears(transformer: torch.nn.Module, targets: dict[str, torch.nn.Linear], kind: str) -> None:
    """torchao's float8 dynamic quantization of exactly ``targets`` (modules of ``transformer``), in place."""
    import torchao.quantization as tq

    gran = tq.PerRow() if kind == "row" else tq.PerTensor()
    ids = {id(m) for m in targets.values()}
    # set_inductor_config=False: torchao's default turns on inductor's coordinate descent tuning in all directions
    # for the whole process (never restored), which benchmarks every Triton kernel of every compiled graph: the
    # float8 stack's first calls at Wan 14B 720p ran over 8 minutes on an H100 (docs/benchmarks.md section 16)
    tq.quantize_(transformer, tq.Float8DynamicActivationFloat8WeightConfig(granularity=gran, set_inductor_config=False),
                 filter_fn=lambda m, fqn: id(m) in ids)


def _quantize_fp8(stack: FastStack, keep: bool) -> None:
    for tname, t in zip(stack.transformers, stack.modules()):
        targets = fp8_block_linears(t)
        for full, lin in targets.items():
            stack._fp8_modules.append((tname, full, lin, "extra_repr" in lin.__dict__))
            if keep:
                stack._fp8_weights[(tname, full)] = (lin.weight.detach().to("cpu", copy=True),
                                                     lin.weight.requires_grad)
        _quantize_linears(t, targets, stack.fp8)
    stack._fp8_kept = keep


def _undo(stack: FastStack, reset_dynamo: bool) -> None:
    """Reverse of enable, for whatever was done; every step runs even if an earlier one failed (first error
    re-raised at the end)."""
    errors = []

    def attempt(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    done = stack._done
    if "compile" in done:
        def uncompile():
            for m in stack._compiled_modules:
                m._compiled_call_impl = None
            stack._compiled_modules.clear()
            if stack._recompile_limit is not None:
                torch._dynamo.config.recompile_limit = stack._recompile_limit
            if reset_dynamo:
                torch._dynamo.reset()
        attempt(uncompile)
    if "fp8" in done:
        attempt(lambda: _restore_fp8(stack))
    if "cache" in done:
        attempt(lambda: _disable_cache(stack))
    if "draft" in done:
        attempt(lambda: disable_draft_attention(stack.pipe))
    done.clear()
    if errors:
        raise errors[0]


def _restore_fp8(stack: FastStack) -> None:
    if not getattr(stack, "_fp8_kept", True):
        if stack._fp8_modules:
            warnings.warn(f"disable_fast_stack: {len(stack._fp8_modules)} linear layers stay float8 (the stack was "
                          "enabled with fp8_keep_weights=False)", stacklevel=3)
        stack._fp8_modules.clear()
        return
    for tname, full, lin, had_repr in stack._fp8_modules:
        saved = stack._fp8_weights.get((tname, full))
        if saved is None:
            continue
        weight, grad = saved
        device = lin.weight.device
        lin.weight = torch.nn.Parameter(weight.to(device), requires_grad=grad)
        if not had_repr:  # quantize_ gives each layer an instance extra_repr that prints the float8 weight
            lin.__dict__.pop("extra_repr", None)
    stack._fp8_modules.clear()
    stack._fp8_weights.clear()


def _disable_cache(stack: FastStack) -> None:
    if stack.cache_library == "cache-dit":
        import cache_dit

        from cache_dit.caching.cache_blocks import remove_stats

        cache_dit.disable_cache(stack.pipe)
        for t in stack.modules():  # cache-dit 1.5.3 leaves its statistics on the block lists it cached
            for m in t.modules():
                remove_stats(m)
    else:
        for t in stack.modules():
            if getattr(t, "is_cache_enabled", False):
                t.disable_cache()
    # Both libraries undo their hooks but leave attributes behind: the original forward as an instance attribute (a
    # bound method of the class's own forward; diffusers' remove_hook and cache-dit 1.5.3's release both do this), an
    # empty diffusers HookRegistry, diffusers' `_cache_config = None`; cache-dit's patch functors (Wan VACE) leave
    # their patched forwards and counters (`_is_patched`, `_i`, `_vace_layers`). Drop what the cache added and give
    # back a forward it replaced, so that the modules are as before (draft attention's own attributes, which it may
    # add during a forward, stay for its own undo; a hook registry that holds hooks registered since stays too).
    for t in stack.modules():
        for m in t.modules():
            had = stack._before_cache.get(id(m))
            if had is None:
                continue
            d = m.__dict__
            for key in [k for k in d if k not in had and not k.startswith("_draftattention")]:
                if key == "_diffusers_hook" and d[key].hooks:
                    continue
                del d[key]
            if "forward" in had and d.get("forward") is not had["forward"]:
                d["forward"] = had["forward"]
            # cache-dit 1.5.3 swaps a transformer's block lists in per forward with unittest.mock.patch.object, whose
            # undo deletes and re-adds each list: a list then sits last among the children. diffusers' First Block
            # Cache takes the first block list it meets in that order as the head, so on HunyuanVideo (dual- and
            # single-stream lists) a later First Block Cache took a single-stream block as its head and failed.
            order = stack._child_order.get(id(m))
            if order is not None and list(m._modules) != order and set(m._modules) == set(order):
                children = dict(m._modules)
                m._modules.clear()
                m._modules.update((name, children[name]) for name in order)
    stack._before_cache = {}
    stack._child_order = {}


def _config_fields(cfg) -> str:
    if dataclasses.is_dataclass(cfg):
        items = []
        for f in dataclasses.fields(cfg):
            v = getattr(cfg, f.name)
            if f.default is not dataclasses.MISSING and _same(v, f.default):
                continue
            if isinstance(v, (list, tuple, torch.Tensor)) and len(v) > 8:
                v = f"<{len(v)} values>"
            elif callable(v):
                v = getattr(v, "__name__", "fn")
            items.append(f"{f.name}={v}")
        return ", ".join(items)
    return ""


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001  (tensors)
        return False


def _kwargs_text(kw: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kw.items())

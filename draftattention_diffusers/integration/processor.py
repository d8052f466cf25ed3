"""``DraftAttnProcessor``: one processor instance for every attention module of a supported transformer.

How it knows what it needs (see docs/design.md):

* **which module is video self-attention**: a role table built from the transformer's module names when the
  processor is attached (``enable_draft_attention``, or ``transformer.set_attn_processor`` once draft attention is
  installed), or, after a first bare ``transformer.set_attn_processor(proc)``, at the first call: the processor then
  finds its transformer on the Python call stack, once.
* **the token grid**: a forward pre-hook on the transformer asks the model family (``ModelFamily.forward_layout``,
  from the latents or the forward's other arguments), and where the video tokens sit in the sequence.
* **the attention call**: video self-attention runs the model's own processor, whose ``dispatch_attention_fn`` call
  comes to :meth:`DraftAttnProcessor._route` (``routing.py``); families whose processors call PyTorch's attention
  themselves compute q, k, v in ``ModelFamily.self_attention``.
* **the denoising step**: the same pre-hook finds the pipeline that is calling the transformer *now* (on the call
  stack; no reference to a pipeline is kept) and asks its scheduler (``step_index``, None at step 0, and
  ``len(timesteps)``); that is right with CFG (both calls see one step), Wan2.2's two experts (one scheduler),
  HunyuanVideo, one transformer shared by several pipelines, and pipelines built from another's components. A call
  without a pipeline uses ``processor.set_step(step, num_steps)``; with neither, a warm-up fraction in (0, 1) runs
  dense (with a warning), never sparse by accident.
* **token order**: with ``reorder="per_forward"`` the video tokens are in tile order in *every* forward that can be
  sparse (``dense_steps_fraction < 1``), dense steps included, so that whatever a step cache keeps from one forward
  to the next is in one order.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import operator
import sys
from functools import partial
from typing import Any, Callable

import torch
from diffusers import DiffusionPipeline
from diffusers.modular_pipelines import ModularPipeline
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry, dispatch_attention_fn
from diffusers.utils.constants import DIFFUSERS_ATTN_BACKEND
from diffusers.utils.torch_utils import unwrap_module

from ..attention import draft_attention
from ..backends import AttentionInputs, get_backend, resolve_backend
from ..config import DraftAttentionConfig, make_config
from ..core.layout import VideoGrid, get_layout
from ..core.tracing import is_exporting
from ..models import ModelFamily, family_for, require_family, supported_transformers
from ..models.base import AttentionRole, TileOrder, forward_latents, register_hook
from ..models.hunyuan_video import HunyuanVideoFamily
from ..models.wan import WanFamily
from . import parallel, routing
from .lifecycle import ROLE_ATTR, Installation, attention_processors, install, installation, uninstall
from .stats import AttentionEvent, DraftStats, count_call, warn_once

Observer = Callable[[AttentionEvent], None]
_DEFAULT_BACKEND = AttentionBackendName(DIFFUSERS_ATTN_BACKEND)
_PIPELINE_TYPES = (DiffusionPipeline, ModularPipeline)
_NO_RUN = object()


def processor_keywords(processor: Any) -> frozenset[str] | None:
    """The argument names an attention processor's ``__call__`` takes by keyword (None: any, it has ``**kwargs``)."""
    try:
        params = inspect.signature(processor).parameters.values()
    except (TypeError, ValueError):  # no signature to read: pass everything on
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def accept_processor_keywords(names) -> None:
    """Name ``names`` in the signature of :meth:`DraftAttnProcessor.__call__`.

    diffusers' attention modules pass a processor only the keyword arguments its signature names (``inspect.signature
    (self.processor.__call__)``) and drop the others; a model whose blocks pass arguments that way (LTX-2.3's
    spatio-temporal guidance: ``perturbation_mask``, ``all_perturbed``) would lose them under draft attention. Every
    keyword a model's own processor takes is named when draft attention attaches, and each call passes on what that
    processor takes (``AttentionRole.keywords``). The function takes them all through ``**kwargs``."""
    fn = DraftAttnProcessor.__call__
    sig = inspect.signature(fn)
    new = sorted(set(names) - set(sig.parameters))
    if new:
        *named, rest = sig.parameters.values()  # rest: **kwargs, which receives them
        fn.__signature__ = sig.replace(parameters=[
            *named, *(inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None) for n in new), rest])


def num_dense_steps(fraction: float, num_steps: int) -> int:
    """Steps ``0 .. n-1`` run dense, ``n = ceil(fraction * num_steps)`` (50 steps at 0.25: steps 0-12)."""
    return min(num_steps, math.ceil(round(fraction * num_steps, 9)))


def _scheduler_step(pipe) -> tuple[int, int] | None:
    sched = getattr(pipe, "scheduler", None)
    timesteps = getattr(sched, "timesteps", None)
    if sched is None or timesteps is None or not hasattr(sched, "step_index"):
        return None
    step = sched.step_index
    return (0 if step is None else int(step)), len(timesteps)


def _pipeline_step(family, pipe, pipe_frame) -> tuple[int, int] | None:
    """``(step, num_steps)`` of a running call of ``pipe`` (its frame ``pipe_frame``): the family knows pipelines
    whose step is not the scheduler's (diffusion forcing, schedulers without ``step_index``), else the scheduler."""
    return family.pipeline_step(pipe, pipe_frame.f_locals) or _scheduler_step(pipe)


def calling_step(family, frame) -> tuple[int, int] | None:
    """``(step, num_steps)`` of the pipeline calling the transformer now (on the call stack above ``frame``), read as
    draft attention reads it (:func:`_pipeline_step`); None without a pipeline or a step."""
    pipe, pipe_frame = _calling_pipeline(frame)
    return None if pipe is None else _pipeline_step(family, pipe, pipe_frame)


def _calling_pipeline(frame) -> tuple[DiffusionPipeline | None, Any]:
    """The innermost pipeline on the call stack above ``frame`` (the one calling the transformer now; a diffusers
    pipeline or a modular pipeline) and its frame (the pipeline's loop variables are its locals), or
    ``(None, None)``."""
    while frame is not None:
        obj = frame.f_locals.get("self")
        if isinstance(obj, _PIPELINE_TYPES):
            return obj, frame
        frame = frame.f_back
    return None, None


def _section_owner(family, frame, pipe, pipe_frame) -> tuple[Any, Any]:
    """The object whose ``__call__`` holds the section index of a pipeline that denoises in sections, and its frame:
    the innermost ``__call__`` frame above ``frame`` (the transformer's caller), up to the pipeline's own, whose
    ``self`` is one of ``family.section_loops``: a modular pipeline's loop block (Helios's chunk loop, its pyramid
    stage loop; not its ``loop_step``) or the pipeline, whose ``__call__`` runs the section loop while the steps may
    run in a method of its own (LTX-2's DFR temporal refine: ``denoise`` per tile); else the pipeline and
    ``pipe_frame``."""
    names = family.section_loops
    while names and frame is not None:
        obj = frame.f_locals.get("self")
        if frame.f_code.co_name == "__call__":
            if any(c.__name__ in names for c in type(obj).__mro__):
                return obj, frame
            if obj is pipe:  # the pipeline's own call: no section loop above it
                break
        frame = frame.f_back
    return pipe, pipe_frame


def _user_chose_backend(processor_backend) -> bool:
    """The user picked diffusers' attention backend: ``set_attention_backend``, the ``attention_backend(...)``
    context manager or the ``DIFFUSERS_ATTN_BACKEND`` environment variable."""
    return processor_backend is not None or _AttentionBackendRegistry._active_backend != _DEFAULT_BACKEND \
        or _DEFAULT_BACKEND != AttentionBackendName.NATIVE


class DraftAttnProcessor:
    """Draft attention for the video self-attention of every supported transformer (``draftattention info``).

    One instance serves every attention module: video self-attention runs draft attention (or dense during the
    warm-up steps and in ``dense_layers``); cross-attention, audio and text refiners run the processor they had
    before (the model's own, or the user's) unchanged.

    Args:
        config: a :class:`DraftAttentionConfig` (or dict); ``**overrides`` change single fields.

    Example:
        >>> pipe.transformer.set_attn_processor(DraftAttnProcessor(sparsity=0.9))   # doctest: +SKIP
        >>> video = pipe(prompt, num_inference_steps=50).frames                      # doctest: +SKIP
        >>> print(get_draft_stats(pipe).format())                                    # doctest: +SKIP

    Raises:
        ValueError: on a module that is not part of a supported transformer, ``dense_layers`` beyond the
            transformer's blocks, or a backend that cannot run.
    """

    _is_draft_attention = True
    families: tuple[str, ...] | None = None  # names (ModelFamily.name) of the families it serves; None: every one

    def __init__(self, config: DraftAttentionConfig | dict | None = None, **overrides: Any) -> None:
        self.config = make_config(config, **overrides)
        # what sparse calls of this forward use: the config, or the milder warm-up's (config.warmup_sparsity)
        self._forward_config = self.config
        self._warmup_config = (None if self.config.warmup_sparsity is None
                               else self.config.replace(sparsity=self.config.warmup_sparsity))
        self.stats = DraftStats()
        self._roles: dict[torch.nn.Module, AttentionRole] = {}
        self._transformers: list[torch.nn.Module] = []
        self._order = TileOrder()  # video tokens in tile order for this forward (config.reorder="per_forward")
        self._observers: list[Observer] = []
        self._manual_step: tuple[int, int] | None = None
        self._run_key = None
        self._run_resets_after = False  # the pipeline sets new timesteps after the run's last section (its family)
        self._untiled_run = _NO_RUN  # the pipeline call (its timesteps) that must stay in diffusers' token order
        self._backend_choice = None
        self._parallel_choice = None
        self._dense_kernels: dict[tuple, str | None] = {}  # (device, dtype, head dim) -> dense_backend="auto"'s pick
        self._resolved: set[tuple] = set()  # (device, dtype, head dim) whose sparse backends are resolved
        self._kernel: str | None = None  # the dense kernel of this forward (None: the modules' own processors)
        self._routers: dict[type, Callable] = {}  # model processor class -> its __call__ with the attention routed
        self._routing: tuple | None = None  # (attn, family, role, dense, kernel) of the routed call in progress
        self._dense_modules: dict[str, str] = {}  # video self-attention modules that always run dense -> why
        # per forward
        self.grid: VideoGrid | None = None
        self.step: int | None = None
        self.num_steps: int | None = None
        self._dense_forward = False
        self._mask_cache: tuple[Any, Any] | None = None
        self._cp: parallel.ContextParallelState | None = None  # set per forward under context parallelism
        self._video_start: int | None = None  # where the video tokens start (ModelFamily.video_start), per forward

    # diffusers sets these two on every processor (set_attention_backend / reset_attention_backend /
    # enable_parallelism). They are passed on to the processors draft attention keeps as the dense path, so that
    # those behave, and are restored by disable, exactly as if draft attention had never been on.
    @property
    def _attention_backend(self):
        return self._backend_choice

    @_attention_backend.setter
    def _attention_backend(self, value) -> None:
        self._backend_choice = value
        self._pass_on("_attention_backend", value)

    @property
    def _parallel_config(self):
        return self._parallel_choice

    @_parallel_config.setter
    def _parallel_config(self, value) -> None:
        self._parallel_choice = value
        self._pass_on("_parallel_config", value)

    def _pass_on(self, attr: str, value) -> None:
        for role in self._roles.values():
            if hasattr(role.default_processor, attr):
                setattr(role.default_processor, attr, value)

    # ----------------------------------------------------------------------------------------------- public
    def set_step(self, step: int | None, num_steps: int | None = None) -> None:
        """Tell the processor the denoising step of transformer calls made **without a pipeline** (a pipeline call
        always follows its own scheduler); ``set_step(None)`` forgets it.

        Raises ``ValueError`` unless ``0 <= step < num_steps`` are integers (numpy integers are accepted)."""
        if step is None:
            self._manual_step = None
            return
        try:
            if isinstance(step, bool) or isinstance(num_steps, bool):
                raise TypeError
            step, num_steps = operator.index(step), operator.index(num_steps)
        except TypeError:
            raise ValueError(f"set_step({step!r}, {num_steps!r}): expected integers 0 <= step < num_steps") from None
        if not 0 <= step < num_steps:
            raise ValueError(f"set_step({step}, {num_steps}): expected 0 <= step < num_steps")
        self._manual_step = (step, num_steps)

    def add_observer(self, fn: Observer) -> None:
        """Call ``fn(AttentionEvent)`` on every video self-attention call (capture, mask pictures)."""
        self._observers.append(fn)

    def remove_observer(self, fn: Observer) -> None:
        self._observers.remove(fn)

    def attach(self, transformer: torch.nn.Module, dense_processors: dict[str, Any] | None = None,
               prefix: str | None = None, via_enable: bool = False) -> None:
        """Install this processor's hooks and role table on ``transformer`` (whose modules run this processor, or
        are about to). Whatever draft attention had installed there before is removed first.

        Args:
            dense_processors: ``{"<module>.processor": processor}``, what each module ran before (kept as the dense
                path and restored by ``disable_draft_attention``); default: the transformer's processors now (draft
                processors among them are replaced by the model's own class).
            prefix: layer-name prefix in the statistics (``"transformer_2"`` for Wan2.2's second expert).

        Raises ``ValueError`` for an unsupported transformer or ``dense_layers`` beyond its blocks.
        """
        family = require_family(transformer)  # once per attach: kept on the installation and every role entry
        if self.families is not None and family.name not in self.families:
            raise ValueError(f"{type(self).__name__} supports {self.families}, not {type(transformer).__name__}; "
                             "use DraftAttnProcessor for any supported family")
        current = attention_processors(transformer) if dense_processors is None else dense_processors
        roles = family.roles(transformer, current)
        blocks = 1 + max((r.block_index for r in roles.values() if r.video_self), default=-1)
        too_far = [i for i in self.config.dense_layers if i >= blocks]
        if too_far:
            raise ValueError(f"dense_layers={self.config.dense_layers}: {type(transformer).__name__} has {blocks} "
                             f"blocks with video self-attention (indices 0..{blocks - 1}); {too_far} do not exist")
        uninstall(transformer)
        restore = {f"{r.name}.processor": r.default_processor for r in roles.values()}
        roles = {m: dataclasses.replace(r, keywords=processor_keywords(r.default_processor)) for m, r in roles.items()}
        accept_processor_keywords(k for r in roles.values() for k in r.keywords or ())
        if family.routes_attention_call:
            roles = {m: self._route_role(family, transformer, m, r) if r.video_self else r
                     for m, r in roles.items()}
        if prefix:
            roles = {m: dataclasses.replace(r, name=f"{prefix}.{r.name}") for m, r in roles.items()}
        for m, r in roles.items():  # on the module itself: no dict lookup keyed by module (torch.compile guards)
            m.__dict__[ROLE_ATTR] = (self, family, r)
            self._roles[m] = r
            if r.video_self:
                self.stats.track(r.name, m)
            if r.dense_reason is not None:
                self._dense_modules[r.name] = r.dense_reason
                warn_once(f"{r.name}: {r.dense_reason}; it runs dense attention (listed in the statistics)")
            elif r.video_self and r.custom:
                warn_once(f"{r.name} has a custom processor ({type(r.default_processor).__name__}): it runs in dense "
                          "steps and dense_layers, but sparse steps compute attention with draft attention's own "
                          "q/k/v path, bypassing it")
        if self._backend_choice is None:  # a backend the user set before installing stays theirs
            self._backend_choice = next((getattr(r.default_processor, "_attention_backend", None)
                                         for r in roles.values() if r.video_self), None)
        for attr, value in (("_attention_backend", self._backend_choice), ("_parallel_config", self._parallel_choice)):
            if value is not None:
                self._pass_on(attr, value)
        param = next(transformer.parameters(), None)
        if param is not None:  # kernels chosen now for the model's device, outside any compiled graph
            self._choose_kernels(param.device, param.dtype, family.head_dim(transformer))
        register_hook(transformer, "pre", partial(self._on_forward, family), with_kwargs=True)
        order_ok = family.tile_order_hooks(transformer, self._order)  # registered after: they read the decision
        watch = next((m for m, r in roles.items() if r.video_self), None)
        install(transformer, Installation(self, family, restore, watch, via_enable, prefix))
        _warn_if_unchecked(family)
        transformer.__dict__["_draftattention_tile_order"] = order_ok
        if transformer not in self._transformers:
            self._transformers.append(transformer)

    def detach(self, transformer: torch.nn.Module | None = None) -> None:
        """Remove this processor's hooks and role tables from ``transformer`` (default: every transformer it is
        attached to). The processors stay installed; use ``disable_draft_attention`` to restore the originals."""
        for t in [transformer] if transformer is not None else list(self._transformers):
            inst = installation(t)
            if inst is not None and inst.processor is self:
                uninstall(t)
        self._order.set(None, None)

    # -------------------------------------------------------------------------------- lifecycle callbacks
    def _forget(self, module: torch.nn.Module) -> None:
        role = self._roles.pop(module, None)
        if role is not None and role.video_self:
            self.stats.untrack([module])
            self._dense_modules.pop(role.name, None)

    def _forget_transformer(self, transformer: torch.nn.Module) -> None:
        self._transformers = [t for t in self._transformers if t is not transformer]
        transformer.__dict__.pop("_draftattention_tile_order", None)

    # ------------------------------------------------------------------------------------------- per forward
    def _on_forward(self, family: ModelFamily, transformer, args, kwargs) -> None:
        if not torch.compiler.is_compiling():
            self._prepare_forward(family, transformer, args, kwargs, sys._getframe(1))
        elif self._manual_step is None and 0.0 < self.config.dense_steps_fraction < 1.0:
            # The whole model is being compiled and the step must come from the calling pipeline: look it up
            # outside the graph (a graph break at the start of the forward; fullgraph needs set_step()).
            _prepare_forward_outside_graph(self, family, transformer, args, kwargs)
        else:  # compiled whole, step known without a pipeline: only what a graph can hold (no statistics)
            latents = forward_latents(args, kwargs)
            self._kernel = self._forward_kernel(family, transformer, latents)
            grid, self._video_start = family.forward_layout(transformer, args, kwargs)
            self._begin_forward(grid, self._manual_step,
                                latents.device if transformer.__dict__.get("_draftattention_tile_order")
                                and not self._video_start else None, record=False)

    def _prepare_forward(self, family: ModelFamily, transformer, args, kwargs, frame=None,
                         discovered: VideoGrid | None | bool = False) -> None:
        """Start of a transformer forward (eager): is this processor still installed, which pipeline calls, the
        grid, context parallelism, then :meth:`_begin_forward`. ``discovered``: the grid of a forward that began
        before the hooks existed (read from its locals, None if not found; it runs in diffusers' token order)."""
        inst = installation(transformer)
        if inst is None or inst.processor is not self or (inst.watch is not None and inst.watch.processor is not self):
            # Its processors were replaced module by module (attn.set_processor): nothing of ours may stay.
            uninstall(transformer)
            self._order.set(None, None)
            return
        frame = frame if frame is not None else sys._getframe(1)
        pipe, pipe_frame = _calling_pipeline(frame)
        if pipe is not None:
            step_info = _pipeline_step(family, pipe, pipe_frame)
            key = getattr(pipe.scheduler, "timesteps", None)
            if key is not self._run_key:  # new timesteps: a new pipeline call (fresh statistics), or its next section
                owner, owner_frame = _section_owner(family, frame, pipe, pipe_frame)
                section = family.pipeline_section(owner, owner_frame.f_locals)
                sections = self.stats.sections
                if section and sections and sections[-1].index < section:  # the call goes on: the counts too
                    if self._untiled_run is self._run_key:
                        self._untiled_run = key
                else:
                    self.stats.reset()
                if section is not None:
                    self.stats.begin_section(section)
                self._run_key = key
                self._run_resets_after = section is not None and family.pipeline_resets_after_sections(pipe)
        else:
            step_info = self._manual_step
        latents = forward_latents(args, kwargs)
        grid, self._video_start = (family.forward_layout(transformer, args, kwargs) if discovered is False
                                   else (discovered, None))
        device = latents.device
        self.stats.to_device(device)
        self._kernel = self._forward_kernel(family, transformer, latents)
        self._cp = parallel.begin_forward(self, transformer, family, grid, args, kwargs)
        if self._cp is not None and self.config.selection == "topk_heads":
            warn_once("selection='topk_heads' shares the tile budget among the heads of each rank under context "
                      "parallelism, so its masks differ from one GPU; use 'topk' for results identical to one GPU")
        # the tile-order hooks permute the head of the sequence: video tokens behind others gather per call instead
        order_ok = (discovered is False and transformer.__dict__.get("_draftattention_tile_order")
                    and not self._video_start)
        self._begin_forward(grid, step_info, device if order_ok else None)

    def _begin_forward(self, grid: VideoGrid | None, step_info: tuple[int, int] | None,
                       tile_order_device: torch.device | None = None, record: bool = True) -> None:
        """Grid, step, dense or sparse, and whether the tokens of this forward run in tile order."""
        self.grid = grid
        self._mask_cache = None
        self.step, self.num_steps = step_info if step_info else (None, None)
        fraction = self.config.dense_steps_fraction
        if fraction == 0.0:
            dense, mode = False, "sparse"
        elif fraction == 1.0:
            dense, mode = True, "dense"
        elif step_info is None:
            dense, mode = True, "dense (step unknown)"
            if record:
                self.stats.record_fallback(
                    "draft attention does not know the denoising step (no pipeline is calling the transformer and "
                    "set_step() was not called): running dense so that warm-up steps are never sparse; use "
                    "processor.set_step(step, num_steps) or dense_steps_fraction=0")
        else:
            dense = self.step < num_dense_steps(fraction, self.num_steps)
            mode = "dense" if dense else "sparse"
            if dense and self._warmup_config is not None:  # the opt-in milder warm-up: sparse at its sparsity
                dense, mode = False, "warmup"
        self._forward_config = self._warmup_config if mode == "warmup" else self.config
        self._dense_forward = dense
        if record:
            self.stats.record_step(self.step, mode)
            if not dense:
                for name, why in self._dense_modules.items():
                    self.stats.record_fallback(f"{name}: {why}; running dense attention for it")
        # Tile order in every forward that may be sparse, dense ones too: step caches keep tensors across forwards.
        reorder = (fraction < 1.0 and grid is not None and tile_order_device is not None
                   and self.config.reorder == "per_forward" and self._cp is None
                   and (self._untiled_run is _NO_RUN or self._untiled_run is not self._run_key))
        layout = get_layout(grid, 0, self.config.region_size, tile_order_device) if reorder else None
        self._order.set(layout.perm if layout else None, layout.inv_perm if layout else None)

    # ------------------------------------------------------------------------------------------------- call
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None,
                 image_rotary_emb=None, **kwargs):
        # (its signature also names the model processors' keywords: accept_processor_keywords)
        entry = attn.__dict__.get(ROLE_ATTR)
        if entry is None or entry[0] is not self:
            entry = self._discover(attn)
        _, family, role = entry
        if kwargs and role.keywords is not None:  # what diffusers would pass the model's processor
            kwargs = {k: v for k, v in kwargs.items() if k in role.keywords}
        rope = rotary_emb if rotary_emb is not None else image_rotary_emb
        if rotary_emb is not None and image_rotary_emb is not None:  # a separate key RoPE (6th argument): kept
            kwargs["key_rope"] = image_rotary_emb
        default = role.default_processor
        # not video self-attention, or a call in which the model computes no attention (LTX-2.3's STG pass): the
        # model's processor, not counted
        if not role.video_self or family.skips_attention(kwargs):
            return family.call_default(default, attn, hidden_states, encoder_hidden_states, attention_mask, rope,
                                       **kwargs)
        if self._cp is not None:  # the model's mask of a rank's share is wrong for padded text: rebuilt
            attention_mask = self._cp.local_mask(attention_mask)
        # (dense_layers is read only when set: compiled blocks then share one graph instead of one per block index)
        dense = self._dense_forward or (bool(self.config.dense_layers) and role.block_index in self.config.dense_layers)
        # a user's own processor on the module stays the dense path unless a dense kernel was asked for by name
        kernel = None if not dense or (role.custom and self.config.dense_backend == "auto") else self._kernel
        if role.dense_reason is not None:  # its attention call cannot be routed: the model's processor, visibly
            dense, kernel = True, None
        if dense and kernel is None and (not self._observers or role.dense_reason is not None):
            count_call(attn, None)
            return family.call_default(default, attn, hidden_states, encoder_hidden_states, attention_mask, rope,
                                       **kwargs)
        own = role.routed_processor
        if own is None:  # the family computes q, k, v itself and hands `attend` video first, then text
            attend = partial(self._attend, attn, role, dense, kernel)
            return family.self_attention(attn, hidden_states, encoder_hidden_states, attention_mask, rope, attend)
        # the model's own processor, whose dispatch_attention_fn call comes to _route
        self._routing = (attn, family, role, dense, kernel)
        out = family.call_default(partial(self._routers[type(own)], own), attn, hidden_states, encoder_hidden_states,
                                  attention_mask, rope, **kwargs)
        if self._routing is not None:  # it computed its attention without the dispatcher: its own (dense) result
            self._routing = None
            count_call(attn, None)
            self._record_fallback(lambda: f"{role.name}: {type(default).__name__} made no dispatch_attention_fn "
                                          "call; its own attention ran (dense)")
        return out

    def _route(self, original, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
               enable_gqa=False, attention_kwargs=None, *, backend=None, parallel_config=None):
        """``dispatch_attention_fn`` as seen by the model processors draft attention routes (``routing.py``): the
        first call of a routed processor call is its video self-attention, computed by draft attention; any other
        call, or one draft attention cannot compute exactly, goes to ``original`` with the model's arguments."""
        routing, self._routing = self._routing, None
        problem = None if routing is None else _unroutable_call(query, key, value, dropout_p, is_causal, enable_gqa,
                                                                 attention_kwargs)
        if routing is None or problem is not None:
            if problem is not None:
                count_call(routing[0], None)
                self._record_fallback(lambda: f"{routing[2].name}: {problem()}; running the model's own attention "
                                              "call")
            return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                            scale=scale, enable_gqa=enable_gqa, attention_kwargs=attention_kwargs, backend=backend,
                            parallel_config=parallel_config)
        attn, family, role, dense, kernel = routing
        grid, seq = self.grid, query.shape[1]
        if grid is None or self._cp is not None:  # (under context parallelism the sequence is gathered later)
            return self._attend(attn, role, dense, kernel, query, key, value, 0, attn_mask, scale)
        others = seq - grid.num_tokens  # tokens that stay dense: text, keyframes, history, audio
        start = self._video_start if self._video_start is not None else (
            others if family.text_position == "leading" else 0)
        if family.text_position == "none" and self._video_start is None or others < 0 or not 0 <= start <= others:
            others = start = 0  # the sequence is not what the family says: the grid check runs it dense, visibly
        if start == 0:  # video first, then the dense tokens (`attend`'s order)
            return self._attend(attn, role, dense, kernel, query, key, value, others, attn_mask, scale)
        # [before, video, after] -> [video, before, after]: the dense tokens keep their order, so a key-padding
        # suffix mask (padded text at the end) stays one
        n = grid.num_tokens
        q, k, v = (torch.cat([x[:, start:start + n], x[:, :start], x[:, start + n:]], dim=1)
                   for x in (query, key, value))
        mask = None if attn_mask is None else torch.cat(
            [attn_mask[..., start:start + n], attn_mask[..., :start], attn_mask[..., start + n:]], dim=-1)
        out = self._attend(attn, role, dense, kernel, q, k, v, others, mask, scale)
        return torch.cat([out[:, n:n + start], out[:, :n], out[:, n + start:]], dim=1)

    def _route_role(self, family: ModelFamily, transformer: torch.nn.Module, module: torch.nn.Module,
                    role: AttentionRole) -> AttentionRole:
        """``role`` with the model processor whose attention call is routed, or with the reason it cannot be (it
        then always runs dense)."""
        own = role.default_processor if not role.custom else family.own_processor(transformer, module)
        if own is None:
            return dataclasses.replace(role, dense_reason=f"the model's own processor class of {type(module).__name__}"
                                                          " is not known")
        cls = type(own)
        reason = routing.unroutable_reason(cls)
        if reason is not None:
            return dataclasses.replace(role, dense_reason=reason)
        if cls not in self._routers:  # one copy per class: compiled blocks share it (one graph for every block)
            self._routers[cls] = self._routed_call(cls)
        return dataclasses.replace(role, routed_processor=own)

    def _routed_call(self, cls: type) -> Callable:
        return routing.routed_call(cls, partial(self._route, routing.original_dispatch(cls)))

    def __deepcopy__(self, memo):
        # A deep copy (of an enabled transformer) gets routed calls of its own: the originals' globals route to
        # this processor, and a function is never copied.
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            if key != "_routers":
                clone.__dict__[key] = copy.deepcopy(value, memo)
        clone._routers = {cls: clone._routed_call(cls) for cls in self._routers}
        return clone

    def _forward_kernel(self, family: ModelFamily, transformer, x: torch.Tensor) -> str | None:
        device = x.device
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else x.dtype
        return self._choose_kernels(device, dtype, family.head_dim(transformer))

    def _choose_kernels(self, device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
        """Resolve the sparse backend for these inputs (with and without padded keys and gradients) and return
        the dense kernel, in eager code: the choices are then dict lookups inside compiled graphs."""
        key = (device.type, device.index, dtype, head_dim)
        if key not in self._resolved:
            _resolve_sparse_backends(self.config, device, dtype, head_dim)
            self._resolved.add(key)
        return self._dense_kernel_for(device, dtype, head_dim)

    def _dense_kernel_for(self, device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
        """Which of our dense kernels runs the dense calls of a forward (None: each module's own processor).

        ``dense_backend="auto"`` takes flash-attn-4 where it can run, unless the user chose diffusers' attention
        backend: theirs is respected (so is a processor of their own on a module, see :meth:`__call__`)."""
        choice = self.config.dense_backend
        if choice == "diffusers":
            return None
        if choice != "auto":
            return choice
        if _user_chose_backend(self._backend_choice):
            return None
        key = (device.type, device.index, dtype, head_dim)
        if key not in self._dense_kernels:
            self._dense_kernels[key] = _pick_dense_kernel(device, dtype, head_dim)
        return self._dense_kernels[key]

    def _attend(self, attn, role: AttentionRole, dense: bool, kernel: str | None, q, k, v, text_len: int,
                attention_mask, scale: float | None = None):
        q, k, v = _one_dtype(q, k, v)
        if self._cp is not None:  # context parallelism: attend on the gathered sequence for this rank's heads
            return self._cp.attend(q, k, v, partial(self._attend_full, attn, role, dense, kernel, scale=scale))
        return self._attend_full(attn, role, dense, kernel, q, k, v, text_len, attention_mask, scale=scale)

    def _attend_full(self, attn, role: AttentionRole, dense: bool, kernel: str | None, q, k, v, text_len: int,
                     attention_mask, scale: float | None = None):
        """Attention over ``[B, S, H, D]`` (video first, then ``text_len`` text tokens); ``scale``: the model's
        (None: ``D ** -0.5``, which is also what diffusers' attention uses then)."""
        key_lengths = self._key_lengths(attention_mask, q.shape[1]) if attention_mask is not None else None
        padding_mask = key_lengths is not False  # no mask, or a key-padding suffix that key_lengths describes
        key_lengths = key_lengths if padding_mask else None
        grid = self.grid
        fell_back = False
        if not dense:
            problem = _sparse_problem(grid, q.shape[1], text_len, padding_mask, self.config.region_size)
            if problem is not None:
                self._record_fallback(lambda: f"{role.name}: {problem()}; running dense attention for it")
                dense = fell_back = True
        model_scale, scale = scale, (scale if scale is not None else q.shape[-1] ** -0.5)
        tiles = None
        in_tile_order = self._order.active  # q, k, v (and the output) are in tile order already
        if dense:
            count_call(attn, None, fell_back)
            if kernel is not None and self.config.dense_backend == "auto" and q.requires_grad \
                    and torch.is_grad_enabled() and not get_backend(kernel).supports_backward:
                kernel = None  # training: diffusers' attention has a backward pass
            out = self._dense(q, k, v, attention_mask, key_lengths, scale, padding_mask, kernel, model_scale)
        else:
            out, tiles = draft_attention(q, k, v, grid, self._forward_config, text_len=text_len, key_lengths=key_lengths,
                                         scale=scale, draft_timer=self.stats.draft_timer, check_key_lengths=False,
                                         in_tile_order=in_tile_order)
            count_call(attn, (tiles if self._cp is None else self._cp.global_tiles(tiles)).video_sparsity)
        if self._observers:
            if in_tile_order:  # observers see diffusers' token order
                inv = get_layout(grid, text_len, self.config.region_size, q.device).inv_perm
                q, k, v = (x.index_select(1, inv) for x in (q, k, v))
            event = AttentionEvent(role.name, role.block_index, self.step, self.num_steps, q, k, v, grid, text_len,
                                   key_lengths, dense, tiles, scale)
            for fn in self._observers:
                fn(event)
        return out

    def _record_fallback(self, message: Callable[[], str]) -> None:
        """A call of this forward runs dense though it should be sparse: listed in the statistics, warned once. In
        eager code only: in a graph torch.compile traces, the message (the module's name, the shapes) would be
        guarded constants, one graph per block and per shape, and the warning cannot be traced (the call still
        counts as a dense call there, and as a compiled fallback: ``count_call``)."""
        if not torch.compiler.is_compiling():
            self.stats.record_fallback(message())

    def _dense(self, q, k, v, attention_mask, key_lengths, scale, padding_mask: bool, kernel: str | None,
               model_scale: float | None = None):
        # A dense kernel of ours takes key lengths only: any other mask goes through diffusers' dispatch.
        if kernel is None or not padding_mask:
            # No parallel_config: under context parallelism this runs on the gathered sequence already.
            return dispatch_attention_fn(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                         scale=model_scale, backend=self._attention_backend, parallel_config=None)
        return get_backend(kernel).dense_forward(q, k, v, key_lengths, scale)

    def _key_lengths(self, attention_mask: torch.Tensor, seq_len: int):
        """Key lengths int32 ``[B]`` from a boolean key mask ``[B, 1, 1, S]`` (False: not a key-padding suffix
        mask). The models build their masks as suffixes; in eager mode that is checked on the host once per forward
        (every layer gets the same mask object), never inside a compiled graph or an export."""
        m = attention_mask
        if not (m.dtype == torch.bool and m.dim() == 4 and m.shape[1] == m.shape[2] == 1 and m.shape[-1] == seq_len):
            return False
        lengths = m.reshape(m.shape[0], seq_len).sum(dim=-1, dtype=torch.int32)
        if torch.compiler.is_compiling() or is_exporting():
            return lengths
        if self._mask_cache is None or self._mask_cache[0] is not attention_mask:
            self._mask_cache = (attention_mask, _is_key_suffix(m.reshape(m.shape[0], seq_len), lengths,
                                                               self.grid.num_tokens if self.grid is not None else 0))
        return lengths if self._mask_cache[1] else False

    # ------------------------------------------------------------------------------------------- discovery
    def _discover(self, attn: torch.nn.Module):
        """First call after a bare ``set_attn_processor``: find the transformer on the call stack and attach."""
        transformer = frame_locals = None
        frame = sys._getframe(1)
        while frame is not None:
            obj = frame.f_locals.get("self")
            if isinstance(obj, torch.nn.Module) and family_for(obj) is not None \
                    and any(m is attn for m in obj.modules()):
                transformer, frame_locals = obj, frame.f_locals
                break
            frame = frame.f_back
        if transformer is None:
            raise ValueError(f"DraftAttnProcessor was called from {type(attn).__name__}, which is not inside a "
                             f"supported transformer ({', '.join(supported_transformers())})")
        pipe, _ = _calling_pipeline(frame)
        owner = next((n for n in ("transformer", "transformer_2")
                      if unwrap_module(getattr(pipe, n, None)) is transformer), None)
        self.attach(transformer, prefix=owner)
        family = installation(transformer).family
        # This forward began before the hooks existed: read its grid from the transformer's forward locals.
        grid = family.grid_from_locals(transformer, frame_locals)
        self._prepare_forward(family, transformer, (), frame_locals, frame, discovered=grid)
        # This forward runs in diffusers' order; the rest of this pipeline call must too (step caches keep tensors
        # across its forwards). Tile order starts with the next call.
        self._untiled_run = self._run_key
        return attn.__dict__[ROLE_ATTR]


# LTX-2.3 / LTX-2.5's spatio-temporal guidance, named from the start: a bare set_attn_processor attaches at the first
# call, whose keywords diffusers has already filtered
accept_processor_keywords(("perturbation_mask", "all_perturbed"))

_OUTSIDE_GRAPH_REASON = (
    "draft attention reads the denoising step from the calling pipeline, outside the graph (one graph break at the "
    "start of the transformer's forward). With fullgraph=True on the whole transformer use regional compile "
    "(transformer.compile_repeated_blocks(fullgraph=True)), or compile without fullgraph; calling the transformer "
    "yourself, give the step (get_draft_processor(transformer).set_step(i, num_steps))")


def _prepare_forward_outside_graph(processor: DraftAttnProcessor, family, transformer, args, kwargs) -> None:
    processor._prepare_forward(family, transformer, args, kwargs)


# the pipeline is found on the call stack: not traceable, so outside the compiled graph; under fullgraph=True dynamo
# refuses the graph break and prints this reason (torch >= 2.8 takes one)
try:
    _prepare_forward_outside_graph = torch.compiler.disable(_prepare_forward_outside_graph,
                                                            reason=_OUTSIDE_GRAPH_REASON)
except TypeError:
    _prepare_forward_outside_graph = torch.compiler.disable(_prepare_forward_outside_graph)


@torch.compiler.disable  # checks (and imports) kernels: never inside a compiled graph
def _resolve_sparse_backends(config: DraftAttentionConfig, device: torch.device, dtype: torch.dtype,
                             head_dim: int) -> None:
    probe = AttentionInputs.from_tensors(*(torch.empty(1, 1, 1, head_dim, dtype=dtype, device=device),) * 2,
                                         config.tile_size)
    for padding in (False, True):
        for grad in (False, True):
            try:
                resolve_backend(config.backend, dataclasses.replace(probe, has_key_padding=padding, needs_grad=grad))
            except ValueError:
                pass  # raised with its reasons by the call that needs it


@torch.compiler.disable  # checks (and imports) flash-attn-4: never inside a compiled graph
def _pick_dense_kernel(device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """flash-attn-4 where it can run on such inputs, else None (diffusers' own attention)."""
    probe = torch.empty(1, 1, 1, head_dim, dtype=dtype, device=device)
    return None if get_backend("fa4").not_supported_reasons(AttentionInputs.from_tensors(probe, probe, 128)) \
        else "fa4"


def _unroutable_call(query, key, value, dropout_p, is_causal, enable_gqa,
                     attention_kwargs) -> Callable[[], str] | None:
    """Why draft attention cannot compute this dispatcher call exactly (None: it can), as a function that writes the
    message (called in eager code only: see ``DraftAttnProcessor._record_fallback``)."""
    if dropout_p or is_causal or enable_gqa or attention_kwargs:
        return lambda: (f"the attention call asks for dropout_p={dropout_p}, is_causal={is_causal}, "
                        f"enable_gqa={enable_gqa}, attention_kwargs={attention_kwargs}")
    if query.dim() != 4 or key.shape != value.shape or key.shape[1:] != query.shape[1:]:
        return lambda: (f"the attention call is not self-attention over one [B, S, H, D] sequence (q "
                        f"{tuple(query.shape)}, k {tuple(key.shape)}, v {tuple(value.shape)})")
    return None


def _sparse_problem(grid: VideoGrid | None, seq_len: int, text_len: int, padding_mask: bool,
                    region_size: tuple[int, int]) -> Callable[[], str] | None:
    """Why a call that should be sparse must run dense (None: it can be sparse), as a function that writes the
    message (called in eager code only: see ``DraftAttnProcessor._record_fallback``)."""
    if grid is None:
        return lambda: "the video token grid of this forward is unknown"
    if grid.num_tokens + text_len != seq_len:
        return lambda: (f"sequence of {seq_len} tokens does not match the grid {grid.frames}x{grid.height}x"
                        f"{grid.width} + {text_len} text tokens")
    if not padding_mask:
        return lambda: "the attention mask is not a key-padding suffix mask"
    tile = region_size[0] * region_size[1]
    if text_len and grid.num_tokens < tile:  # (layout.num_video_tiles == 0, in plain integers: nothing to trace)
        return lambda: (f"the video has {grid.num_tokens} tokens, fewer than one {tile}-token tile before the text "
                        "tokens: there is nothing to select")
    return None


def _warn_if_unchecked(family: ModelFamily) -> None:
    import diffusers

    release = ".".join(diffusers.__version__.split(".")[:2])
    if release != family.checked_diffusers:
        warn_once(f"draft attention's {family.title} support was checked against diffusers {family.checked_diffusers}"
                  f"; this is diffusers {diffusers.__version__}: calls it cannot interpret run dense and are listed "
                  "in the statistics")


def _one_dtype(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """Under autocast q, k, v can differ in dtype (HunyuanVideo's q/k norms give float32, v the autocast dtype):
    cast them to the autocast dtype, as diffusers' attention (SDPA) does."""
    if q.dtype == k.dtype == v.dtype or not torch.is_autocast_enabled(q.device.type):
        return q, k, v
    dtype = torch.get_autocast_dtype(q.device.type)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _is_key_suffix(mask: torch.Tensor, lengths: torch.Tensor, video_tokens: int) -> bool:
    """``mask`` [B, S] keeps a prefix of the keys per item, never cutting video keys (host check)."""
    prefix = torch.arange(mask.shape[1], device=mask.device).view(1, -1) < lengths.view(-1, 1)
    return bool(torch.equal(prefix, mask)) and int(lengths.min()) >= video_tokens


class WanDraftAttnProcessor(DraftAttnProcessor):
    """:class:`DraftAttnProcessor` restricted to ``WanTransformer3DModel`` (Wan2.1 / Wan2.2)."""

    families = (WanFamily.name,)


class HunyuanVideoDraftAttnProcessor(DraftAttnProcessor):
    """:class:`DraftAttnProcessor` restricted to ``HunyuanVideoTransformer3DModel``."""

    families = (HunyuanVideoFamily.name,)

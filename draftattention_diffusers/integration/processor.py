"""``DraftAttnProcessor``: one processor instance for every attention module of a Wan or HunyuanVideo transformer.

How it knows what it needs (see docs/design.md):

* **which module is video self-attention**: a role table built from the transformer's module names when the
  processor is attached (``enable_draft_attention``), or, after ``transformer.set_attn_processor(proc)``, at the
  first call: the processor then finds its transformer (and the pipeline, if any) on the Python call stack, once.
* **the token grid**: a forward pre-hook on the transformer reads the latent shape ``[B, C, T, H, W]``.
* **the denoising step**: the same pre-hook asks the pipeline's scheduler (``step_index``, None at step 0, and
  ``len(timesteps)``); that is right with CFG (both calls see one step), Wan2.2's two experts (one scheduler) and
  HunyuanVideo. Without a pipeline, ``processor.set_step(step, num_steps)`` tells it; with neither, a warm-up
  fraction > 0 runs dense (with a warning), never sparse by accident.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from functools import partial
from typing import Any, Callable

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn

from ..backends import get_backend
from ..config import DraftAttentionConfig, make_config
from ..core.attention import draft_attention
from ..core.layout import VideoGrid, get_layout
from ..models import ModelFamily, family_for, require_family, supported_transformers
from ..models.base import AttentionRole, TileOrder
from . import parallel
from .stats import AttentionEvent, DraftStats, warn_once

Observer = Callable[[AttentionEvent], None]
_ROLE_ATTR = "_draftattention_role"  # (processor, family, role) on each attention module of an attached transformer


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


class DraftAttnProcessor:
    """Draft attention for the video self-attention of Wan2.1/2.2 and HunyuanVideo transformers.

    One instance serves every attention module: video self-attention runs draft attention (or dense during the
    warm-up steps and in ``dense_layers``); cross-attention and HunyuanVideo's token refiner run the model's own
    processor unchanged.

    Args:
        config: a :class:`DraftAttentionConfig` (or dict); ``**overrides`` change single fields.

    Example:
        >>> pipe.transformer.set_attn_processor(DraftAttnProcessor(sparsity=0.9))   # doctest: +SKIP
        >>> video = pipe(prompt, num_inference_steps=50).frames                      # doctest: +SKIP
        >>> print(pipe.transformer.attn_processors["blocks.0.attn1.processor"].stats.format())  # doctest: +SKIP

    Raises:
        ValueError: on a module that is not part of a supported transformer, or a backend that cannot run.
    """

    # diffusers sets these on every processor (set_attention_backend / enable_parallelism); we pass them on.
    _attention_backend = None
    _parallel_config = None
    families: tuple[str, ...] | None = None  # None: every supported family

    def __init__(self, config: DraftAttentionConfig | dict | None = None, **overrides: Any) -> None:
        self.config = make_config(config, **overrides)
        self.stats = DraftStats()
        self._roles: dict[torch.nn.Module, tuple[ModelFamily, AttentionRole]] = {}
        self._hooks: dict[torch.nn.Module, list] = {}
        self._tile_order_ok: dict[torch.nn.Module, bool] = {}
        self._order = TileOrder()  # video tokens in tile order for this forward (config.reorder="per_forward")
        self._observers: list[Observer] = []
        self._pipe = None
        self._manual_step: tuple[int, int] | None = None
        self._run_key = None
        # per forward
        self.grid: VideoGrid | None = None
        self.step: int | None = None
        self.num_steps: int | None = None
        self._dense_forward = False
        self._mask_cache: tuple[Any, Any] | None = None
        self._cp: parallel.ContextParallelState | None = None  # set per forward under context parallelism

    # ----------------------------------------------------------------------------------------------- public
    def set_step(self, step: int | None, num_steps: int | None = None) -> None:
        """Tell the processor the denoising step (for transformers called without a pipeline); None forgets it."""
        if step is None:
            self._manual_step = None
            return
        if num_steps is None or not (0 <= step < num_steps):
            raise ValueError(f"set_step({step}, {num_steps}): expected 0 <= step < num_steps")
        self._manual_step = (int(step), int(num_steps))

    def add_observer(self, fn: Observer) -> None:
        """Call ``fn(AttentionEvent)`` on every video self-attention call (capture, mask pictures)."""
        self._observers.append(fn)

    def remove_observer(self, fn: Observer) -> None:
        self._observers.remove(fn)

    def attach(self, transformer: torch.nn.Module, pipe=None) -> None:
        """Learn the roles of ``transformer``'s attention modules and hook its forward (grid and step).

        Called by ``enable_draft_attention`` before the processor is installed (so the current processors are kept
        as the dense path), or automatically at the first call after ``set_attn_processor``.
        """
        family = require_family(transformer)
        if self.families is not None and family.name not in self.families:
            raise ValueError(f"{type(self).__name__} supports {self.families}, not {type(transformer).__name__}; "
                             "use DraftAttnProcessor for any supported family")
        if transformer in self._hooks:
            return
        roles = family.roles(transformer, transformer.attn_processors)
        # Name layers after the pipeline attribute ("transformer_2.blocks.3.attn1"): Wan2.2 has two experts.
        owner = next((n for n in ("transformer", "transformer_2") if getattr(pipe, n, None) is transformer), None)
        if owner:
            roles = {m: dataclasses.replace(r, name=f"{owner}.{r.name}") for m, r in roles.items()}
        self._roles.update({m: (family, r) for m, r in roles.items()})
        for m, r in roles.items():  # on the module itself: no dict lookup keyed by module (torch.compile guards)
            setattr(m, _ROLE_ATTR, (self, family, r))
        hooks = [transformer.register_forward_pre_hook(partial(self._on_forward, family), with_kwargs=True)]
        order_hooks = family.tile_order_hooks(transformer, self._order)  # registered after: they read the decision
        self._tile_order_ok[transformer] = order_hooks is not None
        self._hooks[transformer] = hooks + (order_hooks or [])
        if pipe is not None:
            self._pipe = pipe

    def detach(self) -> None:
        """Remove the forward hooks and forget the role tables."""
        for handles in self._hooks.values():
            for handle in handles:
                handle.remove()
        self._hooks.clear()
        for m in self._roles:
            if getattr(m, _ROLE_ATTR, (None,))[0] is self:
                delattr(m, _ROLE_ATTR)
        self._tile_order_ok.clear()
        self._order.set(None, None)
        self._roles.clear()
        self._pipe = None

    # ------------------------------------------------------------------------------------------- per forward
    def _on_forward(self, family: ModelFamily, transformer, args, kwargs) -> None:
        latents = args[0] if args else kwargs["hidden_states"]
        self._start_forward(transformer, family, family.grid(transformer, latents), args, kwargs,
                            latents.device if self._tile_order_ok.get(transformer) else None)

    def _start_forward(self, transformer, family: ModelFamily, grid: VideoGrid | None, args, kwargs,
                       tile_order_device: torch.device | None) -> None:
        """Context parallelism of this forward (if any), then :meth:`_begin_forward`."""
        self._cp = parallel.begin_forward(self, transformer, family.name, grid, args, kwargs)
        if self._cp is not None and self.config.selection == "topk_heads":
            warn_once("selection='topk_heads' shares the tile budget among the heads of each rank under context "
                      "parallelism, so its masks differ from one GPU; use 'topk' for results identical to one GPU")
        self._begin_forward(grid, tile_order_device)

    def _begin_forward(self, grid: VideoGrid | None, tile_order_device: torch.device | None = None) -> None:
        """Start of a transformer forward: grid, step, dense or sparse, and whether tokens run in tile order."""
        self.grid = grid
        self._mask_cache = None
        step_info = self._manual_step or (_scheduler_step(self._pipe) if self._pipe is not None else None)
        if self._pipe is not None:  # a new pipeline call sets new timesteps: start fresh statistics
            key = getattr(self._pipe.scheduler, "timesteps", None)
            if key is not self._run_key:
                self._run_key = key
                self.stats.reset()
        self.step, self.num_steps = step_info if step_info else (None, None)
        fraction = self.config.dense_steps_fraction
        if fraction == 0.0:
            dense, mode = False, "sparse"
        elif fraction == 1.0:
            dense, mode = True, "dense"
        elif step_info is None:
            dense, mode = True, "dense (step unknown)"
            self.stats.record_fallback(
                "draft attention does not know the denoising step (no pipeline found and set_step() not called): "
                "running dense so that warm-up steps are never sparse; use enable_draft_attention(pipe), "
                "processor.set_step(step, num_steps) or dense_steps_fraction=0")
        else:
            dense = self.step < num_dense_steps(fraction, self.num_steps)
            mode = "dense" if dense else "sparse"
        self._dense_forward = dense
        self.stats.record_step(self.step, mode)
        reorder = (not dense and grid is not None and tile_order_device is not None
                   and self.config.reorder == "per_forward" and self._cp is None)
        layout = get_layout(grid, 0, self.config.region_size, tile_order_device) if reorder else None
        self._order.set(layout.perm if layout else None, layout.inv_perm if layout else None)

    # ------------------------------------------------------------------------------------------------- call
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None,
                 image_rotary_emb=None, **kwargs):
        entry = getattr(attn, _ROLE_ATTR, None)
        if entry is None or entry[0] is not self:
            entry = self._discover(attn)
        _, family, role = entry
        rope = rotary_emb if rotary_emb is not None else image_rotary_emb
        default = role.default_processor
        for attr in ("_attention_backend", "_parallel_config"):  # pass on what diffusers set on us
            if getattr(self, attr) is not None and hasattr(default, attr):
                setattr(default, attr, getattr(self, attr))
        if not role.video_self:
            return family.call_default(default, attn, hidden_states, encoder_hidden_states, attention_mask, rope,
                                       **kwargs)
        if self._cp is not None:  # the model's mask of a rank's share is wrong for padded text: rebuilt
            attention_mask = self._cp.local_mask(attention_mask)
        # (dense_layers is read only when set: compiled blocks then share one graph instead of one per block index)
        dense = self._dense_forward or (bool(self.config.dense_layers) and role.block_index in self.config.dense_layers)
        if dense and not self._observers and self.config.dense_backend == "diffusers":
            self.stats.record_dense()
            return family.call_default(default, attn, hidden_states, encoder_hidden_states, attention_mask, rope,
                                       **kwargs)
        attend = partial(self._attend, role, dense)
        return family.self_attention(attn, hidden_states, encoder_hidden_states, attention_mask, rope, attend)

    def _attend(self, role: AttentionRole, dense: bool, q, k, v, text_len: int, attention_mask):
        if self._cp is not None:  # context parallelism: attend on the gathered sequence for this rank's heads
            return self._cp.attend(q, k, v, partial(self._attend_full, role, dense))
        return self._attend_full(role, dense, q, k, v, text_len, attention_mask)

    def _attend_full(self, role: AttentionRole, dense: bool, q, k, v, text_len: int, attention_mask):
        key_lengths = self._key_lengths(attention_mask, q.shape[1]) if attention_mask is not None else None
        padding_mask = key_lengths is not False  # no mask, or a key-padding suffix that key_lengths describes
        key_lengths = key_lengths if padding_mask else None
        grid = self.grid
        if not dense:
            problem = None
            if grid is None:
                problem = "the video token grid of this forward is unknown"
            elif grid.num_tokens + text_len != q.shape[1]:
                problem = (f"sequence of {q.shape[1]} tokens does not match the grid {grid.frames}x{grid.height}x"
                           f"{grid.width} + {text_len} text tokens")
            elif not padding_mask:
                problem = "the attention mask is not a key-padding suffix mask"
            if problem:
                self.stats.record_fallback(f"{role.name}: {problem}; running dense attention for it")
                dense = True
        scale = q.shape[-1] ** -0.5
        tiles = None
        in_tile_order = self._order.active  # q, k, v (and the output) are in tile order already
        if dense:
            self.stats.record_dense()
            out = self._dense(q, k, v, attention_mask, key_lengths, scale, padding_mask)
        else:
            out, tiles = draft_attention(q, k, v, grid, self.config, text_len=text_len, key_lengths=key_lengths,
                                         scale=scale, draft_timer=self.stats.draft_timer, check_key_lengths=False,
                                         in_tile_order=in_tile_order)
            self._record_sparse(role, tiles if self._cp is None else self._cp.global_tiles(tiles))
        if self._observers:
            if in_tile_order:  # observers see diffusers' token order
                inv = get_layout(grid, text_len, self.config.region_size, q.device).inv_perm
                q, k, v = (x.index_select(1, inv) for x in (q, k, v))
            event = AttentionEvent(role.name, role.block_index, self.step, self.num_steps, q, k, v, grid, text_len,
                                   key_lengths, dense, tiles, scale)
            for fn in self._observers:
                fn(event)
        return out

    @torch.compiler.disable  # the layer name stays out of compiled graphs (a constant per layer would recompile)
    def _record_sparse(self, role: AttentionRole, tiles) -> None:
        self.stats.record_sparse(role.name, tiles)

    def _dense(self, q, k, v, attention_mask, key_lengths, scale, padding_mask: bool):
        # A dense kernel of ours takes key lengths only: any other mask goes through diffusers' dispatch.
        if self.config.dense_backend == "diffusers" or not padding_mask:
            # No parallel_config: under context parallelism this runs on the gathered sequence already.
            return dispatch_attention_fn(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                         backend=self._attention_backend, parallel_config=None)
        return get_backend(self.config.dense_backend).dense_forward(q, k, v, key_lengths, scale)

    @torch.compiler.disable  # reads the mask on the host (once per forward): keep it out of compiled graphs
    def _key_lengths(self, attention_mask: torch.Tensor, seq_len: int):
        """Key lengths ``[B]`` from a boolean key mask ``[B, 1, 1, S]`` (None: no padding; False: not a suffix
        padding mask). Checked once per forward: every layer gets the same mask object."""
        if self._mask_cache is not None and self._mask_cache[0] is attention_mask:
            return self._mask_cache[1]
        result: Any = False
        m = attention_mask
        if m.dtype == torch.bool and m.dim() == 4 and m.shape[1] == m.shape[2] == 1 and m.shape[-1] == seq_len:
            m = m.reshape(m.shape[0], seq_len)
            lengths = m.sum(dim=-1)
            prefix = torch.arange(seq_len, device=m.device).view(1, -1) < lengths.view(-1, 1)
            if torch.equal(prefix, m):
                grid_tokens = self.grid.num_tokens if self.grid is not None else 0
                if int(lengths.min()) >= grid_tokens:
                    result = None if int(lengths.min()) == seq_len else lengths.to(torch.int32)
        self._mask_cache = (attention_mask, result)
        return result

    # ------------------------------------------------------------------------------------------- discovery
    def _discover(self, attn: torch.nn.Module):
        """First call after ``set_attn_processor``: find the transformer (and pipeline) on the call stack."""
        from diffusers import DiffusionPipeline

        transformer = pipe = frame_locals = None
        frame = sys._getframe(1)
        while frame is not None:
            obj = frame.f_locals.get("self")
            if transformer is None and isinstance(obj, torch.nn.Module) and family_for(obj) is not None \
                    and any(m is attn for m in obj.modules()):
                transformer, frame_locals = obj, frame.f_locals
            elif isinstance(obj, DiffusionPipeline):
                pipe = obj
                break
            frame = frame.f_back
        if transformer is None:
            raise ValueError(f"DraftAttnProcessor was called from {type(attn).__name__}, which is not inside a "
                             f"supported transformer ({', '.join(supported_transformers())})")
        self.attach(transformer, pipe)
        # This forward began before the hook existed: read its grid from the transformer's forward locals.
        names = ("post_patch_num_frames", "post_patch_height", "post_patch_width")
        dims = [frame_locals.get(n) for n in names]
        grid = VideoGrid(*dims) if all(isinstance(d, int) and d > 0 for d in dims) else None
        # (no tile order: this forward's patch embedding already ran unhooked)
        self._start_forward(transformer, family_for(transformer), grid, (), frame_locals, None)
        return getattr(attn, _ROLE_ATTR)


class WanDraftAttnProcessor(DraftAttnProcessor):
    """:class:`DraftAttnProcessor` restricted to ``WanTransformer3DModel`` (Wan2.1 / Wan2.2)."""

    families = ("wan",)


class HunyuanVideoDraftAttnProcessor(DraftAttnProcessor):
    """:class:`DraftAttnProcessor` restricted to ``HunyuanVideoTransformer3DModel``."""

    families = ("hunyuan_video",)

"""Draft attention under diffusers' context parallelism (Ulysses), exact: the same masks and output as one GPU.

With ``transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=P))`` every rank holds ``1/P`` of
the token sequence between attention calls. Around attention, diffusers' Ulysses all-to-all turns
``[B, S/P, H, D]`` into the *full* sequence for ``H/P`` heads (rank ``r``: heads ``r*H/P .. (r+1)*H/P - 1``), runs a
``forward_op`` and turns the result back. Draft attention is per head (pooling, draft map, tile selection and the
sparse kernel never mix heads), so running it inside that ``forward_op`` on the gathered sequence gives exactly the
tiles and output of a single GPU. This module supplies that ``forward_op`` (:class:`ContextParallelState`) and the
checks that refuse what cannot be exact (ring attention, uneven splits outside diffusers' ``ulysses_anything`` mode,
a model its family refuses, a changed private API). What differs per model family (its plan, whether the plan splits
text, what it refuses) comes from the family (``models/``); HunyuanVideo's plan, which diffusers 0.42.1 lacks, is
``models.hunyuan_video.hunyuan_video_cp_plan``.

HunyuanVideo appends text tokens to the video tokens. Its plan splits both, so rank ``r`` holds
``[video_r, text_r]`` and the all-to-all yields ``[video_0, text_0, video_1, text_1, ...]``: the ``forward_op``
de-interleaves that into ``[video, text]`` before draft attention and re-interleaves the output. The key mask the
model builds from the split lengths is wrong for padded prompts (it compares local text positions with the global
prompt length), so the processor rebuilds it from the prompt mask: a local mask for diffusers' own attention (dense
steps) and key lengths for draft attention.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import torch
import torch.distributed._functional_collectives as funcol

from ..core.layout import VideoGrid
from ..core.selection import TileMask
from ..models import ModelFamily
from ..models.hunyuan_video import hunyuan_video_cp_plan  # noqa: F401 (public here before models/ owned it)
from .stats import warn_once

TESTED_DIFFUSERS = ("0.42",)
"""diffusers releases whose private context-parallel API this module was written and tested against."""

# The private diffusers entry point we call, with the parameters we pass (models/attention_dispatch.py).
_CP_FUNCTION = "_templated_context_parallel_attention"
_CP_PARAMETERS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa",
                  "return_lse", "forward_op", "backward_op", "_parallel_config")
# The private ContextParallelConfig fields we read (set by ContextParallelConfig.setup).
_CP_CONFIG_FIELDS = ("ring_degree", "ulysses_degree", "ulysses_anything", "_ulysses_mesh")

_api_checked = False


def check_diffusers_cp_api() -> Callable:
    """Return diffusers' ``_templated_context_parallel_attention`` after checking that its private API is the one
    this module was written for (``forward_op(ctx, q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa,
    return_lse, _save_ctx=, _parallel_config=)`` on the gathered sequence).

    Raises:
        RuntimeError: the function or one of its parameters is missing, or ``ContextParallelConfig`` lacks a field
            we read: draft attention refuses to run rather than silently run dense or wrong.
    """
    global _api_checked
    import diffusers
    from diffusers.models import attention_dispatch

    fn = getattr(attention_dispatch, _CP_FUNCTION, None)
    if not _api_checked:
        problems = []
        if fn is None:
            problems.append(f"diffusers.models.attention_dispatch.{_CP_FUNCTION} is missing")
        else:
            params = tuple(inspect.signature(fn).parameters)
            missing = [p for p in _CP_PARAMETERS if p not in params]
            if missing:
                problems.append(f"{_CP_FUNCTION}{inspect.signature(fn)} lacks parameters {missing}")
        from diffusers.models._modeling_parallel import ContextParallelConfig

        fields = {f.name for f in dataclasses.fields(ContextParallelConfig)}
        missing_fields = [f for f in _CP_CONFIG_FIELDS if f not in fields]
        if missing_fields:
            problems.append(f"ContextParallelConfig lacks fields {missing_fields}")
        if problems:
            raise RuntimeError(
                f"draft attention under context parallelism relies on diffusers' private context-parallel API, "
                f"which changed in diffusers {diffusers.__version__} (tested with {', '.join(TESTED_DIFFUSERS)}.x): "
                + "; ".join(problems) + ". Use a tested diffusers release or disable context parallelism.")
        if not diffusers.__version__.startswith(TESTED_DIFFUSERS):
            warn_once(f"draft attention under context parallelism was tested with diffusers "
                      f"{', '.join(TESTED_DIFFUSERS)}.x, not {diffusers.__version__}; its private API still has the "
                      "expected signature and every call checks the gathered shapes")
        _api_checked = True
    return fn


def _split_sizes(n: int, parts: int) -> list[int]:
    """Sizes of ``tensor.tensor_split(parts)`` along a dimension of ``n`` (diffusers' uneven mode; equal to
    ``chunk`` when ``parts`` divides ``n``, the only case its even mode allows)."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _context_parallel_config(transformer: torch.nn.Module, processor_config: Any):
    """The active ``ContextParallelConfig`` of ``transformer`` (the model's own record first: it is right whichever
    order ``enable_parallelism`` and ``enable_draft_attention`` ran in), or None."""
    config = getattr(transformer, "_parallel_config", None) or processor_config
    return getattr(config, "context_parallel_config", None), config


def check_context_parallel(transformer: torch.nn.Module, family: ModelFamily, grid: VideoGrid | None,
                           text_len: int = 0, processor_config: Any = None) -> None:
    """Raise ``ValueError`` for a context-parallel setting draft attention cannot run exactly (see
    :func:`begin_forward`); do nothing without context parallelism. ``family``: the transformer's, which may
    refuse a model (:meth:`ModelFamily.cp_refusal`)."""
    cp, _ = _context_parallel_config(transformer, processor_config)
    if cp is None:
        return
    check_diffusers_cp_api()
    if cp.ring_degree > 1:
        raise ValueError(
            f"draft attention supports Ulysses context parallelism only, got ring_degree={cp.ring_degree}: ring "
            "attention gives each rank a slice of the queries and keys, so no rank can draw the draft map of a "
            "whole head. Use ContextParallelConfig(ulysses_degree=N) (ring_degree=1).")
    refusal = family.cp_refusal(transformer)  # first: a refused model may not even state its head count
    if refusal is not None:
        raise ValueError(refusal)
    p = cp.ulysses_degree
    heads = transformer.config.num_attention_heads
    if cp.ulysses_anything:
        pad = (-heads) % p
        if pad and pad >= (heads + pad) // p:
            raise ValueError(f"{heads} heads cannot be spread over ulysses_degree={p} even with ulysses_anything: "
                             f"diffusers pads {pad} heads, which must be fewer than a rank's share of "
                             f"{(heads + pad) // p}; use a degree dividing {heads}")
        return
    counts = [("attention heads", heads)]
    if grid is not None:
        counts.append(("video tokens (frames x height x width after patching: "
                       f"{grid.frames} x {grid.height} x {grid.width})", grid.num_tokens))
    if text_len:
        counts.append(("text tokens", text_len))
    bad = [f"{n} {what}" for what, n in counts if n % p]
    if bad:
        raise ValueError(f"ulysses_degree={p} must divide the {', the '.join(bad)}; pick a degree that divides them, "
                         "another resolution, or ContextParallelConfig(ulysses_degree=..., ulysses_anything=True) "
                         "(diffusers' uneven split)")


def _forward_argument(transformer: torch.nn.Module, name: str, args: tuple, kwargs: dict) -> Any:
    """The argument ``name`` of a ``transformer.forward(*args, **kwargs)`` call, or None."""
    if name in kwargs:
        return kwargs[name]
    params = list(inspect.signature(type(transformer).forward).parameters)[1:]  # without self
    i = params.index(name) if name in params else len(args)
    return args[i] if i < len(args) else None


def begin_forward(processor, transformer: torch.nn.Module, family: ModelFamily, grid: VideoGrid | None,
                  args: tuple, kwargs: dict) -> "ContextParallelState | None":
    """Called by the processor at the start of every transformer forward. Without context parallelism returns None;
    with it, records the model's parallel config on the processor (either install order works) and returns the
    per-forward state after checking that the setting can run exactly.

    ``family``: the transformer's. ``args, kwargs``: the transformer's forward arguments (where the family's plan
    splits text, its prompt mask ``family.text_mask_argument`` is read).

    Raises:
        ValueError: ring attention, sizes not divisible by the Ulysses degree (outside ``ulysses_anything``),
            a model the family refuses (HunyuanVideo token-replace I2V), an unknown grid.
        RuntimeError: diffusers' private context-parallel API changed.
    """
    cp, config = _context_parallel_config(transformer, processor._parallel_config)
    if cp is None:
        return None
    processor._parallel_config = config  # passed on to the model's own processors (cross-attention, dense steps)
    text_mask = (_forward_argument(transformer, family.text_mask_argument, args, kwargs)
                 if family.cp_splits_text else None)
    text_len = int(text_mask.shape[1]) if text_mask is not None else 0
    if grid is None:
        raise ValueError("draft attention under context parallelism needs the video token grid of the forward "
                         "(install it with enable_draft_attention before the first call)")
    check_context_parallel(transformer, family, grid, text_len, config)
    return ContextParallelState(config, grid, transformer.config.num_attention_heads, text_mask,
                                family.cp_plan_hint)


class ContextParallelState:
    """One transformer forward under Ulysses context parallelism: how the sequence is split over the ranks, the
    permutation between diffusers' gathered order and ``[video, text]``, and the rebuilt key masks.

    Layouts: a rank holds ``[B, video_sizes[r] + text_sizes[r], H, D]`` (its video part, then its text part);
    inside the ``forward_op`` the gathered sequence is ``[B, S_video + S_text, H_local, D]``.
    """

    def __init__(self, config, grid: VideoGrid, heads: int, text_mask: torch.Tensor | None,
                 plan_hint: str = "") -> None:
        cp = config.context_parallel_config
        self.config = config
        self.plan_hint = plan_hint  # which plan to pass, for the error message of a plan that splits otherwise
        self.group = cp._ulysses_mesh.get_group()
        self.world = cp.ulysses_degree
        self.rank = torch.distributed.get_rank(self.group)
        self.grid = grid
        self.heads = heads
        self.local_heads = -(-heads // self.world)  # diffusers' uneven mode pads the last rank's share
        if self.rank == self.world - 1:
            self.local_heads -= (-heads) % self.world
        self.text_len = int(text_mask.shape[1]) if text_mask is not None else 0
        self.video_sizes = _split_sizes(grid.num_tokens, self.world)
        self.text_sizes = _split_sizes(self.text_len, self.world)
        self.perm = self.inv = None
        self.full_mask = self._local_mask = None
        if self.text_len:
            starts = torch.tensor([0] + [v + t for v, t in zip(self.video_sizes, self.text_sizes)]).cumsum(0)
            video = [torch.arange(v) + s for v, s in zip(self.video_sizes, starts.tolist())]
            text = [torch.arange(t) + s + v for v, t, s in zip(self.video_sizes, self.text_sizes, starts.tolist())]
            device = text_mask.device
            self.perm = torch.cat(video + text).to(device)  # gathered position of each [video, text] token
            self.inv = torch.argsort(self.perm)
            # Key masks from the prompt mask [B, S_text] (1 = real token, padding a suffix, as the model assumes).
            valid = text_mask.sum(dim=1).view(-1, 1)  # real text tokens per batch item
            n_video = grid.num_tokens
            full = torch.arange(n_video + self.text_len, device=device).view(1, -1) < n_video + valid
            self.full_mask = full.view(full.shape[0], 1, 1, -1)  # [B, 1, 1, S] over [video, text]
            start = sum(self.text_sizes[: self.rank])
            local_text = torch.arange(start, start + self.text_sizes[self.rank], device=device).view(1, -1) < valid
            local_video = torch.ones(local_text.shape[0], self.video_sizes[self.rank], dtype=torch.bool,
                                     device=device)
            self._local_mask = torch.cat([local_video, local_text], dim=1)[:, None, None, :]

    @property
    def local_len(self) -> int:
        return self.video_sizes[self.rank] + self.text_sizes[self.rank]

    def local_mask(self, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """The key mask ``[B, 1, 1, local_len]`` of this rank's share, rebuilt from the prompt mask (what diffusers'
        Ulysses attention all-gathers into the mask of the gathered sequence); None without text."""
        if self._local_mask is None:
            return attention_mask
        if attention_mask is not None and attention_mask.shape[-1] != self.local_len:
            raise ValueError(self._plan_message(attention_mask.shape[-1]))
        return self._local_mask

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               run: Callable[..., torch.Tensor]) -> torch.Tensor:
        """Attention for this rank's share ``q, k, v`` ``[B, local_len, H, D]`` (all heads): diffusers' Ulysses
        all-to-all gathers the sequence for this rank's heads, ``run(q, k, v, text_len, full_mask)`` computes
        attention over ``[video, text]`` (draft or dense, as on one GPU), the all-to-all returns the output
        ``[B, local_len, H, D]``. Forward only (no backward)."""
        if q.shape[1] != self.local_len:
            raise ValueError(self._plan_message(q.shape[1]))

        def forward_op(ctx, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, return_lse,
                       _save_ctx=True, _parallel_config=None):
            self._check_gathered(query)
            if self.perm is not None:
                query, key, value = (x.index_select(1, self.perm) for x in (query, key, value))
            out = run(query, key, value, self.text_len, self.full_mask)
            return out.index_select(1, self.inv) if self.inv is not None else out

        return check_diffusers_cp_api()(q, k, v, None, 0.0, False, None, False, False, forward_op=forward_op,
                                        backward_op=None, _parallel_config=self.config)

    def global_tiles(self, tiles: TileMask) -> TileMask:
        """``tiles`` with ``video_sparsity`` ``[B, H]`` over *all* heads (gathered from every rank), so that the
        statistics equal those of one GPU. Asynchronous: no host synchronisation."""
        vs = tiles.video_sparsity.float().t()  # [H_local, B]: gathered along dim 0
        share = -(-self.heads // self.world)
        if vs.shape[0] < share:  # uneven mode: the last rank's share is padded at its end
            vs = torch.nn.functional.pad(vs, (0, 0, 0, share - vs.shape[0]))
        gather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor  # (older torch)
        gathered = gather(vs.contiguous(), gather_dim=0, group=self.group)
        return dataclasses.replace(tiles, video_sparsity=gathered[: self.heads].t())

    def _check_gathered(self, query: torch.Tensor) -> None:
        expected = (self.grid.num_tokens + self.text_len, self.local_heads)
        if (query.shape[1], query.shape[2]) != expected:
            raise RuntimeError(
                f"diffusers' Ulysses all-to-all gave {query.shape[1]} tokens x {query.shape[2]} heads on rank "
                f"{self.rank}, expected the full sequence ({expected[0]}) x this rank's heads ({expected[1]}): its "
                f"private context-parallel API changed (tested with diffusers {', '.join(TESTED_DIFFUSERS)}.x)")

    def _plan_message(self, got: int) -> str:
        what = "video and text tokens" if self.text_len else "video tokens"
        hint = f" ({self.plan_hint})" if getattr(self, "plan_hint", "") else ""
        return (f"rank {self.rank} holds {got} tokens in self-attention, expected its share of the {what} "
                f"({self.video_sizes[self.rank]} video + {self.text_sizes[self.rank]} text): the context-parallel "
                f"plan must split exactly these{hint}")

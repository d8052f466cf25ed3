"""The one entry point every processor calls: q, k, v in diffusers' layout -> draft attention output.

Layering (no cycle): ``config`` and ``core`` (token layout, tile selection: model- and kernel-independent) <-
``backends`` (kernels) <- this module (the entry point, and :class:`StageTimer`, the draft-step timer it drives) <-
``integration`` / ``models``. ``core`` knows nothing of backends or timing.
"""

from __future__ import annotations

import time

import torch

from .backends import AttentionInputs, resolve_backend
from .config import DraftAttentionConfig
from .core.layout import VideoGrid, get_layout
from .core.selection import TileMask, select_tiles


class StageTimer:
    """Accumulates the time of a stage without synchronising: CUDA events on GPU, a host clock on CPU.

    ``seconds()`` resolves the events (one synchronisation) when statistics are read.
    """

    def __init__(self) -> None:
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._host = 0.0
        self.backends: dict[str, int] = {}  # draft_attention: the backend of each timed call -> count

    def start(self, device: torch.device):
        if device.type == "cuda":
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def stop(self, token) -> None:
        if isinstance(token, float):
            self._host += time.perf_counter() - token
        else:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((token, end))

    def seconds(self) -> float:
        if self._events:
            self._events[-1][1].synchronize()
            self._host += sum(a.elapsed_time(b) for a, b in self._events) / 1e3
            self._events.clear()
        return self._host


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: VideoGrid, text_len: int,
                 key_lengths: torch.Tensor | None, check_key_values: bool = True) -> None:
    """Raise ``ValueError`` saying what was expected when q/k/v do not fit the grid.

    ``check_key_values=False`` skips reading ``key_lengths`` (a device synchronisation) for callers that checked
    them already."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v: expected [batch, seq, heads, head_dim] tensors, got shapes "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[:3] != k.shape[:3] or q.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q, k, v: expected equal [batch, seq, heads] and q/k head_dim, got shapes "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or not q.dtype.is_floating_point:
        raise ValueError(f"q, k, v: expected one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    expected = grid.num_tokens + text_len
    if q.shape[1] != expected:
        raise ValueError(f"sequence length {q.shape[1]} does not match the grid: expected frames x height x width "
                         f"+ text = {grid.frames} x {grid.height} x {grid.width} + {text_len} = {expected}")
    if key_lengths is not None:
        if key_lengths.shape != (q.shape[0],) or key_lengths.dtype.is_floating_point:
            raise ValueError(f"key_lengths: expected an integer tensor of shape [{q.shape[0]}], "
                             f"got {key_lengths.dtype} {tuple(key_lengths.shape)}")
    if key_lengths is not None and check_key_values:
        lo, hi = int(key_lengths.min()), int(key_lengths.max())
        if lo < grid.num_tokens or hi > expected:
            raise ValueError(f"key_lengths in [{lo}, {hi}]: expected values in [{grid.num_tokens}, {expected}] "
                             "(video keys are never padded; padding is a suffix of the text)")


def draft_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    grid: VideoGrid,
    config: DraftAttentionConfig,
    *,
    text_len: int = 0,
    key_lengths: torch.Tensor | None = None,
    scale: float | None = None,
    draft_timer: StageTimer | None = None,
    check_key_lengths: bool = True,
    in_tile_order: bool = False,
) -> tuple[torch.Tensor, TileMask]:
    """Draft attention over one video (+ trailing text) sequence.

    Args:
        q, k, v: ``[B, S, H, D]`` (diffusers' layout), ``S = grid.num_tokens + text_len``, video tokens first in
            diffusers order (frame-major, row-major), then ``text_len`` text tokens.
        grid: the video token grid (frames x height x width tokens after patching).
        config: sparsity, region size, selection rule, pooling and backend.
        text_len: trailing text tokens (HunyuanVideo); they attend and are attended densely.
        key_lengths: int ``[B]`` or None: keys at positions ``>= key_lengths[b]`` (padded text) are never attended.
        scale: softmax scale (default ``D ** -0.5``).
        draft_timer: optional :class:`StageTimer` that accumulates the time of the draft step.
        check_key_lengths: read ``key_lengths`` to check their range (a device sync); processors that checked them
            once per forward pass False.
        in_tile_order: q, k, v are already in tile order (``x[:, layout.perm]``, e.g. the transformer reordered its
            tokens once per forward); the output is then returned in tile order too.

    Returns:
        ``(out, tiles)``: ``out`` ``[B, S, H, D]`` in the original token order and ``q.dtype``; ``tiles`` the
        :class:`TileMask` used (its ``video_sparsity`` is the achieved sparsity per batch item and head).

    Equivalent plain PyTorch (what the reference backend computes): reorder tokens with ``layout.perm``, pool Q and
    K per tile, keep tiles by ``config.selection``, run softmax attention restricted to the kept tiles and the
    unpadded keys, reorder back with ``layout.inv_perm``.

    Example:
        >>> grid = VideoGrid(frames=2, height=8, width=32)
        >>> q = k = v = torch.randn(1, grid.num_tokens, 2, 64)
        >>> out, tiles = draft_attention(q, k, v, grid, DraftAttentionConfig(sparsity=0.5, backend="reference"))
        >>> out.shape
        torch.Size([1, 512, 2, 64])

    Raises:
        ValueError: shapes that do not match the grid, bad key lengths, or a backend that cannot run (with reasons).
    """
    check_inputs(q, k, v, grid, text_len, key_lengths, check_key_lengths)
    layout = get_layout(grid, text_len, config.region_size, q.device)
    if layout.num_video_tiles == 0:
        raise ValueError(f"grid {grid.frames} x {grid.height} x {grid.width} has {grid.num_tokens} video tokens, fewer "
                         f"than one {layout.tile_size}-token tile before the {text_len} text tokens: draft attention "
                         "needs at least one whole video tile; use dense attention for such small inputs")
    inputs = AttentionInputs.from_tensors(q, v, layout.tile_size, key_lengths is not None)
    backend = resolve_backend(config.backend, inputs)
    scale = q.shape[-1] ** -0.5 if scale is None else scale

    qp, kp, vp = (q, k, v) if in_tile_order else (x.index_select(1, layout.perm) for x in (q, k, v))
    timed = draft_timer is not None and not torch.compiler.is_compiling()  # CUDA events would break the graph
    token = draft_timer.start(q.device) if timed else None
    tiles = select_tiles(qp, kp, layout, config.sparsity, config.selection, config.pooling, scale, key_lengths)
    if timed:
        draft_timer.stop(token)
        draft_timer.backends[backend.name] = draft_timer.backends.get(backend.name, 0) + 1
    out = backend.forward(qp, kp, vp, tiles, key_lengths, scale)
    return (out if in_tile_order else out.index_select(1, layout.inv_perm)), tiles

"""Attention-fidelity metrics: how much of the true (dense) attention a tile mask keeps, and how far it moves
the output; the oracle mask; static sparse patterns for comparison.

All public functions take ``q, k, v`` in diffusers' layout and order, ``[B, S, H, D]`` (video tokens frame-major
and row-major, then ``layout.text_len`` text tokens), exactly what :func:`draftattention_diffusers.draft_attention`
and the capture files hold. Masks are :class:`~draftattention_diffusers.core.selection.TileMask` objects, whose
tiles live in the permuted order of their ``layout``.

Definitions (per batch item ``b`` and head ``h``; ``P = softmax(q k^T * scale)`` over the unpadded keys):
  * tile mass ``M[i, j]`` = sum of ``P`` over the query rows of tile ``i`` and the key columns of tile ``j``;
    every query row carries mass 1, so the mass of a tile row is the number of its tokens.
  * attention recall = ``sum(M * kept) / sum(M)`` over the *video* query tiles (the rows the selection decides;
    their text columns are always kept and count as kept mass). The full mask has recall 1.
  * output error = ``||O_mask - O_dense|| / ||O_dense||`` (Frobenius over tokens and channels), with ``O_mask`` the
    block-sparse attention output (a row with no kept key gives zeros, as the kernels do).
  * oracle mask = the video-video tiles with the largest exact mass under a tile budget: by construction no mask
    with the same budget has a higher recall.

Nothing here builds an ``S x S`` matrix: dense probabilities are computed for chunks of query rows with the full
row's softmax, and summed into tiles on the fly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from ..core.layout import TokenLayout
from ..core.selection import TileMask, build_tile_mask, keep_budget

# Bytes of one float32 score block (query rows x keys). Small on CPU so that the allocator reuses blocks.
_CHUNK_BYTES = 24 * 2**20
_CHUNK_BYTES_CUDA = 1024 * 2**20

STATIC_PATTERNS = ("window", "spatial", "temporal")
"""Static (input-independent) tile patterns, see :func:`static_tile_mask`."""


class HeadMetric(NamedTuple):
    """A metric per batch item and head (``per_head``: float ``[B, H]``) and its mean over all of them."""

    per_head: torch.Tensor
    mean: float


def _metric(per_head: torch.Tensor) -> HeadMetric:
    return HeadMetric(per_head, float(per_head.mean()))


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None, layout: TokenLayout,
               key_lengths: torch.Tensor | None) -> None:
    if q.dim() != 4 or q.shape != k.shape:
        raise ValueError(f"q, k: expected [batch, seq, heads, head_dim] tensors of equal shape, got "
                         f"{tuple(q.shape)} and {tuple(k.shape)}")
    if v is not None and (v.dim() != 4 or v.shape[:3] != q.shape[:3]):
        raise ValueError(f"v: expected [batch, seq, heads, dim] with the [batch, seq, heads] of q "
                         f"{tuple(q.shape[:3])}, got {tuple(v.shape)}")
    if q.shape[1] != layout.seq_len:
        g = layout.grid
        raise ValueError(f"sequence length {q.shape[1]} does not match the layout: expected frames x height x width "
                         f"+ text = {g.frames} x {g.height} x {g.width} + {layout.text_len} = {layout.seq_len}")
    if key_lengths is not None and (key_lengths.shape != (q.shape[0],) or key_lengths.dtype.is_floating_point):
        raise ValueError(f"key_lengths: expected an integer tensor of shape [{q.shape[0]}], got "
                         f"{key_lengths.dtype} {tuple(key_lengths.shape)}")


def _check_mask(tiles: TileMask, q: torch.Tensor) -> None:
    B, _, H, _ = q.shape
    T = tiles.layout.num_tiles
    if tiles.kept.shape != (B, H, T, T):
        raise ValueError(f"tiles.kept: expected shape [B, H, T, T] = [{B}, {H}, {T}, {T}] for these q/k and the "
                         f"mask's layout, got {tuple(tiles.kept.shape)}")


def _token_tiles(layout: TokenLayout, device: torch.device) -> torch.Tensor:
    """Tile index of every token in diffusers order: int64 ``[S]``."""
    return layout.inv_perm.to(device) // layout.tile_size


def _rows_per_chunk(B: int, S: int, device: torch.device) -> int:
    """Query rows per chunk so that one float32 ``[B, rows, S]`` score block stays within the chunk budget."""
    budget = _CHUNK_BYTES_CUDA if device.type == "cuda" else _CHUNK_BYTES
    return max(1, budget // (B * S * 4))


def _scores(qh: torch.Tensor, kh: torch.Tensor, scale: float, key_ok: torch.Tensor | None) -> torch.Tensor:
    """Logits ``[B, r, S]`` of query rows ``qh [B, r, D]`` against keys ``kh [B, S, D]``; padded keys -inf."""
    s = (qh * scale) @ kh.transpose(-1, -2)
    if key_ok is not None:
        s.masked_fill_(~key_ok[:, None, :], float("-inf"))
    return s


def _attend(s: torch.Tensor, vh: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention output of logits ``s [B, r, S]`` restricted to ``allowed`` (zeros for an empty row)."""
    x = s if allowed is None else s.masked_fill(~allowed, float("-inf"))
    m = x.amax(dim=-1, keepdim=True)
    p = (x - m.masked_fill(torch.isinf(m), 0.0)).exp_()
    return (p @ vh) / p.sum(dim=-1, keepdim=True).clamp_min(1e-30)


def _key_ok(key_lengths: torch.Tensor | None, B: int, S: int, device: torch.device) -> torch.Tensor | None:
    if key_lengths is None:
        return None
    return torch.arange(S, device=device).view(1, S) < key_lengths.view(B, 1).to(device)


def tile_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    layouts: TokenLayout | Sequence[TokenLayout],
    *,
    scale: float | None = None,
    key_lengths: torch.Tensor | None = None,
) -> torch.Tensor | list[torch.Tensor]:
    """Exact dense-attention mass of every tile: float32 ``[B, H, T, T]`` per layout.

    ``M[b, h, i, j]`` = sum of the dense softmax probabilities of the query tokens of tile ``i`` on the key tokens
    of tile ``j`` (tiles in ``layout``'s permuted order). Several layouts (region shapes) of the same sequence
    share one pass over the probabilities: pass a list and get a list.

    Computed chunk by chunk of query rows (each row's softmax over all keys, padded keys excluded), never
    ``S x S``. Cost: one dense float32 attention per head (about 10 s per head at 32,760 tokens for three region
    shapes on two CPU cores; well under a second on a GPU).

    Example:
        >>> from draftattention_diffusers.core import VideoGrid, get_layout
        >>> lay = get_layout(VideoGrid(2, 8, 32))
        >>> q = k = torch.randn(1, 512, 2, 16)
        >>> m = tile_mass(q, k, lay)
        >>> m.shape, round(float(m.sum()), 3)      # every query row carries mass 1
        (torch.Size([1, 2, 4, 4]), 1024.0)
    """
    single = isinstance(layouts, TokenLayout)
    layouts = [layouts] if single else list(layouts)
    for lay in layouts:
        _check_qkv(q, k, None, lay, key_lengths)
    B, S, H, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    dev = q.device
    key_ok = _key_ok(key_lengths, B, S, dev)
    tiles = [_token_tiles(lay, dev) for lay in layouts]
    masses = [torch.zeros(B, H, lay.num_tiles, lay.num_tiles, device=dev) for lay in layouts]
    step = _rows_per_chunk(B, S, dev)
    for h in range(H):  # one head at a time: float32 copies of one head only
        qh, kh = q[:, :, h].float(), k[:, :, h].float()  # [B, S, D]
        for r0 in range(0, S, step):
            r1 = min(S, r0 + step)
            # exp(s - row max) in place; each row is normalised by its total after the sum into key tiles.
            e = _scores(qh[:, r0:r1], kh, scale, key_ok)
            e.sub_(e.amax(dim=-1, keepdim=True)).exp_()
            total = None
            for tile, mass in zip(tiles, masses):
                per_row = e.new_zeros(B, r1 - r0, mass.shape[-1]).index_add_(-1, tile, e)  # [B, r, T]
                if total is None:
                    total = per_row.sum(dim=-1, keepdim=True)
                mass[:, h].index_add_(1, tile[r0:r1], per_row / total)
    return masses[0] if single else masses


def recall_from_mass(mass: torch.Tensor, tiles: TileMask) -> HeadMetric:
    """Attention recall of ``tiles`` given the exact :func:`tile_mass` of the same layout (cheap: no attention).

    Example:
        >>> from draftattention_diffusers.core import VideoGrid, get_layout
        >>> from draftattention_diffusers.core.selection import build_tile_mask
        >>> lay = get_layout(VideoGrid(2, 8, 32))
        >>> q = k = torch.randn(1, 512, 2, 16)
        >>> full = build_tile_mask(torch.ones(1, 2, 4, 4, dtype=torch.bool), lay)
        >>> recall_from_mass(tile_mass(q, k, lay), full).mean
        1.0
    """
    if mass.shape != tiles.kept.shape:
        raise ValueError(f"mass {tuple(mass.shape)} and tiles.kept {tuple(tiles.kept.shape)}: expected the same "
                         "[B, H, T, T] shape (mass computed on the mask's layout)")
    g = tiles.layout.num_video_tiles
    m = mass[:, :, :g]
    kept = (m * tiles.kept[:, :, :g].to(m.device)).sum(dim=(-1, -2))
    return _metric(kept / m.sum(dim=(-1, -2)).clamp_min(1e-30))


def attention_recall(q: torch.Tensor, k: torch.Tensor, tiles: TileMask, *, scale: float | None = None,
                     key_lengths: torch.Tensor | None = None) -> HeadMetric:
    """Share of the dense softmax mass of the video query rows that falls inside the kept tiles of ``tiles``.

    ``q, k``: ``[B, S, H, D]`` in diffusers order. Returns :class:`HeadMetric` (``per_head [B, H]``, ``mean``);
    1.0 for a mask that keeps every tile. To score many masks of one input, compute :func:`tile_mass` once and
    call :func:`recall_from_mass`.
    """
    _check_mask(tiles, q)
    return recall_from_mass(tile_mass(q, k, tiles.layout, scale=scale, key_lengths=key_lengths), tiles)


def output_error(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tiles: TileMask | Sequence[TileMask],
    *,
    scale: float | None = None,
    key_lengths: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
) -> HeadMetric | list[HeadMetric]:
    """Relative error of block-sparse attention against dense attention: ``||O_mask - O|| / ||O||`` per head.

    Args:
        q, k, v: ``[B, S, H, D]`` in diffusers order.
        tiles: one :class:`TileMask`, or a list (all masks are scored on one pass of dense probabilities).
        rows: optional int ``[R]`` query positions (diffusers order) to measure on (an unbiased sample of the
            error when drawn uniformly); default all rows, chunk by chunk.

    ``O_mask`` is what every backend computes: the softmax restricted to kept tiles and unpadded keys, zeros for a
    row with no kept key. Returns a :class:`HeadMetric` per mask (0.0 for a full mask).

    Example:
        >>> from draftattention_diffusers.core import VideoGrid, get_layout
        >>> from draftattention_diffusers.core.selection import build_tile_mask
        >>> lay = get_layout(VideoGrid(2, 8, 32))
        >>> q = k = v = torch.randn(1, 512, 2, 16)
        >>> full = build_tile_mask(torch.ones(1, 2, 4, 4, dtype=torch.bool), lay)
        >>> output_error(q, k, v, full).mean
        0.0
    """
    single = isinstance(tiles, TileMask)
    masks = [tiles] if single else list(tiles)
    for m in masks:
        _check_qkv(q, k, v, m.layout, key_lengths)
        _check_mask(m, q)
    B, S, H, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    dev = q.device
    key_ok = _key_ok(key_lengths, B, S, dev)
    if rows is None:
        rows = torch.arange(S, device=dev)
    else:
        rows = torch.as_tensor(rows, device=dev).long()
        if rows.dim() != 1 or rows.numel() == 0 or int(rows.min()) < 0 or int(rows.max()) >= S:
            raise ValueError(f"rows: expected a non-empty 1-d tensor of query positions in [0, {S}), got "
                             f"shape {tuple(rows.shape)}")
    tile_ids = [_token_tiles(m.layout, dev) for m in masks]
    kept = [m.kept.to(dev) for m in masks]
    err = [torch.zeros(B, H, device=dev) for _ in masks]
    ref = torch.zeros(B, H, device=dev)
    step = _rows_per_chunk(B, S, dev)
    for h in range(H):
        qh, kh, vh = q[:, :, h].float(), k[:, :, h].float(), v[:, :, h].float()
        for c0 in range(0, rows.numel(), step):
            r = rows[c0:c0 + step]
            s = _scores(qh[:, r], kh, scale, key_ok)  # [B, r, S]
            e = (s - s.amax(dim=-1, keepdim=True)).exp_()  # every row has a valid key: finite maximum
            dense = (e @ vh) / e.sum(dim=-1, keepdim=True)
            ref[:, h] += dense.square().sum(dim=(-1, -2))
            for i, (tid, kp) in enumerate(zip(tile_ids, kept)):
                allowed = kp[:, h][:, tid[r]][..., tid]  # [B, r, S]
                # The dense weights restricted to the kept keys, renormalised: the masked softmax, with the same
                # arithmetic as the dense output (a full mask gives exactly 0).
                ps = e * allowed
                total = ps.sum(dim=-1, keepdim=True)
                out = (ps @ vh) / total.clamp_min(1e-30)
                weak = total[..., 0] < 1e-30  # no kept key, or kept keys that underflow next to the row maximum
                for b in weak.any(dim=1).nonzero().flatten().tolist():
                    w = weak[b]
                    out[b, w] = _attend(s[b, w][None], vh[b : b + 1], allowed[b, w][None])[0]
                err[i][:, h] += (out - dense).square().sum(dim=(-1, -2))
    res = [_metric((e / ref.clamp_min(1e-30)).sqrt()) for e in err]
    return res[0] if single else res


def _video_budget(layout: TokenLayout, B: int, H: int, sparsity: float | None, budget, like: TileMask | None,
                  device) -> torch.Tensor:
    g = layout.num_video_tiles
    given = [x is not None for x in (sparsity, budget, like)]
    if sum(given) != 1:
        raise ValueError("oracle budget: expected exactly one of sparsity=, budget= or like=")
    if like is not None:
        return like.kept[:, :, :g, :g].sum(dim=(-1, -2)).to(device)
    if sparsity is not None:
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity={sparsity!r}: expected a number in [0, 1)")
        return torch.full((B, H), keep_budget(sparsity, g * g), device=device, dtype=torch.long)
    b = torch.as_tensor(budget, device=device).long()
    if b.dim() == 0:
        b = b.expand(B, H)
    if b.shape != (B, H) or int(b.min()) < 0 or int(b.max()) > g * g:
        raise ValueError(f"budget: expected an int or an int tensor [{B}, {H}] in [0, {g * g}], got {budget!r}")
    return b


def _keep_top(values: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """Bool mask of the ``budget[...]`` largest entries of each row of ``values [..., n]`` (``budget [...]``)."""
    order = values.argsort(dim=-1, descending=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(values.shape[-1], device=values.device)
                                            .expand_as(order).contiguous())
    return rank < budget.unsqueeze(-1)


def oracle_tile_mask(
    mass: torch.Tensor,
    layout: TokenLayout,
    *,
    sparsity: float | None = None,
    budget: int | torch.Tensor | None = None,
    like: TileMask | None = None,
    share_across_heads: bool = False,
    key_lengths: torch.Tensor | None = None,
) -> TileMask:
    """The video-video tiles with the largest exact mass: the best recall any mask of that budget can reach.

    Args:
        mass: :func:`tile_mass` ``[B, H, T, T]`` on ``layout``.
        sparsity / budget / like: the tile budget per batch item and head (exactly one): ``keep_budget(sparsity,
            g^2)`` tiles, an int or int ``[B, H]`` tensor, or the number each head of the mask ``like`` keeps.
        share_across_heads: one budget (the sum over heads) shared by all heads of a batch item: the oracle for
            selections that give heads different budgets.
        key_lengths: padded keys, as for :func:`~draftattention_diffusers.core.selection.build_tile_mask`.

    Text rows and columns are kept as by every selection rule.

    Example:
        >>> from draftattention_diffusers.core import VideoGrid, get_layout
        >>> lay = get_layout(VideoGrid(4, 8, 32))
        >>> q = k = torch.randn(1, 1024, 2, 16)
        >>> oracle_tile_mask(tile_mass(q, k, lay), lay, sparsity=0.75).mean_sparsity
        0.75
    """
    B, H = mass.shape[:2]
    g = layout.num_video_tiles
    if mass.shape != (B, H, layout.num_tiles, layout.num_tiles):
        raise ValueError(f"mass: expected [B, H, T, T] with T = {layout.num_tiles} tiles of the layout, got "
                         f"{tuple(mass.shape)}")
    need = _video_budget(layout, B, H, sparsity, budget, like, mass.device)
    video = mass[:, :, :g, :g]
    if share_across_heads:
        keep = _keep_top(video.reshape(B, H * g * g), need.sum(dim=1)).view(B, H, g, g)
    else:
        keep = _keep_top(video.reshape(B, H, g * g), need).view(B, H, g, g)
    return build_tile_mask(keep, layout, key_lengths)


def tile_centroids(layout: TokenLayout) -> torch.Tensor:
    """Mean ``(frame, row, column)`` token position of every video tile: float ``[g, 3]`` (edge tiles: of their
    strip's tokens)."""
    grid = layout.grid
    g, t = layout.num_video_tiles, layout.tile_size
    tok = layout.perm[: min(grid.num_tokens, g * t)].cpu()
    f = tok // (grid.height * grid.width)
    y = (tok // grid.width) % grid.height
    x = tok % grid.width
    pos = torch.stack([f, y, x], dim=1).float()
    tile = torch.arange(tok.numel()) // t
    out = torch.zeros(g, 3).index_add_(0, tile, pos)
    return out / torch.bincount(tile, minlength=g).clamp_min(1).view(g, 1).float()


def static_tile_mask(
    layout: TokenLayout,
    pattern: str,
    sparsity: float,
    *,
    batch: int = 1,
    heads: int = 1,
    frame_distance: float = 8.0,
    device: torch.device | str = "cpu",
) -> TileMask:
    """A static (input-independent) pattern with the same tile budget as a selection: ``keep_budget(sparsity,
    g^2)`` video tiles, spread evenly over query tiles (each keeps its ``budget / g`` nearest key tiles).

    Patterns (distances between tile centroids, in tokens):
      * ``"window"``: a local spatio-temporal window, nearest by ``sqrt((frame_distance*df)^2 + dy^2 + dx^2)``
        (one frame apart counts as ``frame_distance`` tokens);
      * ``"spatial"``: Sparse-VideoGen-style *spatial head*: the query's own frame first, then the nearest frames
        (spatially nearest first inside a frame);
      * ``"temporal"``: Sparse-VideoGen-style *temporal head*: the same spatial place in every frame first, then
        spatial neighbours (temporally nearest first).

    Returns a :class:`TileMask` ``[batch, heads, T, T]`` (text tiles kept).
    """
    if pattern not in STATIC_PATTERNS:
        raise ValueError(f"pattern={pattern!r}: expected one of {STATIC_PATTERNS}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity!r}: expected a number in [0, 1)")
    g = layout.num_video_tiles
    c = tile_centroids(layout)
    df = (c[:, None, 0] - c[None, :, 0]).abs()
    ds = ((c[:, None, 1:] - c[None, :, 1:]) ** 2).sum(-1).sqrt()
    if pattern == "window":
        dist = ((frame_distance * df) ** 2 + ds ** 2).sqrt()
    elif pattern == "spatial":
        dist = df.round() * 1e6 + ds
    else:
        dist = ds.round() * 1e3 + df
    # Rank key tiles per query tile, then keep the budget by rank, rows in turn: rows differ by at most one tile.
    rank = dist.argsort(dim=-1, stable=True).argsort(dim=-1).float()
    order_key = rank * g + torch.arange(g).view(g, 1)
    need = keep_budget(sparsity, g * g)
    keep = _keep_top(-order_key.view(1, g * g), torch.tensor([need])).view(g, g)
    keep = keep.to(device).expand(batch, heads, g, g).contiguous()
    return build_tile_mask(keep, layout)

"""Draft map and tile selection: pool Q and K per tile, score tile pairs, keep the best ones.

All functions work on the *permuted* sequence (see :mod:`.layout`), layout ``[B, S, H, D]``, and are batched over
batch items and heads (no Python loop over heads or tiles).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .layout import TokenLayout


@dataclass
class TileMask:
    """Which ``tile_size x tile_size`` tiles of the permuted attention matrix are computed.

    Attributes:
        kept: bool ``[B, H, T, T]`` over all ``T = layout.num_tiles`` tiles (query tile, key tile). Rows and
            columns of text tiles are True; key tiles made only of padded keys are False.
        layout: the :class:`TokenLayout` it belongs to.
        video_sparsity: float ``[B, H]``, fraction of video-video tiles skipped (achieved, not requested).
    """

    kept: torch.Tensor
    layout: TokenLayout
    video_sparsity: torch.Tensor

    @property
    def mean_sparsity(self) -> float:
        return float(self.video_sparsity.float().mean())


def pool_tiles(x: torch.Tensor, layout: TokenLayout, pooling: str = "avg") -> torch.Tensor:
    """Pool the video tiles of a permuted sequence: ``[B, S, H, D] -> float32 [B, H, g, D]``.

    ``avg`` is the mean of the tokens of each tile (a partial last tile averages the tokens it has);
    ``max`` the elementwise maximum. ``g = layout.num_video_tiles``.
    """
    B, _, H, D = x.shape
    g, t = layout.num_video_tiles, layout.tile_size
    n = min(layout.num_video_tokens, g * t)
    full = n // t  # complete tiles; a partial last video tile (no text after it) is pooled on its own
    parts = [x[:, : full * t].reshape(B, full, t, H, D)]
    if n > full * t:
        parts.append(x[:, full * t : n].unsqueeze(1))
    if pooling == "avg":  # accumulate in float32 without materialising a float32 copy of x
        pooled = torch.cat([p.sum(dim=2, dtype=torch.float32) for p in parts], dim=1)
        pooled = pooled / layout.tile_counts.view(1, g, 1, 1)
    elif pooling == "max":
        pooled = torch.cat([p.amax(dim=2).float() for p in parts], dim=1)
    else:
        raise ValueError(f"pooling={pooling!r}: expected 'avg' or 'max'")
    return pooled.transpose(1, 2)  # [B, H, g, D]


def draft_scores(q_pooled: torch.Tensor, k_pooled: torch.Tensor, scale: float) -> torch.Tensor:
    """Draft attention map ``softmax(Q~ K~^T * scale)`` per batch item and head: float32 ``[B, H, g, g]``."""
    return torch.softmax(q_pooled @ k_pooled.transpose(-1, -2) * scale, dim=-1)


def keep_budget(sparsity: float, n: int) -> int:
    """``ceil((1 - sparsity) * n)``, robust to float noise (``(1 - 0.9) * 100`` is ``9.999...``)."""
    return min(n, math.ceil(round((1.0 - sparsity) * n, 9)))


def select_video_tiles(scores: torch.Tensor, sparsity: float, rule: str) -> torch.Tensor:
    """Bool ``[B, H, g, g]``: the video-video tiles to keep, from draft scores ``[B, H, g, g]``.

    Rules (``n = g*g``):
      * ``paper``: the published rule, with its arithmetic: it is called with ``r = 1 - sparsity`` and skips
        ``k = int((1 - r) * n)`` entries, which in floating point is sometimes one less than ``int(sparsity * n)``
        (0.45 on a 30x30 map: 404, not 405); threshold = k-th smallest score; keep ``score >= threshold``
        (``k == 0``: keep all): ``n - k + 1`` tiles plus ties. The same tiles as the published code when the
        scores are the same; they are not always: we pool and score in float32, the published code in the input
        dtype (in bf16 its ties keep a few more tiles).
      * ``topk``: every row's best key tile, then the highest remaining scores up to ``keep_budget(sparsity, n)``
        tiles in all (never fewer than ``g``).
      * ``row_topk``: ``max(1, keep_budget(sparsity, g))`` best key tiles in every row.
      * ``topk_heads``: ``topk`` with one budget shared by all heads of a batch item (``H`` times the per-head
        budget): every row's best key tile in every head, then the highest remaining scores over all heads. Heads
        whose draft map is concentrated give tiles to diffuse ones (per-head adaptive budgets, same total work);
        see docs/quality.md for the measurements. Under context parallelism (Ulysses) the heads of each rank share.
    """
    B, H, g, _ = scores.shape
    n = g * g
    flat = scores.reshape(B, H, n)
    if rule == "paper":
        # the published arithmetic, on purpose: int((1 - r) * n) with r = 1 - sparsity, not int(sparsity * n)
        k = int((1.0 - (1.0 - sparsity)) * n)
        if k == 0:
            return torch.ones_like(scores, dtype=torch.bool)
        thr = flat.kthvalue(k, dim=-1, keepdim=True).values
        return (flat >= thr).view(B, H, g, g)
    if rule in ("topk", "topk_heads"):
        # topk ranks each head's map on its own; topk_heads ranks the maps of all heads of a batch item together.
        pool = H if rule == "topk_heads" else 1
        budget = max(keep_budget(sparsity, n), g) * pool
        # Softmax scores are <= 1, so 2.0 ranks each row's best tile above everything else.
        boosted = scores.scatter(-1, scores.argmax(dim=-1, keepdim=True), 2.0).reshape(B, H // pool, pool * n)
        idx = boosted.topk(budget, dim=-1, sorted=False).indices
        keep = torch.zeros_like(boosted, dtype=torch.bool)
        return keep.scatter_(-1, idx, _true_like(idx)).view(B, H, g, g)
    if rule == "row_topk":
        kk = max(1, keep_budget(sparsity, g))
        idx = scores.topk(kk, dim=-1, sorted=False).indices
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, idx, _true_like(idx))
    raise ValueError(f"selection={rule!r}: expected 'topk', 'paper', 'row_topk' or 'topk_heads'")


def _true_like(index: torch.Tensor) -> torch.Tensor:
    """Scatter a tensor of True, not the scalar: AOTInductor (torch 2.13) writes a scalar bool scatter value as
    Python's ``True`` into its C++ wrapper, which then does not compile."""
    return torch.ones_like(index, dtype=torch.bool)


def build_tile_mask(video_keep: torch.Tensor, layout: TokenLayout, key_lengths: torch.Tensor | None = None
                    ) -> TileMask:
    """Embed video-video decisions ``[B, H, g, g]`` in the full ``[B, H, T, T]`` tile grid.

    Text tiles attend and are attended densely; key tiles that hold only padded keys (``>= key_lengths[b]``) are
    dropped. ``video_sparsity`` is measured on ``video_keep``.
    """
    B, H, g, _ = video_keep.shape
    T = layout.num_tiles
    if T == g:
        kept = video_keep.clone()
    else:
        kept = torch.ones(B, H, T, T, dtype=torch.bool, device=video_keep.device)
        kept[:, :, :g, :g] = video_keep
    if key_lengths is not None:
        tile_start = torch.arange(T, device=kept.device) * layout.tile_size
        live = tile_start.view(1, T) < key_lengths.view(B, 1).to(kept.device)  # [B, T]
        kept &= live.view(B, 1, 1, T)
    sparsity = 1.0 - video_keep.float().mean(dim=(-1, -2))
    return TileMask(kept=kept, layout=layout, video_sparsity=sparsity)


def select_tiles(q: torch.Tensor, k: torch.Tensor, layout: TokenLayout, sparsity: float, rule: str = "topk",
                 pooling: str = "avg", scale: float | None = None, key_lengths: torch.Tensor | None = None
                 ) -> TileMask:
    """The whole draft step on permuted ``q, k [B, S, H, D]``: pool, score, select, embed text tiles."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = draft_scores(pool_tiles(q, layout, pooling), pool_tiles(k, layout, pooling), scale)
    return build_tile_mask(select_video_tiles(scores, sparsity, rule), layout, key_lengths)


def tile_mask_to_token_mask(kept: torch.Tensor, tile_size: int, seq_len: int) -> torch.Tensor:
    """Expand ``[B, H, T, T]`` to a token mask ``[B, H, S, S]`` (tests and tiny inputs only: it is ``S x S``)."""
    idx = torch.arange(seq_len, device=kept.device) // tile_size
    return kept[:, :, idx][:, :, :, idx]

"""Token layout: which tokens form a tile, and the permutation that makes every tile contiguous.

diffusers lists video tokens frame-major, then row-major (``index = f*H*W + y*W + x``), optionally followed by
``text_len`` text tokens (HunyuanVideo). Draft attention needs each draft region to be one tile of ``rh*rw``
consecutive tokens, so that a kept region pair is exactly one tile of the block-sparse kernel.

Any ``H x W`` is supported with *tile-aligned ragged regions* (see docs/design.md):

1. every full ``rh x rw`` region of every frame, frame by frame, region by region (row-major inside), so that
   full region ``i`` is exactly tile ``i``;
2. then the edge tokens that no full region covers, frame by frame: the right strip (``rh x (W % rw)`` pieces, band
   by band), then the bottom band (``(H % rh) x rw`` pieces and the corner), row-major inside each piece. These are
   cut into tiles of ``rh*rw`` consecutive tokens ("edge tiles").
3. then the text tokens, unchanged.

No token is padded or duplicated, so no extra tile is computed and the selected sparsity is exactly what the
kernel skips. Only edge tiles pool a thin strip instead of a compact region.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .tracing import is_exporting


@dataclass(frozen=True)
class VideoGrid:
    """Token grid of the video part of a sequence: ``frames x height x width`` tokens (after patching)."""

    frames: int
    height: int
    width: int

    def __post_init__(self) -> None:
        for name in ("frames", "height", "width"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"VideoGrid.{name}={v!r}: expected a positive integer")

    @property
    def num_tokens(self) -> int:
        return self.frames * self.height * self.width


@dataclass(frozen=True)
class TokenLayout:
    """Tile structure of one sequence ``[video tokens (grid), text tokens (text_len)]``.

    Attributes:
        grid, text_len, region_size: what it was built from.
        tile_size: tokens per tile (``rh * rw``).
        perm: int64 ``[S]``; the permuted sequence is ``x[:, perm]`` (position ``i`` holds token ``perm[i]``).
        inv_perm: int64 ``[S]``; ``y[:, inv_perm]`` puts a permuted sequence back in diffusers order.
        num_tiles: ``ceil(S / tile_size)`` tiles of the permuted sequence (the last may be partial).
        num_video_tiles: tiles made of video tokens only; these take part in the draft map. Tiles from
            ``num_video_tiles`` on hold text tokens and are always computed (dense rows and columns).
        num_full_region_tiles: tiles that are exactly one full ``rh x rw`` region; the rest are edge tiles.
        tile_counts: float ``[num_video_tiles]``, tokens in each video tile (the last may be partial).
    """

    grid: VideoGrid
    text_len: int
    region_size: tuple[int, int]
    tile_size: int
    perm: torch.Tensor
    inv_perm: torch.Tensor
    num_tiles: int
    num_video_tiles: int
    num_full_region_tiles: int
    tile_counts: torch.Tensor

    @property
    def seq_len(self) -> int:
        return self.grid.num_tokens + self.text_len

    @property
    def num_video_tokens(self) -> int:
        return self.grid.num_tokens


def video_permutation(grid: VideoGrid, region_size: tuple[int, int]) -> tuple[torch.Tensor, int]:
    """Permutation of the video tokens (see module doc) and the number of full regions. CPU int64 ``[F*H*W]``."""
    F, H, W = grid.frames, grid.height, grid.width
    rh, rw = region_size
    nb, nc = H // rh, W // rw  # full bands and full column groups
    idx = torch.arange(F * H * W).view(F, H, W)
    # 1. full regions: [F, nb, nc, rh, rw] -> contiguous
    full = idx[:, : nb * rh, : nc * rw].reshape(F, nb, rh, nc, rw).permute(0, 1, 3, 2, 4).reshape(-1)
    # 2. edge tokens per frame: right strip band by band, then bottom band group by group (corner last)
    edge_parts = []
    if W % rw:
        right = idx[:, : nb * rh, nc * rw :]  # [F, nb*rh, W%rw]
        edge_parts.append(right.reshape(F, nb, rh, W % rw).reshape(F, -1))
    if H % rh:
        bottom = idx[:, nb * rh :, :]  # [F, H%rh, W]
        groups = [bottom[:, :, c * rw : (c + 1) * rw].reshape(F, -1) for c in range(nc + (1 if W % rw else 0))]
        edge_parts.append(torch.cat(groups, dim=1))
    edge = torch.cat(edge_parts, dim=1).reshape(-1) if edge_parts else idx.new_empty(0)
    return torch.cat([full, edge]), F * nb * nc


def get_layout(grid: VideoGrid, text_len: int = 0, region_size: tuple[int, int] = (8, 16),
               device: torch.device | str = "cpu") -> TokenLayout:
    """The (cached) :class:`TokenLayout` for a grid, a text length and a region size, on ``device``.

    Example:
        >>> lay = get_layout(VideoGrid(2, 30, 52), text_len=0)
        >>> lay.num_tiles, lay.num_full_region_tiles
        (25, 18)
    """
    if is_exporting():
        # torch.export runs this Python on fake tensors: a cached fake layout would break every later eager call
        return _build_layout(grid, text_len, tuple(region_size), device)
    return _cached_layout(grid, text_len, tuple(region_size), device)


def _build_layout(grid: VideoGrid, text_len: int, region_size: tuple[int, int],
                  device: torch.device | str) -> TokenLayout:
    if not isinstance(text_len, int) or text_len < 0:
        raise ValueError(f"text_len={text_len!r}: expected a non-negative integer")
    rh, rw = region_size
    tile = rh * rw
    vperm, n_full = video_permutation(grid, region_size)
    nv = grid.num_tokens
    perm = torch.cat([vperm, torch.arange(nv, nv + text_len)])
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    seq = nv + text_len
    num_tiles = -(-seq // tile)
    num_video_tiles = nv // tile if text_len else -(-nv // tile)
    counts = torch.full((num_video_tiles,), float(tile))
    if not text_len and nv % tile:
        counts[-1] = float(nv % tile)
    device = torch.device(device)
    return TokenLayout(grid=grid, text_len=text_len, region_size=region_size, tile_size=tile,
                       perm=perm.to(device), inv_perm=inv.to(device), num_tiles=num_tiles,
                       num_video_tiles=num_video_tiles, num_full_region_tiles=n_full, tile_counts=counts.to(device))


_cached_layout = functools.lru_cache(maxsize=64)(_build_layout)

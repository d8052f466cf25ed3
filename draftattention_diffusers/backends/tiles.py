"""Tile-structure conversion shared by the GPU backends: a boolean tile mask -> per-row counts and key-tile lists.

Block-sparse kernels (flash-attn-4, FlexAttention) do not read a ``[T, T]`` boolean mask; they read, for every query
tile, how many key tiles to visit and which ones. Both want the list in ascending order: the kernels mask the
sequence tail (``S % 128`` or the padded keys) only on the last tile of the list.
"""

from __future__ import annotations

import torch


def tile_indices(kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept tiles as counts and ascending key-tile lists.

    Args:
        kept: bool ``[B, H, Tq, Tk]``, True where the tile (query tile, key tile) is computed.

    Returns:
        ``(counts, indices)``: int32 ``[B, H, Tq]`` (kept key tiles per query tile) and int32 ``[B, H, Tq, Tk]``
        whose first ``counts[b, h, i]`` entries are the kept key tiles of row ``i`` in ascending order; the
        entries after them are the skipped tiles (ascending too) and are never read by the kernels.

    No sort: each tile is scattered to its rank, kept tiles by the running count of kept tiles, skipped ones after
    ``counts`` by the running count of skipped ones (O(Tk) per row; the same lists as a stable sort of the flags).

    Equivalent loop (what the tests check)::

        for b, h, i: idx = [j for j in range(Tk) if kept[b, h, i, j]]; counts[b, h, i] = len(idx)

    Example:
        >>> kept = torch.tensor([[[[False, True, True], [True, False, False]]]])
        >>> counts, idx = tile_indices(kept)
        >>> counts.tolist(), idx[0, 0, 0].tolist(), idx[0, 0, 1].tolist()
        ([[[2, 1]]], [1, 2, 0], [0, 1, 2])
    """
    if kept.dtype != torch.bool or kept.dim() != 4:
        raise ValueError(f"kept: expected a bool tensor [B, H, Tq, Tk], got {kept.dtype} {tuple(kept.shape)}")
    tk = kept.shape[-1]
    kept_so_far = kept.cumsum(dim=-1, dtype=torch.int32)  # kept tiles up to and including column j
    counts = kept_so_far[..., -1].contiguous()
    columns = torch.arange(tk, dtype=torch.int32, device=kept.device)
    # kept column j -> kept_so_far - 1; skipped column j -> counts + (skipped columns before j) = counts + j - kept
    slot = torch.where(kept, kept_so_far - 1, counts.unsqueeze(-1) + columns - kept_so_far)
    lists = torch.empty_like(kept_so_far).scatter_(-1, slot.long(), columns.expand(kept.shape))
    return counts, lists


def split_boundary_tiles(kept: torch.Tensor, tile_size: int, key_lengths: torch.Tensor | None
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Split kept tiles into *full* tiles (every key live) and *boundary* tiles (some keys padded).

    With ``key_lengths`` (int ``[B]``), the key tile that holds position ``key_lengths[b]`` is only partly live when
    ``key_lengths[b] % tile_size != 0``; kernels must mask such a tile per element. Tiles that lie wholly in the
    padding are already dropped from ``kept`` (see ``build_tile_mask``).

    Returns ``(full, boundary)``: bool ``[B, H, Tq, Tk]`` each (``boundary`` is None without key padding).
    """
    if key_lengths is None:
        return kept, None
    B, _, _, Tk = kept.shape
    lengths = key_lengths.to(device=kept.device, dtype=torch.long).view(B)
    cut_tile = torch.where(lengths % tile_size != 0, lengths // tile_size, torch.full_like(lengths, -1))
    is_cut = torch.arange(Tk, device=kept.device).view(1, Tk) == cut_tile.view(B, 1)  # [B, Tk]
    boundary = kept & is_cut.view(B, 1, 1, Tk)
    return kept & ~boundary, boundary

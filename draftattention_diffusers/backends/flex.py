"""FlexAttention (``torch.nn.attention.flex_attention``) block-sparse attention: any recent CUDA GPU, no extra package.

The tile mask becomes a ``BlockMask`` built directly from the kept-tile lists (``BlockMask.from_kv_blocks``; no
``S x S`` mask is ever built). Kept tiles whose keys are all live are *full* blocks (no per-element mask work);
the one key tile per batch item that straddles the end of the unpadded keys is a *partial* block, masked by a
``mask_mod`` that reads the same tile table and the key lengths.

The kernel is fast only compiled: ``flex_attention`` is wrapped once per process in ``torch.compile(dynamic=False)``.
New mask values reuse the compiled kernel; new shapes compile again. On CPU, FlexAttention runs eagerly and
evaluates the ``mask_mod`` over a dense ``S x S`` grid (it ignores the block lists there), so it is correct but
slow and memory-hungry: ``auto`` never picks it on CPU (tests call :meth:`FlexBackend.forward` directly).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch

from ..core.selection import TileMask
from .base import TILE_128_NOTE, AttentionInputs, SparseAttentionBackend
from .tiles import split_boundary_tiles, tile_indices

_compiled_flex = None


def _flex_fn(device_type: str):
    """``flex_attention`` compiled once per process on CUDA (``dynamic=False``), eager elsewhere."""
    from torch.nn.attention.flex_attention import flex_attention

    if device_type != "cuda":
        return flex_attention
    global _compiled_flex
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


_HAS_TRITON: bool | None = None


def _has_triton() -> bool:
    # Looked up once and kept in a plain global: torch.compile traces a global read, not torch's has_triton().
    global _HAS_TRITON
    if _HAS_TRITON is None:
        from torch.utils._triton import has_triton

        _HAS_TRITON = bool(has_triton())
    return _HAS_TRITON


@functools.lru_cache(maxsize=1)
def _can_skip_q_blocks() -> bool:
    from torch.nn.attention.flex_attention import BlockMask

    return "compute_q_blocks" in inspect.signature(BlockMask.from_kv_blocks).parameters


def _from_kv_blocks_kwargs(needs_grad: bool) -> dict[str, Any]:
    # The transposed (query-major) lists only serve the backward pass; skip them where torch allows it.
    return {"compute_q_blocks": False} if _can_skip_q_blocks() and not needs_grad else {}


@dataclass
class FlexPlan:
    """A ``BlockMask`` for one :class:`TileMask` (and key lengths)."""

    block_mask: Any  # torch.nn.attention.flex_attention.BlockMask


def make_block_mask(tiles: TileMask, key_lengths: torch.Tensor | None, needs_grad: bool = False):
    """The ``BlockMask`` of ``tiles`` (see module doc): full blocks for wholly live kept tiles, partial blocks for
    the kept tiles that hold the end of the unpadded keys, and a ``mask_mod`` reproducing the tile table exactly."""
    from torch.nn.attention.flex_attention import BlockMask

    kept = tiles.kept
    t = tiles.layout.tile_size
    S = tiles.layout.seq_len
    full, boundary = split_boundary_tiles(kept, t, key_lengths)
    full_counts, full_indices = tile_indices(full)
    if boundary is None:
        # No partial blocks: zero counts. The lowering wants [B, H, Tq, Tk] index lists in a tensor of their own
        # (passing the full lists twice breaks the compiled kernel's arguments), so a zero tensor it is.
        counts, indices = torch.zeros_like(full_counts), torch.zeros_like(full_indices)

        def mask_mod(b, h, q_idx, kv_idx):
            return kept[b, h, q_idx // t, kv_idx // t]
    else:
        # At most one partial block per row: the key tile holding the end of the live keys (same for all rows of
        # a batch item). The kernels want [B, H, Tq, Tk] index lists; only entry 0 is read.
        B, H, Tq, Tk = kept.shape
        counts = boundary.any(dim=-1).to(torch.int32)
        cut = (key_lengths.to(device=kept.device, dtype=torch.int32) // t).clamp_max(Tk - 1)
        indices = full_indices.new_zeros(B, H, Tq, Tk)
        indices[..., 0] = cut.view(B, 1, 1)
        lengths = key_lengths.to(device=kept.device, dtype=torch.int32)

        def mask_mod(b, h, q_idx, kv_idx):
            return kept[b, h, q_idx // t, kv_idx // t] & (kv_idx < lengths[b])

    return BlockMask.from_kv_blocks(counts, indices, full_counts, full_indices, BLOCK_SIZE=t, mask_mod=mask_mod,
                                    seq_lengths=(S, S), **_from_kv_blocks_kwargs(needs_grad))


class FlexBackend(SparseAttentionBackend):
    """Block-sparse attention with FlexAttention, compiled per process for CUDA.

    Equivalent plain PyTorch: :class:`~draftattention_diffusers.backends.reference.ReferenceBackend`.

    Example:
        >>> out = FlexBackend().forward(q, k, v, tiles, key_lengths=None, scale=128 ** -0.5)  # doctest: +SKIP
    """

    name = "flex"
    supports_backward = True
    install_hint = "pip install 'torch>=2.5' (FlexAttention is part of PyTorch; it needs Triton on CUDA)"
    package = "FlexAttention"
    requires = ('torch.nn.attention.flex_attention',)
    devices = ("cuda",)
    device_note = ("; on CPU FlexAttention runs eagerly over a dense S x S mask: for tests only, call "
                   "FlexBackend().forward directly")
    min_compute_capability = (8, 0)
    dtypes = (torch.float16, torch.bfloat16, torch.float32)
    head_dims = (16, 32, 64, 128, 256)
    tile_sizes = (128,)
    tile_size_note = TILE_128_NOTE
    tolerance = {"float32": 1e-4, "float16": 2e-3, "bfloat16": 1.6e-2}

    def runtime_reasons(self, inputs: AttentionInputs) -> list[str]:
        if inputs.device_type == "cuda" and not _has_triton():
            return ["Triton is not available (FlexAttention compiles its CUDA kernel with Triton)"]
        return []

    def plan(self, tiles: TileMask, key_lengths: torch.Tensor | None, needs_grad: bool = False) -> FlexPlan:
        return FlexPlan(make_block_mask(tiles, key_lengths, needs_grad))

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: FlexPlan, scale: float) -> torch.Tensor:
        """The kernel alone on a prepared :class:`FlexPlan`: ``[B, S, H, D]`` in, ``[B, S, H, Dv]`` out."""
        fn = _flex_fn(q.device.type)
        out = fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=plan.block_mask,
                 scale=float(scale))
        return out.transpose(1, 2)

    def forward(self, q, k, v, tiles: TileMask, key_lengths, scale):
        needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
        return self.run(q, k, v, self.plan(tiles, key_lengths, needs_grad), scale)

"""flash-attn-4 (``flash_attn.cute``) block-sparse attention: the fastest backend on Hopper.

Every kept tile goes into the kernel's "full" block lists (no ``mask_mod``: no per-element work), the "mask" lists
are empty. Padded keys (HunyuanVideo's text) are cut with ``seqused_k``: the kernel masks the sequence end on the
last tile of each list, which is why the lists are ascending (:func:`.tiles.tile_indices`).

The kernel call is a ``torch.library`` custom op (``draftattention::fa4_attention``), so a transformer that uses
this backend can be compiled with ``torch.compile`` without a graph break at the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..core.selection import TileMask
from .base import TILE_128_NOTE, AttentionInputs, SparseAttentionBackend
from .tiles import tile_indices

FA4_VERSION = "4.0.0b36"
INSTALL = f"pip install flash-attn-4=={FA4_VERSION}"


@torch.library.custom_op("draftattention::fa4_attention", mutates_args=(), device_types="cuda")
def fa4_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, full_counts: Optional[torch.Tensor],
                  full_indices: Optional[torch.Tensor], seqused_k: Optional[torch.Tensor], scale: float,
                  tile_size: int) -> torch.Tensor:
    """flash-attn-4 forward, block-sparse when ``full_counts``/``full_indices`` are given, else dense.

    q, k, v: ``[B, S, H, D]`` fp16/bf16 on a Hopper GPU; ``full_counts`` int32 ``[B, H, Tq]``, ``full_indices``
    int32 ``[B, H, Tq, Tk]`` (ascending); ``seqused_k`` int32 ``[B]`` or None (keys ``>= seqused_k[b]`` ignored).
    Returns ``[B, S, H, Dv]``.
    """
    from flash_attn.cute import flash_attn_func, flash_attn_varlen_func
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch

    sparse = None
    if full_counts is not None:
        sparse = BlockSparseTensorsTorch(
            mask_block_cnt=torch.zeros_like(full_counts),
            # compact form: the kernel reads only the first `count` entries, so one column of zeros is enough
            mask_block_idx=full_counts.new_zeros(*full_counts.shape, 1),
            full_block_cnt=full_counts,
            full_block_idx=full_indices,
            block_size=(tile_size, tile_size),
        )
    if seqused_k is None:
        out = flash_attn_func(q, k, v, softmax_scale=scale, block_sparse_tensors=sparse)
    else:
        out = flash_attn_varlen_func(q, k, v, seqused_k=seqused_k, softmax_scale=scale, block_sparse_tensors=sparse)
    return out[0] if isinstance(out, tuple) else out  # (out, lse)


@fa4_attention.register_fake
def _(q, k, v, full_counts, full_indices, seqused_k, scale, tile_size):
    return q.new_empty(*q.shape[:-1], v.shape[-1])


@dataclass
class FA4Plan:
    """The kernel's view of a :class:`TileMask` (built once per call, reusable for several q/k/v)."""

    counts: torch.Tensor  # int32 [B, H, Tq]
    indices: torch.Tensor  # int32 [B, H, Tq, Tk]
    seqused_k: torch.Tensor | None  # int32 [B]
    tile_size: int


class FA4Backend(SparseAttentionBackend):
    """Block-sparse attention with flash-attn-4's CuTe-DSL kernels (Hopper, sm90).

    Equivalent plain PyTorch: :class:`~draftattention_diffusers.backends.reference.ReferenceBackend`.

    Example:
        >>> out = FA4Backend().forward(q, k, v, tiles, key_lengths=None, scale=128 ** -0.5)  # doctest: +SKIP
    """

    name = "fa4"
    install_hint = INSTALL
    package = "flash-attn-4"
    requires = ('flash_attn.cute', 'flash_attn.cute.block_sparsity')
    devices = ("cuda",)
    device_note = " on Hopper sm90"
    min_compute_capability = max_compute_capability = (9, 0)  # Hopper (sm90 is the only sm9x)
    capability_note = (" Hopper; flash-attn-4 ignores the block-sparse mask on sm8x and needs 256-row query blocks on "
                       "sm100, not 128")
    dtypes = (torch.float16, torch.bfloat16)
    head_dim_range = (8, 256, 8)  # on sm90
    tile_sizes = (128,)
    tile_size_note = TILE_128_NOTE
    tolerance = {"float16": 2e-3, "bfloat16": 1.6e-2}

    def plan(self, tiles: TileMask, key_lengths: torch.Tensor | None) -> FA4Plan:
        """Counts and ascending key-tile lists of ``tiles.kept`` (and the key lengths as int32)."""
        counts, indices = tile_indices(tiles.kept)
        seqused = None if key_lengths is None else key_lengths.to(device=tiles.kept.device, dtype=torch.int32)
        return FA4Plan(counts, indices, seqused, tiles.layout.tile_size)

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: FA4Plan, scale: float) -> torch.Tensor:
        """The kernel alone on a prepared :class:`FA4Plan` (``[B, S, H, D]`` in tile order)."""
        return fa4_attention(q, k, v, plan.counts, plan.indices, plan.seqused_k, float(scale), plan.tile_size)

    def forward(self, q, k, v, tiles: TileMask, key_lengths, scale):
        return self.run(q, k, v, self.plan(tiles, key_lengths), scale)

    def dense_forward(self, q, k, v, key_lengths, scale):
        """flash-attn-4 dense attention (any token order); padded keys cut with ``seqused_k``.

        Raises ``ValueError`` with the reasons when flash-attn-4 cannot run on these tensors."""
        reasons = [] if torch.compiler.is_compiling() else self.not_supported_reasons(
            AttentionInputs.from_tensors(q, v, 128, key_lengths is not None))  # checked in eager, not traced
        if reasons:
            raise ValueError("dense_backend 'fa4' cannot run: " + "; ".join(reasons))
        seqused = None if key_lengths is None else key_lengths.to(device=q.device, dtype=torch.int32)
        return fa4_attention(q, k, v, None, None, seqused, float(scale), 128)

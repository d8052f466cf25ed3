"""MIT Block-Sparse-Attention (``block_sparse_attn.block_sparse_attn_func``): FlashAttention-2-class kernels with a
128 x 128 block mask, when the package is importable.

It is not on PyPI and is built from its source (https://github.com/mit-han-lab/Block-Sparse-Attention, with its
CUTLASS submodule); this project never ships that code or a build of it. The kernel takes packed varlen tensors:
``q/k/v [total, H, D]`` with ``cu_seqlens``; padded keys are removed by packing each batch item's live keys.
It converts the boolean mask to its own lists on every call (its wrapper's cost, counted in the benchmarks).
"""

from __future__ import annotations

import torch

from ..core.selection import TileMask
from .base import SparseAttentionBackend

# It is not on PyPI and we never ship or script its build: point to its own instructions.
INSTALL = ("build and install it from its upstream source, following the README of "
           "https://github.com/mit-han-lab/Block-Sparse-Attention")


@torch.compiler.disable  # its wrapper counts the sparse heads on the host (data-dependent); keep it out of graphs
def _bsa_call(q, k, v, cu_q, cu_k, kept, max_q, max_k, scale):
    from block_sparse_attn import block_sparse_attn_func

    heads = q.shape[1]
    head_mask_type = torch.ones(heads, dtype=torch.int32, device=q.device)  # 1 = block-sparse head
    out = block_sparse_attn_func(q, k, v, cu_q, cu_k, head_mask_type, None, kept, max_q, max_k, 0.0,
                                 deterministic=False, softmax_scale=scale, is_causal=False, exact_streaming=False,
                                 return_attn_probs=False)
    return out[0] if isinstance(out, tuple) else out


class BlockSparseAttnBackend(SparseAttentionBackend):
    """Block-sparse attention with the MIT Block-Sparse-Attention kernels (sm80 / sm90, head dims 32/64/128).

    Equivalent plain PyTorch: :class:`~draftattention_diffusers.backends.reference.ReferenceBackend`.

    Example:
        >>> out = BlockSparseAttnBackend().forward(q, k, v, tiles, None, 128 ** -0.5)  # doctest: +SKIP
    """

    name = "bsa"
    install_hint = INSTALL
    package = "block_sparse_attn"
    requires = ('block_sparse_attn',)
    devices = ("cuda",)
    device_note = ", sm80 or newer"
    min_compute_capability = (8, 0)
    dtypes = (torch.float16, torch.bfloat16)
    head_dims = (32, 64, 128)
    value_dim_equals_head_dim = True
    tile_sizes = (128,)
    tile_size_note = ", the kernel's fixed block size"
    tolerance = {"float16": 2e-3, "bfloat16": 1.6e-2}

    def forward(self, q, k, v, tiles: TileMask, key_lengths, scale):
        B, S, H, D = q.shape
        dev = q.device
        step = torch.arange(B + 1, device=dev, dtype=torch.int32)
        cu_q = step * S
        qp = q.reshape(B * S, H, D)
        if key_lengths is None:
            cu_k, kp, vp = cu_q, k.reshape(B * S, H, D), v.reshape(B * S, H, v.shape[-1])
        else:  # pack the live keys of every batch item back to back
            lengths = key_lengths.to(device=dev, dtype=torch.int32)
            live = torch.arange(S, device=dev).view(1, S) < lengths.view(B, 1)
            kp, vp = k[live], v[live]
            cu_k = torch.cat([lengths.new_zeros(1), lengths.cumsum(0, dtype=torch.int32)])
        out = _bsa_call(qp, kp, vp, cu_q, cu_k, tiles.kept, S, S, float(scale))
        return out.view(B, S, H, -1)

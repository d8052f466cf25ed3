"""Pure-PyTorch block-sparse attention: the definition of the right answer, on CPU and GPU."""

from __future__ import annotations

import torch

from ..core.selection import TileMask
from .base import AttentionInputs, SparseAttentionBackend

# Upper bound for one chunk's score matrix (bytes); keeps memory bounded and never builds S x S.
_CHUNK_BYTES = 256 * 2**20


class ReferenceBackend(SparseAttentionBackend):
    """Exact masked softmax attention, computed in float32 (float64 for float64 inputs) one chunk of query tiles at
    a time.

    Equivalent plain PyTorch (for small S): ``softmax(q k^T * scale + log(token_mask)) v`` with the token mask
    expanded from ``tiles.kept`` and the key padding; a row with no kept key gives zeros.
    """

    name = "reference"
    supports_backward = True
    tolerance = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 8e-3}

    # No declared limits (any device, head dim, tile size); "any floating dtype" is a rule, not a list: checked here.
    def not_supported_reasons(self, inputs: AttentionInputs) -> list[str]:
        reasons = super().not_supported_reasons(inputs)
        if not inputs.dtype.is_floating_point:
            reasons.append(f"dtype={inputs.dtype} (supported: floating point)")
        return reasons

    def forward(self, q, k, v, tiles: TileMask, key_lengths, scale):
        B, S, H, _ = q.shape
        t = tiles.layout.tile_size
        acc = torch.promote_types(q.dtype, torch.float32)
        qf, kf, vf = (x.transpose(1, 2).to(acc) for x in (q, k, v))  # [B, H, S, D]
        out = torch.empty(B, H, S, vf.shape[-1], dtype=acc, device=q.device)
        pos = torch.arange(S, device=q.device)
        key_tile = pos // t
        key_ok = None if key_lengths is None else pos.view(1, S) < key_lengths.view(B, 1).to(q.device)
        tiles_per_chunk = max(1, _CHUNK_BYTES // (B * H * t * S * 5))  # 4 B of scores + 1 B of mask per entry
        for r0 in range(0, S, tiles_per_chunk * t):
            r1 = min(S, r0 + tiles_per_chunk * t)
            s = (qf[:, :, r0:r1] @ kf.transpose(-1, -2)) * scale  # [B, H, r, S]
            allowed = tiles.kept[:, :, key_tile[r0:r1]][..., key_tile]  # [B, H, r, S]
            if key_ok is not None:
                allowed = allowed & key_ok.view(B, 1, 1, S)
            s = s.masked_fill(~allowed, float("-inf"))
            m = s.amax(dim=-1, keepdim=True)
            empty = torch.isinf(m)  # rows with no kept key
            p = torch.exp(s - m.masked_fill(empty, 0.0))
            p = p / p.sum(dim=-1, keepdim=True).clamp_min(1e-30)
            out[:, :, r0:r1] = p @ vf
        return out.transpose(1, 2).to(q.dtype)

    def dense_forward(self, q, k, v, key_lengths, scale):
        from ..core.layout import VideoGrid, get_layout
        from ..core.selection import TileMask

        B, S, H, _ = q.shape
        layout = get_layout(VideoGrid(1, 1, S), 0, (1, S), q.device)  # one tile holding everything
        kept = torch.ones(B, H, 1, 1, dtype=torch.bool, device=q.device)
        return self.forward(q, k, v, TileMask(kept, layout, kept.new_zeros(B, H, dtype=torch.float)), key_lengths,
                            scale)

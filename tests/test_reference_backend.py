import pytest
import torch
import torch.nn.functional as F

from draftattention_diffusers import DraftAttentionConfig, VideoGrid, draft_attention
from draftattention_diffusers.backends import get_backend
from draftattention_diffusers.backends import reference as reference_module
from draftattention_diffusers.core import get_layout
from draftattention_diffusers.core.selection import build_tile_mask, select_tiles, tile_mask_to_token_mask


def masked_dense(q, k, v, token_mask, key_lengths, scale):
    """Plain dense attention with a [B,H,S,S] token mask, float64; empty rows give 0."""
    B, S, H, D = q.shape
    qh, kh, vh = (x.transpose(1, 2).double() for x in (q, k, v))
    allowed = token_mask.clone()
    if key_lengths is not None:
        allowed &= (torch.arange(S).view(1, S) < key_lengths.view(B, 1)).view(B, 1, 1, S)
    s = (qh @ kh.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return (p @ vh).transpose(1, 2)


@pytest.mark.parametrize("grid,text_len,rule,sparsity", [
    ((2, 16, 32), 0, "topk", 0.5), ((2, 15, 26), 0, "topk", 0.75), ((1, 17, 35), 23, "paper", 0.9),
    ((3, 8, 16), 0, "row_topk", 0.6), ((1, 9, 17), 40, "topk", 0.0)])
def test_reference_equals_masked_dense_fp32(grid, text_len, rule, sparsity):
    gen = torch.Generator().manual_seed(1)
    lay = get_layout(VideoGrid(*grid), text_len, (8, 16))
    B, H, D = 2, 3, 16
    q, k, v = (torch.randn(B, lay.seq_len, H, D, generator=gen) for _ in range(3))
    key_lengths = torch.tensor([lay.seq_len, lay.seq_len - text_len // 2]) if text_len else None
    tiles = select_tiles(q, k, lay, sparsity, rule, key_lengths=key_lengths)
    out = get_backend("reference").forward(q, k, v, tiles, key_lengths, D ** -0.5)
    ref = masked_dense(q, k, v, tile_mask_to_token_mask(tiles.kept, 128, lay.seq_len), key_lengths, D ** -0.5)
    err = (out.double() - ref).abs().max() / ref.abs().max()
    assert err < 1e-5


def test_reference_chunks_never_build_the_full_matrix(monkeypatch):
    monkeypatch.setattr(reference_module, "_CHUNK_BYTES", 1)  # force one query tile per chunk
    lay = get_layout(VideoGrid(2, 16, 32), 0, (8, 16))
    q, k, v = (torch.randn(1, lay.seq_len, 2, 8) for _ in range(3))
    tiles = select_tiles(q, k, lay, 0.5)
    seen = []
    real_matmul = torch.Tensor.__matmul__

    def spy(a, b):
        out = real_matmul(a, b)
        seen.append(out.shape[-2] * out.shape[-1])
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    get_backend("reference").forward(q, k, v, tiles, None, 8 ** -0.5)
    monkeypatch.undo()
    assert max(seen) <= 128 * lay.seq_len  # one query tile against all keys at a time, never S x S
    ref = masked_dense(q, k, v, tile_mask_to_token_mask(tiles.kept, 128, lay.seq_len), None, 8 ** -0.5)
    out = get_backend("reference").forward(q, k, v, tiles, None, 8 ** -0.5)
    assert (out.double() - ref).abs().max() < 1e-5


def test_empty_rows_give_zeros_not_nan():
    lay = get_layout(VideoGrid(1, 16, 32), 0, (8, 16))
    q, k, v = (torch.randn(1, lay.seq_len, 1, 8) for _ in range(3))
    keep = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    keep[..., 0, 0] = True
    out = get_backend("reference").forward(q, k, v, build_tile_mask(keep, lay), None, 0.3)
    assert torch.isfinite(out).all()
    assert (out[:, 128:] == 0).all() and (out[:, :128] != 0).any()


def test_padded_keys_are_never_attended():
    grid, text_len = VideoGrid(1, 16, 32), 64
    S = grid.num_tokens + text_len
    q, k, v = (torch.randn(2, S, 2, 16) for _ in range(3))
    key_lengths = torch.tensor([S, S - 20])
    cfg = DraftAttentionConfig(sparsity=0.5, backend="reference")
    out1, _ = draft_attention(q, k, v, grid, cfg, text_len=text_len, key_lengths=key_lengths)
    k2, v2 = k.clone(), v.clone()
    k2[1, S - 20:] = 1e4  # would dominate every row if attended
    v2[1, S - 20:] = 1e4
    out2, _ = draft_attention(q, k2, v2, grid, cfg, text_len=text_len, key_lengths=key_lengths)
    assert torch.equal(out1[1], out2[1])
    assert not torch.equal(out1[1], draft_attention(q, k2, v2, grid, cfg, text_len=text_len)[0][1])  # unmasked


def test_entry_point_returns_original_order_and_full_mask_is_dense():
    grid = VideoGrid(2, 15, 26)
    q, k, v = (torch.randn(2, grid.num_tokens, 2, 16, dtype=torch.float64) for _ in range(3))
    out, tiles = draft_attention(q, k, v, grid, DraftAttentionConfig(sparsity=0.0, backend="reference"))
    ref = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v))).transpose(1, 2)
    assert tiles.kept.all()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_entry_point_text_rows_attend_every_video_key():
    grid, text_len = VideoGrid(1, 16, 32), 128
    S = grid.num_tokens + text_len
    q, k, v = (torch.randn(1, S, 2, 16, dtype=torch.float64) for _ in range(3))
    out, tiles = draft_attention(q, k, v, grid, DraftAttentionConfig(sparsity=0.75, backend="reference"),
                                 text_len=text_len)
    dense = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v))).transpose(1, 2)
    torch.testing.assert_close(out[:, grid.num_tokens:], dense[:, grid.num_tokens:])  # text rows are dense
    assert not torch.allclose(out[:, :grid.num_tokens], dense[:, :grid.num_tokens])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_finite_and_close(dtype):
    grid = VideoGrid(2, 16, 32)
    q, k, v = (torch.randn(1, grid.num_tokens, 2, 32) for _ in range(3))
    cfg = DraftAttentionConfig(sparsity=0.5, backend="reference")
    out, tiles = draft_attention(q.to(dtype), k.to(dtype), v.to(dtype), grid, cfg)
    assert out.dtype == dtype and torch.isfinite(out).all()
    # same tiles in float32 (selection on near-tied random scores may differ with rounding; the attention must not)
    perm, inv = tiles.layout.perm, tiles.layout.inv_perm
    ref = get_backend("reference").forward(q[:, perm], k[:, perm], v[:, perm], tiles, None, 32 ** -0.5)[:, inv]
    assert (out.float() - ref).abs().max() < 0.02


class TestBadInput:
    grid = VideoGrid(1, 16, 32)

    def qkv(self, S=512, D=16, dtype=torch.float32):
        return [torch.randn(1, S, 2, D).to(dtype) for _ in range(3)]

    def test_sequence_length_mismatch(self):
        with pytest.raises(ValueError, match=r"1 x 16 x 32 \+ 0 = 512"):
            draft_attention(*self.qkv(S=500), self.grid, DraftAttentionConfig(backend="reference"))

    def test_integer_dtype(self):
        with pytest.raises(ValueError, match="floating"):
            draft_attention(*self.qkv(dtype=torch.int32), self.grid, DraftAttentionConfig(backend="reference"))

    def test_backend_that_cannot_run_names_its_reasons(self):
        with pytest.raises(ValueError, match="backend 'fa4' cannot run on device=cpu"):
            draft_attention(*self.qkv(), self.grid, DraftAttentionConfig(backend="fa4"))

    def test_bad_key_lengths(self):
        with pytest.raises(ValueError, match="key_lengths"):
            draft_attention(*self.qkv(), self.grid, DraftAttentionConfig(backend="reference"),
                            key_lengths=torch.tensor([100]))

    def test_mismatched_shapes(self):
        q, k, v = self.qkv()
        with pytest.raises(ValueError, match="head_dim"):
            draft_attention(q, k[..., :8], v, self.grid, DraftAttentionConfig(backend="reference"))


def test_fewer_video_tokens_than_one_tile_before_text_is_a_clear_error():
    grid = VideoGrid(1, 4, 8)  # 32 video tokens, then text: no whole video tile to select from
    q = k = v = torch.randn(1, 32 + 16, 2, 16)
    with pytest.raises(ValueError, match="fewer than one 128-token tile before the 16 text tokens"):
        draft_attention(q, k, v, grid, DraftAttentionConfig(backend="reference"), text_len=16)

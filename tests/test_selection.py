import math

import numpy as np
import pytest
import torch

from draftattention_diffusers.core import VideoGrid, get_layout
from draftattention_diffusers.core.selection import (build_tile_mask, keep_budget, select_tiles,
                                                     select_video_tiles)


def paper_rule_numpy(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """Independent, loop-based version of the published rule (attention_percentile_mask_headwise)."""
    B, H, g, _ = scores.shape
    out = np.zeros_like(scores, dtype=bool)
    for b in range(B):
        for h in range(H):
            flat = scores[b, h].reshape(-1)
            r = 1.0 - sparsity  # the published code is called with the kept fraction r
            k = int((1.0 - r) * flat.size)
            if k == 0:
                out[b, h] = True
                continue
            threshold = np.sort(flat)[k - 1]  # the largest of the k smallest
            out[b, h] = scores[b, h] >= threshold
    return out


def random_scores(B, H, g, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(B, H, g, g, generator=gen) * 3, dim=-1)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.75, 0.9, 0.97])
@pytest.mark.parametrize("g", [1, 5, 17, 40])
def test_paper_rule_matches_independent_implementation(sparsity, g):
    s = random_scores(2, 3, g, seed=g)
    np.testing.assert_array_equal(select_video_tiles(s, sparsity, "paper").numpy(),
                                  paper_rule_numpy(s.numpy(), sparsity))


def test_paper_rule_keeps_ties_and_one_extra_tile():
    s = torch.full((1, 1, 4, 4), 1 / 4)  # all tied: the threshold keeps everything
    assert select_video_tiles(s, 0.9, "paper").all()
    s = random_scores(1, 1, 10)
    kept = select_video_tiles(s, 0.9, "paper").sum().item()
    assert kept == 100 - int(0.9 * 100) + 1


@pytest.mark.parametrize("sparsity,g,published_k", [(0.45, 30, 404), (0.1, 10, 9), (0.2, 5, 4)])
def test_paper_rule_uses_the_published_arithmetic(sparsity, g, published_k):
    """The published code skips int((1 - r) * n) entries with r = 1 - sparsity; in floating point that is one less
    than int(sparsity * n) at these settings, so it keeps one tile more."""
    n = g * g
    assert int((1 - (1 - sparsity)) * n) == published_k == int(sparsity * n) - 1
    s = random_scores(2, 3, g, seed=g)
    assert s.reshape(6, n).sort(dim=-1).values.diff(dim=-1).ne(0).all()  # no ties: the count is exact
    kept = select_video_tiles(s, sparsity, "paper").sum(dim=(-1, -2))
    assert (kept == n - published_k + 1).all(), kept


@pytest.mark.parametrize("rule", ["topk", "paper", "row_topk"])
@pytest.mark.parametrize("sparsity", [0.5, 0.75, 0.9])
def test_achieved_sparsity_close_to_target_on_large_maps(rule, sparsity):
    s = random_scores(1, 2, 300, seed=1)
    kept = select_video_tiles(s, sparsity, rule)
    achieved = 1 - kept.float().mean().item()
    assert abs(achieved - sparsity) <= 0.01, (rule, achieved)


def test_topk_never_leaves_a_row_empty_and_keeps_the_budget():
    s = random_scores(2, 4, 50, seed=2)
    s[0, 0, 3] = 0.0  # a query region whose scores are all tiny still gets its best key
    s[0, 0, 3, 7] = 1e-9
    kept = select_video_tiles(s, 0.95, "topk")
    assert kept.any(dim=-1).all()
    assert (kept.sum(dim=(-1, -2)) == keep_budget(0.95, 2500)).all()
    assert kept[0, 0, 3, 7]
    best = s.argmax(dim=-1, keepdim=True)
    assert kept.gather(-1, best).all()
    # the rest is the highest remaining scores: no dropped tile scores above a kept non-row-best tile
    rowbest = torch.zeros_like(kept).scatter_(-1, best, True)
    extra = kept & ~rowbest
    for b in range(2):
        for h in range(4):
            if extra[b, h].any():
                assert s[b, h][extra[b, h]].min() >= s[b, h][~kept[b, h]].max()


def test_paper_rule_can_leave_rows_empty_but_topk_cannot():
    g = 30
    s = torch.full((1, 1, g, g), 0.1 / (g - 2))
    s[0, 0, 1:, :2] = 0.45  # rows 1.. have two strong keys each; row 0 is flat (1/g each)
    s[0, 0, 0] = 1 / g
    assert not select_video_tiles(s, 0.95, "paper").any(dim=-1).all()
    assert select_video_tiles(s, 0.95, "topk").any(dim=-1).all()


def test_row_topk_keeps_equal_counts_per_row():
    kept = select_video_tiles(random_scores(1, 2, 20), 0.75, "row_topk")
    assert (kept.sum(-1) == 5).all()


def test_keep_budget_is_robust_to_float_noise():
    assert keep_budget(0.9, 100) == 10
    assert keep_budget(0.75, 16) == 4
    assert keep_budget(0.0, 7) == 7
    assert keep_budget(0.95, 9) == math.ceil(0.05 * 9)


def test_text_rows_and_columns_dense_and_padded_key_tiles_dropped():
    lay = get_layout(VideoGrid(1, 16, 32), 300, (8, 16))  # 512 video tokens = 4 tiles, text 300 -> tiles 4..6
    assert lay.num_video_tiles == 4 and lay.num_tiles == 7
    video_keep = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    video_keep[..., 0, 0] = True
    key_lengths = torch.tensor([812, 512 + 100])  # item 1: text keys from 612 on are padding
    tm = build_tile_mask(video_keep, lay, key_lengths)
    assert tm.kept[:, :, 4:, :].sum() == tm.kept[:, :, 4:, :].numel() - 3 * 2  # item 1: key tiles 5, 6 dead
    assert tm.kept[0, :, :, 4:].all()
    assert tm.kept[1, :, :, 4].all() and not tm.kept[1, :, :, 5:].any()
    assert torch.equal(tm.kept[:, :, :4, :4], video_keep)
    torch.testing.assert_close(tm.video_sparsity, torch.full((2, 1), 15 / 16))


def test_each_batch_item_gets_its_own_mask():
    lay = get_layout(VideoGrid(2, 16, 32), 0, (8, 16))
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, lay.seq_len, 2, 16, generator=gen)
    k = torch.randn(2, lay.seq_len, 2, 16, generator=gen)
    both = select_tiles(q, k, lay, 0.75).kept
    for b in range(2):
        alone = select_tiles(q[b:b + 1], k[b:b + 1], lay, 0.75).kept
        assert torch.equal(both[b:b + 1], alone)
    assert not torch.equal(both[0], both[1])


def test_unknown_rule_raises():
    with pytest.raises(ValueError, match="selection"):
        select_video_tiles(random_scores(1, 1, 3), 0.5, "nope")

import pytest
import torch

from draftattention_diffusers.core import VideoGrid, get_layout
from draftattention_diffusers.core.selection import pool_tiles

GRIDS = [(1, 1, 1), (3, 7, 5), (2, 30, 52), (1, 45, 80), (2, 8, 16), (1, 9, 17), (2, 16, 48), (3, 15, 26)]
REGIONS = [(8, 16), (16, 8), (16, 16), (4, 4), (1, 128)]


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("text_len", [0, 7])
def test_permutation_round_trip(grid, region, text_len):
    lay = get_layout(VideoGrid(*grid), text_len, region)
    n = lay.seq_len
    assert sorted(lay.perm.tolist()) == list(range(n))
    x = torch.randn(2, n, 3)
    assert torch.equal(x[:, lay.perm][:, lay.inv_perm], x)
    assert lay.perm[lay.num_video_tokens:].tolist() == list(range(lay.num_video_tokens, n))  # text stays last
    assert lay.num_tiles == -(-n // (region[0] * region[1]))


def test_full_regions_are_tiles_in_frame_region_order():
    F, H, W = 2, 30, 52
    lay = get_layout(VideoGrid(F, H, W), 0, (8, 16))
    per_frame = (H // 8) * (W // 16)
    assert lay.num_full_region_tiles == F * per_frame
    for tile in range(lay.num_full_region_tiles):
        f, r = divmod(tile, per_frame)
        band, col = divmod(r, W // 16)
        expect = [f * H * W + (band * 8 + y) * W + col * 16 + x for y in range(8) for x in range(16)]
        assert lay.perm[tile * 128:(tile + 1) * 128].tolist() == expect  # row-major inside the region


def test_edge_tokens_follow_full_regions():
    lay = get_layout(VideoGrid(1, 9, 17), 0, (8, 16))
    edge = lay.perm[128:].tolist()
    right = [y * 17 + 16 for y in range(8)]  # right strip, then bottom band
    bottom = [8 * 17 + x for x in range(17)]
    assert edge == right + bottom


def test_layout_is_cached_per_shape_and_device():
    a = get_layout(VideoGrid(2, 30, 52), 0, (8, 16), torch.device("cpu"))
    assert get_layout(VideoGrid(2, 30, 52), 0, (8, 16), torch.device("cpu")) is a
    assert get_layout(VideoGrid(2, 30, 52), 4, (8, 16), torch.device("cpu")) is not a


@pytest.mark.parametrize("text_len", [0, 5])
def test_pooled_values_equal_explicit_means(text_len):
    F, H, W = 2, 17, 35
    lay = get_layout(VideoGrid(F, H, W), text_len, (8, 16))
    q = torch.randn(2, lay.seq_len, 3, 4, dtype=torch.float64)
    pooled = pool_tiles(q[:, lay.perm], lay, "avg")
    maxed = pool_tiles(q[:, lay.perm], lay, "max")
    video = q[:, :F * H * W].view(2, F, H, W, 3, 4)
    per_frame = (H // 8) * (W // 16)
    for tile in range(lay.num_full_region_tiles):
        f, r = divmod(tile, per_frame)
        band, col = divmod(r, W // 16)
        region = video[:, f, band * 8:(band + 1) * 8, col * 16:(col + 1) * 16].reshape(2, 128, 3, 4)
        torch.testing.assert_close(pooled[:, :, tile].double(), region.mean(1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(maxed[:, :, tile].double(), region.amax(1))
    # every video tile (edge tiles and a partial last tile too) is the mean of exactly its tokens
    qp = q[:, lay.perm]
    for tile in range(lay.num_video_tiles):
        toks = qp[:, tile * 128:min((tile + 1) * 128, lay.num_video_tokens)]
        torch.testing.assert_close(pooled[:, :, tile].double(), toks.mean(1), rtol=1e-5, atol=1e-6)


def test_text_tiles_are_not_pooled():
    lay = get_layout(VideoGrid(1, 8, 20), 10, (8, 16))  # 160 video tokens, text starts inside tile 1
    assert lay.num_video_tiles == 1 and lay.num_tiles == 2


def test_bad_grid_raises():
    with pytest.raises(ValueError, match="frames"):
        VideoGrid(0, 8, 16)
    with pytest.raises(ValueError, match="text_len"):
        get_layout(VideoGrid(1, 8, 16), -1)

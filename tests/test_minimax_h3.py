"""MiniMax-H3 (models/minimax_h3.py): its pipelines are modular, so a tiny transformer is called as
MiniMaxH3LoopDenoiser calls it, on the packed layout diffusers' own MiniMaxH3PrepareLayoutStep.build_packed_sequence
builds (``[text | keyframe rows | target audio | target video]``): the target video tail is the grid (keyframes and
audio excluded), the prefix stays dense, dense_steps_fraction=1 and disable are bit-identical, sparsity 0 equals dense
within float rounding, and a sequence whose tail is not a grid runs dense visibly."""

import pytest
import torch
from pipeline_utils import max_diff

from draftattention_diffusers import (disable_draft_attention, draft_attention_enabled, enable_draft_attention,
                                      get_draft_processor, get_draft_stats)
from draftattention_diffusers.core.layout import VideoGrid, get_layout
from draftattention_diffusers.models.base import count_hooks
from draftattention_diffusers.models.minimax_h3 import denoiser_inputs, target_video_grid

FRAMES, LATENT_H, LATENT_W = 2, 16, 64  # 2 x 8 x 32 tokens: two 8x16 regions side by side per frame
TEXT, AUDIO_LATENTS, AUDIO_CHANNELS = 8, 5, 2


def tiny_transformer():
    from diffusers import MiniMaxH3Transformer3DModel

    torch.manual_seed(0)
    return MiniMaxH3Transformer3DModel(num_attention_heads=2, attention_head_dim=32, hidden_size=64, num_layers=2,
                                       num_refiner_layers=1, ffn_dim=64, in_channels=4, audio_in_channels=4,
                                       text_dim=32, freq_dim=32, time_embed_hidden_dim=32, time_embed_dim=32,
                                       rope_freq_dim=4).eval()


def packed_inputs(keyframe_anchors=("first",)):
    """The forward's arguments as MiniMaxH3LoopDenoiser passes them (target rows at timestep 0.7, keyframe rows at
    0.999), on the layout of diffusers' build_packed_sequence (the family module's denoiser_inputs)."""
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, FRAMES + len(keyframe_anchors), LATENT_H, LATENT_W, generator=g)
    return denoiser_inputs(latents, torch.randn(1, AUDIO_LATENTS * AUDIO_CHANNELS, 4, generator=g),
                           torch.randn(1, TEXT, 32, generator=g), keyframe_anchors)


@pytest.fixture(scope="module")
def transformer():
    return tiny_transformer()


def forward(tr, kw):
    with torch.no_grad():
        return torch.cat([o.flatten() for o in tr(**kw)])


@pytest.mark.parametrize("anchors", [(), ("first",), ("first", "last")])
def test_the_grid_is_the_target_video_tail(anchors):
    kw = packed_inputs(anchors)
    grid = target_video_grid(kw["position_ids"], kw["video_indices"])
    assert grid == VideoGrid(FRAMES, LATENT_H // 2, LATENT_W // 2)
    perm = get_layout(grid).perm
    assert not torch.equal(perm, torch.arange(len(perm)))


def test_dense_and_disable_bit_identical_sparsity_zero_equals_dense(transformer):
    kw = packed_inputs()
    base = forward(transformer, kw)
    hooks = count_hooks(transformer)
    with draft_attention_enabled(transformer, dense_steps_fraction=1.0):
        assert torch.equal(forward(transformer, kw), base)
    with draft_attention_enabled(transformer, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        zero = forward(transformer, kw)
        stats = get_draft_stats(transformer).summary()
        assert get_draft_processor(transformer).grid == VideoGrid(FRAMES, LATENT_H // 2, LATENT_W // 2)
    assert stats["sparse_calls"] == 2 and stats["fallbacks"] == {}
    assert max_diff(zero, base) <= 1e-4 * max(1.0, base.abs().max().item())
    enable_draft_attention(transformer, sparsity=0.5, dense_steps_fraction=0.0)
    sparse = forward(transformer, kw)
    disable_draft_attention(transformer)
    assert not torch.equal(sparse, base)
    assert torch.equal(forward(transformer, kw), base) and count_hooks(transformer) == hooks


def test_a_tail_that_is_not_a_grid_runs_dense_visibly(transformer):
    kw = packed_inputs()
    kw["position_ids"] = kw["position_ids"].clone()
    kw["position_ids"][-3, 1] += 0.5  # the last frame's rows are no longer a row-major grid
    assert target_video_grid(kw["position_ids"], kw["video_indices"]) is None
    base = forward(transformer, kw)
    with draft_attention_enabled(transformer, sparsity=0.5, dense_steps_fraction=0.0):
        out = forward(transformer, kw)
        stats = get_draft_stats(transformer).summary()
    assert stats["sparse_calls"] == 0 and any("grid of this forward is unknown" in f for f in stats["fallbacks"])
    assert max_diff(out, base) <= 1e-4 * max(1.0, base.abs().max().item())


def test_compiled_whole_it_runs_dense_compiled_by_blocks_sparse(transformer):
    """diffusers' compile tests on MiniMax-H3 with draft attention. The grid is read from position_ids' values (a host
    sync), so a whole-model fullgraph compile cannot know it: its calls run dense inside the graph, without a graph
    break or a recompile (recording that fallback's message there broke fullgraph), counted on the device as
    compiled fallbacks, which the statistics list and warn. Compiled by blocks, the grid comes from the eager
    pre-forward hook and the routed call runs sparse in one graph, equal to eager."""
    import torch._dynamo as dynamo
    from pipeline_utils import uncompile

    from draftattention_diffusers import get_draft_stats
    from draftattention_diffusers.integration import stats as stats_module

    kw = packed_inputs()
    base = forward(transformer, kw)
    with draft_attention_enabled(transformer, sparsity=0.5, dense_steps_fraction=0.0, backend="reference"):
        sparse = forward(transformer, kw)
        before = get_draft_stats(transformer).summary()
        assert before["sparse_calls"] > 0 and before["fallbacks"] == {}
        dynamo.reset()
        whole = torch.compile(transformer, fullgraph=True, backend="aot_eager")
        with dynamo.config.patch(error_on_recompile=True):
            forward(whole, kw)
            compiled_whole = forward(whole, kw)
        stats_module._warned.discard(stats_module.COMPILED_FALLBACK)
        with pytest.warns(stats_module.DraftAttentionWarning, match="inside a torch.compile graph ran dense"):
            after = get_draft_stats(transformer).summary()
        # every call of the two compiled forwards fell back, and only those
        assert after["sparse_calls"] == before["sparse_calls"]
        assert after["fallbacks"] == {stats_module.COMPILED_FALLBACK: 2 * before["sparse_calls"]}
        assert after["dense_calls"] - before["dense_calls"] == 2 * before["sparse_calls"]
        dynamo.reset()
        transformer.compile_repeated_blocks(fullgraph=True, backend="aot_eager")
        try:
            with dynamo.config.patch(recompile_limit=1):
                forward(transformer, kw)
                compiled_blocks = forward(transformer, kw)
        finally:
            uncompile(transformer)
    assert max_diff(compiled_whole, base) <= 1e-4 * max(1.0, base.abs().max().item())
    assert max_diff(compiled_blocks, sparse) <= 1e-5 and not torch.equal(sparse, base)

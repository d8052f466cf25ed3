"""CogVideoX, added as one module (models/cogvideox.py) plus one table line: the first family whose text tokens come
*before* the video tokens in self-attention (``[text, video]``). The checks every family gets, on the tiny
CogVideoX-5B-style and CogVideoX-1.5-style (2 latent frames per token) pipelines, at a grid whose tile order is not
the identity; and the hook points that carry positions (RoPE tables, positional embeddings in ``patch_embed``)."""

import pytest
import torch
from pipeline_utils import REORDERING_SIZE, max_diff, run

from draftattention_diffusers import (disable_draft_attention, draft_attention_enabled, enable_draft_attention,
                                      get_draft_processor, get_draft_stats)
from draftattention_diffusers.core import get_layout
from draftattention_diffusers.core.layout import VideoGrid
from draftattention_diffusers.models.base import count_hooks
from draftattention_diffusers.models.cogvideox import build_tiny_cogvideox
from draftattention_diffusers.tiny import build_tiny_pipeline

# CogVideoX 1.5 pads the latent frames to a multiple of its temporal patch (2): 9 frames -> 3 (+1) latent frames
# -> 2 token frames of 8x32 (two 8x16 regions each), as 5 frames give CogVideoX 1.0
SIZES = {"cogvideox": REORDERING_SIZE, "cogvideox15": dict(REORDERING_SIZE, num_frames=9)}


@pytest.fixture(scope="module", params=list(SIZES))
def pipe(request):
    return build_tiny_pipeline(request.param), SIZES[request.param]


def test_grid_after_vae_and_patching_is_reordered(pipe):
    pipe, size = pipe
    with draft_attention_enabled(pipe, sparsity=0.5, dense_steps_fraction=0.0):
        run(pipe, steps=1, size=size)
        grid = get_draft_processor(pipe).grid
    assert grid == VideoGrid(2, 8, 32)
    perm = get_layout(grid, 16).perm
    assert not torch.equal(perm, torch.arange(perm.numel()))


def test_dense_schedule_and_disable_are_bit_identical(pipe):
    pipe, size = pipe
    base, _ = run(pipe, steps=3, size=size)
    hooks = count_hooks(pipe.transformer)
    with draft_attention_enabled(pipe, dense_steps_fraction=1.0):
        dense, _ = run(pipe, steps=3, size=size)
        assert get_draft_stats(pipe).summary()["sparse_calls"] == 0
    enable_draft_attention(pipe, sparsity=0.5, dense_steps_fraction=0.0)
    sparse, _ = run(pipe, steps=3, size=size)
    disable_draft_attention(pipe)
    again, _ = run(pipe, steps=3, size=size)
    assert torch.equal(dense, base) and torch.equal(again, base) and not torch.equal(sparse, base)
    assert count_hooks(pipe.transformer) == hooks and count_hooks(pipe.transformer, draft_only=True) == 0


def test_sparsity_zero_equals_dense(pipe):
    """Leading text reordered to [video, text] in our q/k/v path, RoPE on the video slice, tile order: with every
    tile kept it equals diffusers' processor within float rounding."""
    pipe, size = pipe
    base, _ = run(pipe, steps=3, size=size)
    with draft_attention_enabled(pipe, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        out, _ = run(pipe, steps=3, size=size)
        stats = get_draft_stats(pipe).summary()
    assert stats["sparse_calls"] > 0 and stats["fallbacks"] == {}
    assert max_diff(out, base) < 1e-4


@pytest.mark.parametrize("reorder", ["per_call", "per_forward"])
def test_step_schedule(pipe, reorder):
    """CogVideoX's schedulers keep no step_index: the step comes from the pipeline loop. Dense steps are exact
    when gathered per call, equal within rounding in tile order (per forward), then sparse."""
    pipe, size = pipe
    assert not hasattr(pipe.scheduler, "step_index")
    base, base_steps = run(pipe, steps=4, size=size)
    with draft_attention_enabled(pipe, sparsity=0.75, dense_steps_fraction=0.5, reorder=reorder):
        out, steps = run(pipe, steps=4, size=size)
        stats = get_draft_stats(pipe).summary()
    assert stats["steps"] == {0: "dense", 1: "dense", 2: "sparse", 3: "sparse"} and stats["fallbacks"] == {}
    assert stats["mean_sparsity"] > 0.5 and not torch.equal(out, base)
    if reorder == "per_call":
        assert all(torch.equal(a, b) for a, b in zip(steps[:2], base_steps[:2]))
    else:
        assert all(max_diff(a, b) < 1e-5 for a, b in zip(steps[:2], base_steps[:2]))


def test_tile_order_per_forward_equals_gathering_per_call(pipe):
    """The hooks (patch_embed output, the image_rotary_emb argument, proj_out input) permute everything indexed by
    token position: the same sparse run as gathering q/k/v in every call."""
    pipe, size = pipe
    outs = {}
    for reorder in ("per_forward", "per_call"):
        with draft_attention_enabled(pipe, sparsity=0.6, dense_steps_fraction=0.0, reorder=reorder):
            outs[reorder], _ = run(pipe, steps=2, size=size)
    torch.testing.assert_close(outs["per_forward"], outs["per_call"], rtol=1e-4, atol=1e-4)


def test_cogvideox_2b_positional_embeddings_in_patch_embed():
    """CogVideoX-2B-style: no RoPE, sincos positional embeddings added inside patch_embed (before the tile-order
    hook, so they travel with their tokens)."""
    pipe = build_tiny_cogvideox(rotary=False)
    assert pipe.transformer.patch_embed.use_positional_embeddings
    base, _ = run(pipe, steps=2)
    outs = {}
    with draft_attention_enabled(pipe, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        zero, _ = run(pipe, steps=2)
    for reorder in ("per_forward", "per_call"):
        with draft_attention_enabled(pipe, sparsity=0.6, dense_steps_fraction=0.0, reorder=reorder):
            outs[reorder], _ = run(pipe, steps=2)
    assert max_diff(zero, base) < 1e-4
    torch.testing.assert_close(outs["per_forward"], outs["per_call"], rtol=1e-4, atol=1e-4)


def test_image_to_video_with_learned_positional_embeddings():
    """CogVideoX-5B-I2V-style: image latents concatenated on channels, learned positional embeddings."""
    from diffusers import CogVideoXImageToVideoPipeline, CogVideoXTransformer3DModel

    t2v = build_tiny_cogvideox()
    torch.manual_seed(3)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=32, in_channels=8, out_channels=4, time_embed_dim=32,
        text_embed_dim=32, num_layers=1, sample_height=16, sample_width=64, sample_frames=9, patch_size=2,
        max_text_seq_length=16, use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True).eval()
    torch.nn.init.normal_(transformer.patch_embed.pos_embedding)  # learned: not the sincos table
    pipe = CogVideoXImageToVideoPipeline(**{**t2v.components, "transformer": transformer})
    kw = dict(size=dict(height=128, width=512, num_frames=9), image=torch.rand(1, 3, 128, 512))
    base, _ = run(pipe, steps=2, **kw)
    with draft_attention_enabled(pipe, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        zero, _ = run(pipe, steps=2, **kw)
    with draft_attention_enabled(pipe, sparsity=0.6, dense_steps_fraction=0.5):
        sparse, _ = run(pipe, steps=2, **kw)
        stats = get_draft_stats(pipe).summary()
    assert max_diff(zero, base) < 1e-4
    assert stats["steps"] == {0: "dense", 1: "sparse"} and stats["sparse_calls"] > 0 and stats["fallbacks"] == {}
    assert not torch.equal(sparse, base)


def test_bare_set_attn_processor_reads_the_grid_from_the_forward():
    """A first bare set_attn_processor: the grid of that forward comes from the forward's locals (latent sizes
    before patching, divided by the patch sizes)."""
    from draftattention_diffusers import DraftAttnProcessor

    pipe = build_tiny_pipeline("cogvideox15", num_layers=1)
    proc = DraftAttnProcessor(sparsity=0.5, dense_steps_fraction=0.0)
    pipe.transformer.set_attn_processor(proc)
    run(pipe, steps=1, size=SIZES["cogvideox15"])
    assert proc.grid == VideoGrid(2, 8, 32) and proc.stats.summary()["sparse_calls"] > 0
    disable_draft_attention(pipe)


def test_pipelines_and_load_recipe():
    """CogVideoXPipeline and CogVideoXImageToVideoPipeline (its own checkpoint, --image) load as the 5B model cards
    do (bfloat16, VAE tiling); V2V / Fun-Control are served through the Python API; CFG uses the negative prompt."""
    from draftattention_diffusers.models import family_for_pipeline
    from draftattention_diffusers.models.base import IMAGE_TO_VIDEO, LoadRecipe

    family = family_for_pipeline("CogVideoXPipeline", loadable=True)
    assert family.pipelines["CogVideoXPipeline"] == LoadRecipe(torch.bfloat16, torch.bfloat16, torch.bfloat16,
                                                               vae_tiling=True)
    i2v = family_for_pipeline("CogVideoXImageToVideoPipeline", loadable=True)
    assert i2v is family and family.pipelines["CogVideoXImageToVideoPipeline"] == LoadRecipe(
        torch.bfloat16, torch.bfloat16, torch.bfloat16, vae_tiling=True, inputs=IMAGE_TO_VIDEO)
    for name in ("CogVideoXVideoToVideoPipeline", "CogVideoXFunControlPipeline"):
        assert family_for_pipeline(name) is family and family_for_pipeline(name, loadable=True) is None
    assert family.text_position == "leading" and family.takes_negative_prompt and family.default_fps == 8


def test_fused_projections_in_both_orders():
    """``pipe.fuse_qkv_projections()`` (CogVideoX's speed option) swaps the model's processors for
    ``FusedCogVideoXAttnProcessor2_0`` through ``set_attn_processor``: the same attention, so draft attention stays
    enabled whether it comes before or after fusing, the fused processors become its dense path and what disable
    restores, and unfusing goes back to the processors from before fusing."""
    from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0, FusedCogVideoXAttnProcessor2_0

    def processors(p):
        return {type(v) for v in p.transformer.attn_processors.values()}

    pipe = build_tiny_pipeline("cogvideox")
    hooks = count_hooks(pipe.transformer)
    base, _ = run(pipe, steps=2)
    for draft_first in (True, False):
        if draft_first:
            enable_draft_attention(pipe, sparsity=0.0, dense_steps_fraction=0.0, backend="reference")
        pipe.fuse_qkv_projections()
        if not draft_first:
            enable_draft_attention(pipe, sparsity=0.0, dense_steps_fraction=0.0, backend="reference")
        zero, _ = run(pipe, steps=2)
        stats = get_draft_stats(pipe).summary()
        assert max_diff(zero, base) < 1e-4 and stats["sparse_calls"] == 4 and stats["fallbacks"] == {}
        disable_draft_attention(pipe)
        assert processors(pipe) == {FusedCogVideoXAttnProcessor2_0} and count_hooks(pipe.transformer) == hooks
        again, _ = run(pipe, steps=2)
        assert max_diff(again, base) < 1e-5
        pipe.unfuse_qkv_projections()
        assert processors(pipe) == {CogVideoXAttnProcessor2_0}
    enable_draft_attention(pipe, sparsity=0.5, dense_steps_fraction=0.0)  # enable, fuse, unfuse, disable
    pipe.fuse_qkv_projections()
    pipe.unfuse_qkv_projections()
    run(pipe, steps=2)
    assert get_draft_stats(pipe).summary()["sparse_calls"] == 4
    disable_draft_attention(pipe)
    assert processors(pipe) == {CogVideoXAttnProcessor2_0} and count_hooks(pipe.transformer) == hooks

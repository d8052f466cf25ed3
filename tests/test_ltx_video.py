"""LTX-Video, added as one module (models/ltx_video.py) plus one table line: packed latents (the grid comes from the
forward's num_frames/height/width or video_coords), tokens in tile order once per forward, per-token timesteps of
image-to-video and the condition pipeline. Every check compares with the same pipeline without draft attention."""

import pytest
import torch
from pipeline_utils import max_diff, run

from draftattention_diffusers import (disable_draft_attention, draft_attention_enabled, enable_draft_attention,
                                      get_draft_processor, get_draft_stats)
from draftattention_diffusers.core.layout import VideoGrid, get_layout
from draftattention_diffusers.models.base import count_hooks
from draftattention_diffusers.models.ltx_video import grid_from_coords
from draftattention_diffusers.tiny import build_tiny_pipeline, tiny_prompt_kwargs

# The tiny VAE compresses 32x spatially and 8x temporally (as the real one): 256 x 1280 pixels -> 8 x 40 tokens per
# frame, two 8x16 regions side by side and an 8x8 edge strip, so the tile order is NOT the identity and moves tokens
# across frames (the edge tiles come after every frame's regions: a per-frame timestep out of order would show);
# 9 frames -> 2 latent frames.
SIZE = dict(height=256, width=1280, num_frames=9)
GRID = VideoGrid(2, 8, 40)


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline("ltx")


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, 3, SIZE["height"], SIZE["width"], generator=torch.Generator().manual_seed(0))


def test_the_grid_reorders_tokens():
    perm = get_layout(GRID, 0, (8, 16), torch.device("cpu")).perm
    frame_size = GRID.height * GRID.width
    assert not torch.equal(perm // frame_size, torch.arange(GRID.num_tokens) // frame_size)


def test_dense_schedule_and_disable_are_bit_identical(pipe):
    base, _ = run(pipe, steps=2, size=SIZE)
    hooks = count_hooks(pipe.transformer)
    with draft_attention_enabled(pipe, dense_steps_fraction=1.0):
        dense, _ = run(pipe, steps=2, size=SIZE)
        assert get_draft_stats(pipe).summary()["sparse_calls"] == 0
    enable_draft_attention(pipe, sparsity=0.5, dense_steps_fraction=0.0)
    sparse, _ = run(pipe, steps=2, size=SIZE)
    assert get_draft_processor(pipe).grid == GRID  # read from num_frames / height / width
    disable_draft_attention(pipe)
    again, _ = run(pipe, steps=2, size=SIZE)
    assert torch.equal(dense, base) and torch.equal(again, base) and not torch.equal(sparse, base)
    assert count_hooks(pipe.transformer) == hooks


def test_sparsity_zero_equals_dense_and_the_schedule(pipe):
    base, base_steps = run(pipe, steps=4, size=SIZE)
    with draft_attention_enabled(pipe, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        out, _ = run(pipe, steps=4, size=SIZE)
    assert max_diff(out, base) < 1e-4
    with draft_attention_enabled(pipe, sparsity=0.75, dense_steps_fraction=0.5):
        _, steps = run(pipe, steps=4, size=SIZE)
        stats = get_draft_stats(pipe).summary()
    assert stats["steps"] == {0: "dense", 1: "dense", 2: "sparse", 3: "sparse"}
    assert stats["fallbacks"] == {} and stats["mean_sparsity"] > 0.5
    # dense warm-up steps run in tile order (step caches see one order): equal within float rounding
    assert all(max_diff(a, b) < 1e-5 for a, b in zip(steps[:2], base_steps[:2]))
    assert max_diff(steps[3], base_steps[3]) > 1e-3


def _pipeline_runs(p, **kwargs):
    kw = dict(tiny_prompt_kwargs(p), **{**SIZE, **kwargs}, num_inference_steps=2, output_type="latent")
    call = lambda: p(**kw, generator=torch.Generator().manual_seed(0)).frames  # noqa: E731
    timesteps = []
    handle = p.transformer.register_forward_pre_hook(lambda m, a, k: timesteps.append(k["timestep"].shape),
                                                     with_kwargs=True)
    base = call()
    handle.remove()
    with draft_attention_enabled(p, dense_steps_fraction=1.0):
        dense = call()
    with draft_attention_enabled(p, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        zero = call()
        stats = get_draft_stats(p).summary()
    return base, dense, zero, stats, timesteps[0]


@pytest.mark.parametrize("cls", ["LTXImageToVideoPipeline", "LTXConditionPipeline"])
def test_image_to_video_per_token_timesteps(pipe, image, cls):
    """The first frame is given: per-token timesteps ``[B, S]`` (0 on its tokens), put in tile order with the
    tokens. The condition pipeline passes ``video_coords`` instead of num_frames/height/width."""
    import diffusers

    p = getattr(diffusers, cls)(**pipe.components)
    base, dense, zero, stats, timestep_shape = _pipeline_runs(p, image=image)
    assert timestep_shape == (2, GRID.num_tokens)  # CFG batch, one timestep per token
    assert torch.equal(dense, base)
    assert stats["fallbacks"] == {} and stats["sparse_calls"] > 0
    assert max_diff(zero, base) < 1e-4


def test_condition_tokens_before_the_grid_stay_dense(pipe, image, monkeypatch):
    """Conditions at frame_index > 0 prepend their tokens to the sequence (two here: latent frames at 8 and 16): the
    grid is the sequence's tail, found from ``video_coords`` (read once per forward: a host sync); the condition
    tokens stay dense. Those forwards gather per call (the tile-order hooks permute a sequence's head), so
    per_forward gives per_call's result."""
    from diffusers import LTXConditionPipeline
    from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

    p = LTXConditionPipeline(**pipe.components)
    conditions = [LTXVideoCondition(image=image, frame_index=8), LTXVideoCondition(image=image, frame_index=16)]
    size = dict(SIZE, num_frames=17)  # 3 latent frames
    base, dense, zero, stats, timestep_shape = _pipeline_runs(p, conditions=conditions, **size)
    assert timestep_shape[1] == 5 * GRID.height * GRID.width  # 2 condition frames before 3 video frames
    assert torch.equal(dense, base) and max_diff(zero, base) < 1e-4
    assert stats["fallbacks"] == {} and stats["sparse_calls"] == 4 and stats["dense_calls"] == 0
    from draftattention_diffusers.models import ltx_video

    spans, forwards = [], []
    monkeypatch.setattr(ltx_video, "video_span", lambda coords, span=ltx_video.video_span: spans.append(1) or
                        span(coords))
    counter = p.transformer.register_forward_pre_hook(lambda *_: forwards.append(1))
    outs = {}
    try:
        for reorder in ("per_forward", "per_call"):
            with draft_attention_enabled(p, sparsity=0.5, dense_steps_fraction=0.0, reorder=reorder):
                outs[reorder], _ = run(p, steps=2, size=size, conditions=conditions)
                assert get_draft_stats(p).summary()["mean_sparsity"] > 0.3
    finally:
        counter.remove()
    assert len(forwards) > 0 and len(spans) == len(forwards)
    assert max_diff(outs["per_forward"], outs["per_call"]) < 1e-5 and max_diff(outs["per_call"], base) > 1e-3


def test_grid_from_coords():
    f, h, w = torch.meshgrid(torch.arange(2.0) * 8, torch.arange(3.0) * 32, torch.arange(4.0) * 32, indexing="ij")
    coords = torch.stack([f, h, w]).flatten(1)[None].repeat(2, 1, 1)
    assert grid_from_coords(coords, 24) == VideoGrid(2, 3, 4)
    assert grid_from_coords(coords, 25) is None
    assert grid_from_coords(torch.cat([coords[:, :, :4], coords], 2), 28) is None  # extra condition tokens
    assert grid_from_coords(coords.flip(2), 24) is None  # not frame-major, row-major


def test_load_recipes_and_the_docs_decode_settings(pipe):
    """As diffusers' LTX-Video docs load and call it: bfloat16 everywhere; 0.9.7+ folders are LTXConditionPipeline
    (VAE tiling); a timestep-aware VAE (0.9.1+) decodes at timestep 0.05 (conditioning noise 0.025)."""
    from diffusers import LTXConditionPipeline

    from draftattention_diffusers.models import family_for_pipeline
    from draftattention_diffusers.models.base import LoadRecipe

    family = family_for_pipeline("LTXConditionPipeline", loadable=True)
    assert family is family_for_pipeline("LTXPipeline", loadable=True) and family.name == "ltx_video"
    assert family.pipelines["LTXPipeline"] == LoadRecipe(torch.bfloat16, torch.bfloat16, torch.bfloat16,
                                                         loads_as={"image": "LTXImageToVideoPipeline"})
    assert family.pipelines["LTXConditionPipeline"].vae_tiling
    assert family.pipeline_kwargs(pipe, {"height": 256}) == {"height": 256}  # the tiny VAE has no timestep input
    pipe.vae.register_to_config(timestep_conditioning=True)
    try:
        assert family.pipeline_kwargs(pipe, {"decode_timestep": 0.1}) == {"decode_timestep": 0.1}
        cond = LTXConditionPipeline(**pipe.components)
        assert family.pipeline_kwargs(cond, {}) == {"decode_timestep": 0.05, "image_cond_noise_scale": 0.025}
    finally:
        pipe.vae.register_to_config(timestep_conditioning=False)

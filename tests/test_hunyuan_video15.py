"""HunyuanVideo-1.5, added as one module (models/hunyuan_video15.py) plus one table line: the checks every family
gets on the tiny T2V pipeline (classifier-free guidance on, a padded prompt, a grid whose tile order is not the
identity), the padded text rows against diffusers' square mask, and the image-to-video pipeline."""

import numpy as np
import pytest
import torch
from PIL import Image
from pipeline_utils import REORDERING_SIZE, max_diff

from draftattention_diffusers import (disable_draft_attention, draft_attention_enabled, enable_draft_attention,
                                      get_draft_processor, get_draft_stats)
from draftattention_diffusers.core import get_layout
from draftattention_diffusers.core.layout import VideoGrid
from draftattention_diffusers.models import family_for
from draftattention_diffusers.models.base import count_hooks
from draftattention_diffusers.models.hunyuan_video15 import build_tiny_hunyuan_video15_i2v
from draftattention_diffusers.tiny import build_tiny_pipeline, tiny_prompt_kwargs

VALID_TEXT = 9  # of 16 MLLM tokens; the ByT5 stream (3 of 8) and, in T2V, all image tokens are padding too
GRID = VideoGrid(2, 8, 32)  # REORDERING_SIZE: 128 x 512 pixels / 16 (VAE 16x, patch 1), 5 frames -> 2 latent frames


def run(pipe, steps: int = 3, seed: int = 0, **kwargs):
    """Run a tiny pipeline; returns (final latents, latents after each step). HunyuanVideo-1.5 pipelines take no
    step callback: the latents are kept from the scheduler's steps."""
    per_step, sched = [], pipe.scheduler
    step = sched.step

    def keep(*args, **kw):
        out = step(*args, **kw)
        per_step.append(out[0].clone())
        return out

    kw = dict(tiny_prompt_kwargs(pipe, valid_len=VALID_TEXT), num_inference_steps=steps, output_type="latent",
              generator=torch.Generator().manual_seed(seed))
    # I2V takes its height and width from the image
    kw.update(REORDERING_SIZE if "image" not in kwargs else dict(num_frames=REORDERING_SIZE["num_frames"]))
    kw.update(kwargs)
    sched.step = keep
    try:
        return pipe(**kw).frames, per_step
    finally:
        del sched.step


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline("hunyuan15")


@pytest.fixture(scope="module")
def base(pipe):
    """The pipeline without draft attention: (final latents, per-step latents)."""
    return run(pipe)


def test_the_grid_reorders_and_the_prompt_is_padded(pipe):
    perm = get_layout(GRID, 0).perm
    assert not torch.equal(perm, torch.arange(GRID.num_tokens))  # two 8x16 regions side by side per frame
    kw = tiny_prompt_kwargs(pipe, valid_len=VALID_TEXT)
    assert kw["prompt_embeds_mask"].sum() == VALID_TEXT < kw["prompt_embeds"].shape[1]
    assert "negative_prompt_embeds" in kw  # the guider runs CFG: both prompts, no text encoder


def test_dense_schedule_and_disable_are_bit_identical(pipe, base):
    hooks = count_hooks(pipe.transformer)
    with draft_attention_enabled(pipe, dense_steps_fraction=1.0):
        dense, _ = run(pipe)
        assert get_draft_stats(pipe).summary()["sparse_calls"] == 0
    enable_draft_attention(pipe, sparsity=0.5, dense_steps_fraction=0.0)
    sparse, _ = run(pipe)
    stats = get_draft_stats(pipe).summary()
    disable_draft_attention(pipe)
    again, _ = run(pipe)
    assert torch.equal(dense, base[0]) and torch.equal(again, base[0]) and not torch.equal(sparse, base[0])
    assert stats["sparse_calls"] > 0 and stats["fallbacks"] == {} and stats["mean_sparsity"] >= 0.5
    assert count_hooks(pipe.transformer) == hooks


def test_sparsity_zero_equals_dense_padded_text_rows_included(pipe, base):
    """Every tile kept, in tile order: the video equals diffusers' within float rounding, and so does the text
    stream of the first block, whose padded rows diffusers' square mask leaves all-masked (zero attention)."""
    texts = []
    hook = pipe.transformer.transformer_blocks[0].register_forward_hook(lambda m, a, out: texts.append(out[1]))
    try:
        run(pipe, steps=1)  # diffusers alone: its first forward is the reference
        with draft_attention_enabled(pipe, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
            out, _ = run(pipe)
            stats = get_draft_stats(pipe).summary()
    finally:
        hook.remove()
    assert max_diff(out, base[0]) < 1e-4
    assert stats["sparse_calls"] == 2 * 2 * 3 and stats["fallbacks"] == {}  # 2 blocks, CFG, 3 steps
    plain, draft = texts[0], texts[2]  # first forward (conditional) of each run
    assert torch.isfinite(draft).all() and max_diff(draft, plain) < 1e-5


def test_step_schedule_dense_then_sparse(pipe, base):
    with draft_attention_enabled(pipe, sparsity=0.75, dense_steps_fraction=0.5):  # ceil(1.5) = 2 dense steps
        _, steps = run(pipe)
        stats = get_draft_stats(pipe).summary()
    assert stats["steps"] == {0: "dense", 1: "dense", 2: "sparse"} and stats["fallbacks"] == {}
    # tile order in every forward (dense ones too): dense steps equal within float rounding
    assert max(max_diff(a, b) for a, b in zip(steps[:2], base[1][:2])) < 1e-5
    assert max_diff(steps[2], base[1][2]) > 1e-3
    with draft_attention_enabled(pipe, sparsity=0.75, dense_steps_fraction=0.5, reorder="per_call"):
        _, steps = run(pipe)
    assert all(torch.equal(a, b) for a, b in zip(steps[:2], base[1][:2]))  # diffusers' order: exact


def test_guidance_scale_goes_to_the_guider(pipe):
    family = family_for(pipe.transformer)
    guider = pipe.guider
    try:
        assert family.pipeline_kwargs(pipe, {"guidance_scale": 4.0, "num_frames": 5}) == {"num_frames": 5}
        assert pipe.guider.guidance_scale == 4.0
    finally:
        pipe.guider = guider


def test_image_to_video(pipe):
    """The I2V pipeline (tiny random SigLIP): its image tokens lead the text block as valid keys."""
    i2v = build_tiny_hunyuan_video15_i2v()
    image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (128, 512, 3), dtype=np.uint8))
    base, _ = run(i2v, steps=1, image=image)
    assert base.shape[-3:] == (GRID.frames, GRID.height, GRID.width)
    with draft_attention_enabled(i2v, dense_steps_fraction=1.0):
        dense, _ = run(i2v, steps=1, image=image)
    with draft_attention_enabled(i2v, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        zero, _ = run(i2v, steps=1, image=image)
    lengths = []
    with draft_attention_enabled(i2v, sparsity=0.5, dense_steps_fraction=0.0):
        get_draft_processor(i2v).add_observer(lambda e: lengths.append(e.key_lengths.tolist()))
        sparse, _ = run(i2v, steps=1, image=image)
        stats = get_draft_stats(i2v).summary()
    assert torch.equal(dense, base) and max_diff(zero, base) < 1e-4 and not torch.equal(sparse, base)
    assert stats["sparse_calls"] > 0 and stats["fallbacks"] == {}
    assert lengths[0] == [GRID.num_tokens + 16 + 3 + VALID_TEXT]  # video, 16 image, 3 ByT5, 9 MLLM tokens

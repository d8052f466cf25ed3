"""Kandinsky 6.0 (models/kandinsky6.py): what the shared family checks (tests/test_family_conformance.py, which reach
Kandinsky 6 from the family table) do not pin down: only the fused blocks' video self-attention is sparse (audio
self-attention, text / video-audio cross-attention and the text branches keep the model's processor); image-to-video
appends the image as a tail frame with its own token type, which is part of the grid and, with the tile order
gathered per call, equals dense at sparsity 0 even on a grid of partial regions; the video-only call (no audio);
context parallelism refused clearly."""

from types import SimpleNamespace

import pytest
import torch
from pipeline_utils import max_diff, run

from draftattention_diffusers import (draft_attention_enabled, enable_draft_attention, get_draft_processor,
                                      get_draft_stats)
from draftattention_diffusers.core.layout import VideoGrid
from draftattention_diffusers.integration.lifecycle import installation
from draftattention_diffusers.models import family_for
from draftattention_diffusers.models.kandinsky6 import Kandinsky6Family, build_tiny_kandinsky6

FAMILY = Kandinsky6Family()
SIZE = FAMILY.tiny_call


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_kandinsky6(num_layers=2)


def _image(height, width):
    from PIL import Image

    g = torch.Generator().manual_seed(3)
    return Image.fromarray((torch.rand(height, width, 3, generator=g) * 255).to(torch.uint8).numpy())


def test_only_the_fused_blocks_video_self_attention_is_sparse(pipe):
    assert family_for(pipe.transformer) is not None and FAMILY.head_dim(pipe.transformer) == 32
    with draft_attention_enabled(pipe, sparsity=0.5, dense_steps_fraction=0.0):
        roles = {r.name: r for r in installation(pipe.transformer).processor._roles.values()}
        run(pipe, steps=1, size=SIZE)
        stats = get_draft_stats(pipe).summary()
    p = "transformer."
    assert {n for n, r in roles.items() if r.video_self} == {
        f"{p}visual_transformer_blocks.{i}.video_dec_block.self_attention" for i in (0, 1)}
    assert [roles[f"{p}visual_transformer_blocks.{i}.video_dec_block.self_attention"].block_index
            for i in (0, 1)] == [0, 1]
    for kept in ("visual_transformer_blocks.0.audio_dec_block.self_attention",
                 "visual_transformer_blocks.0.video_dec_block.cross_attention",
                 "visual_transformer_blocks.0.audio_dec_block.cross_attention",
                 "visual_transformer_blocks.0.va_cross_attention", "visual_transformer_blocks.0.av_cross_attention",
                 "video_text_transformer_blocks.0.attn", "audio_text_transformer_blocks.0.attn"):
        assert not roles[p + kept].video_self and not roles[p + kept].custom, kept
    # one sparse step with CFG: 2 blocks x 2 transformer calls; the audio self-attention (same module type, same
    # processor class) never reaches the sparse path
    assert stats["sparse_calls"] == 4 and stats["fallbacks"] == {}


@pytest.mark.parametrize("height", [128, 144])  # 144: 9 token rows, a partial region row per frame
def test_image_to_video_tail_frame_is_in_the_grid_and_dense_at_sparsity_zero(pipe, height):
    kw = dict(image=_image(height, 512), size=dict(SIZE, height=height))
    base, _ = run(pipe, steps=2, **kw)
    with draft_attention_enabled(pipe, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        zero, _ = run(pipe, steps=2, **kw)
        grid = get_draft_processor(pipe).grid
        assert get_draft_stats(pipe).summary()["sparse_calls"] > 0
    # 5 frames -> 2 latent frames, plus the image's tail frame (token type 1)
    assert grid == VideoGrid(3, height // 16, 32)
    assert max_diff(zero, base) <= 1e-4 * max(1.0, base.abs().max().item())
    with draft_attention_enabled(pipe, sparsity=0.75, dense_steps_fraction=0.5):
        sparse, _ = run(pipe, steps=2, **kw)
        stats = get_draft_stats(pipe).summary()
    assert stats["steps"] == {0: "dense", 1: "sparse"} and stats["fallbacks"] == {}
    assert not torch.equal(sparse, base)


def test_video_only_call_is_sparse_and_the_cli_drops_audio_without_its_components(pipe):
    base, _ = run(pipe, steps=2, size=SIZE, sample_audio=False)
    with draft_attention_enabled(pipe, sparsity=0.5, dense_steps_fraction=0.5):
        out, _ = run(pipe, steps=2, size=SIZE, sample_audio=False)
        stats = get_draft_stats(pipe).summary()
    assert stats["steps"] == {0: "dense", 1: "sparse"} and stats["sparse_calls"] == 4 and stats["fallbacks"] == {}
    assert not torch.equal(out, base)
    assert "sample_audio" not in FAMILY.pipeline_kwargs(pipe, {"height": 128})
    no_audio = SimpleNamespace(audio_vae=None, vocoder=pipe.vocoder)
    assert FAMILY.pipeline_kwargs(no_audio, {"height": 128}) == {"height": 128, "sample_audio": False}


def test_context_parallelism_is_refused_clearly():
    """(Its config states no num_attention_heads: the refusal comes before anything reads it.)"""
    pipe = build_tiny_kandinsky6(num_layers=1)
    cp = SimpleNamespace(ring_degree=1, ulysses_degree=2, ulysses_anything=False)
    pipe.transformer._parallel_config = SimpleNamespace(context_parallel_config=cp)
    with pytest.raises(ValueError, match="context parallelism is not supported for Kandinsky 6.0"):
        enable_draft_attention(pipe)

"""Allegro (models/allegro.py): what the shared family checks (tests/test_family_conformance.py, which reach Allegro
from the family table) do not pin down: only attn1 is video self-attention (attn2 is cross-attention to the prompt);
a video mask given to the transformer (a key bias, not a key-padding suffix) runs dense visibly and, in tile order
(the mask follows its tokens), equals diffusers; and the step comes from the pipeline loop, so a scheduler without
``step_index`` (DDIM, which AllegroPipeline also takes) still gets the warm-up schedule."""

import pytest
import torch
from pipeline_utils import max_diff, run

from draftattention_diffusers import draft_attention_enabled, get_draft_processor, get_draft_stats
from draftattention_diffusers.models import family_for, family_for_pipeline
from draftattention_diffusers.models.allegro import AllegroFamily, build_tiny_allegro

SIZE = AllegroFamily.tiny_call


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_allegro()


def test_only_attn1_is_video_self_attention(pipe):
    assert family_for(pipe.transformer).name == "allegro" and family_for_pipeline(pipe).name == "allegro"
    roles = AllegroFamily().roles(pipe.transformer, {})
    video = sorted(r.name for r in roles.values() if r.video_self)
    assert video == ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"]
    assert {r.name for r in roles.values() if not r.video_self} == {"transformer_blocks.0.attn2",
                                                                    "transformer_blocks.1.attn2"}


def _forward(pipe, mask):
    t = pipe.transformer
    g = torch.Generator().manual_seed(1)
    f, h, w = 2, 16, 64  # latent frames and size: 2 x 8 x 32 tokens
    rope = pipe._prepare_rotary_positional_embeddings(1, h * 8, w * 8, f, "cpu")
    with torch.no_grad():
        return t(hidden_states=torch.randn(1, 4, f, h, w, generator=g),
                 encoder_hidden_states=torch.randn(1, 1, 16, 32, generator=g), timestep=torch.tensor([500]),
                 attention_mask=mask, encoder_attention_mask=torch.ones(1, 16), image_rotary_emb=rope,
                 return_dict=False)[0]


def test_a_video_mask_runs_dense_in_tile_order_and_equals_diffusers(pipe):
    mask = torch.ones(1, 2, 16, 64)
    mask[:, :, 4:12, 8:40] = 0  # a hole in every frame: a key bias, not a key-padding suffix
    base, unmasked = _forward(pipe, mask), _forward(pipe, None)
    assert max_diff(base, unmasked) > 1e-3  # the mask matters
    with draft_attention_enabled(pipe, sparsity=0.5, dense_steps_fraction=0.0):
        out = _forward(pipe, mask)
        assert get_draft_processor(pipe)._order.active  # the tokens ran in tile order
        stats = get_draft_stats(pipe).summary()
    assert stats["sparse_calls"] == 0 and any("suffix" in f for f in stats["fallbacks"])
    assert max_diff(out, base) < 1e-4


def test_warm_up_schedule_with_a_scheduler_without_step_index():
    from diffusers import DDIMScheduler

    pipe = build_tiny_allegro()
    pipe.scheduler = DDIMScheduler()
    assert not hasattr(pipe.scheduler, "step_index")
    with draft_attention_enabled(pipe, sparsity=0.75, dense_steps_fraction=0.5):
        run(pipe, steps=4, size=SIZE)
        stats = get_draft_stats(pipe).summary()
    assert stats["steps"] == {0: "dense", 1: "dense", 2: "sparse", 3: "sparse"} and stats["fallbacks"] == {}

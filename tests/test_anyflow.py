"""AnyFlow (``AnyFlowTransformer3DModel``): the shared family checks, and per-frame timesteps through the tile order.

Interim: ``AnyFlowTransformer3DModel`` (diffusers 0.42.1) does not inherit diffusers' ``AttentionMixin``, so it has
no ``attn_processors`` / ``set_attn_processor``, which the integration uses to install and restore processors. Until
the integration reads and sets processors with ``AttentionMixin``'s functions for such transformers, the fixture
below lends the class those two members (the very functions diffusers' other transformers inherit) and adds the
family to the table for the duration of each test; the family is not in ``_FAMILIES`` yet.
"""

import pytest
import test_family_conformance as conformance
import torch
from diffusers import AnyFlowTransformer3DModel
from diffusers.models.attention import AttentionMixin

from draftattention_diffusers import (disable_draft_attention, draft_attention_enabled, enable_draft_attention,
                                      get_draft_stats)
from draftattention_diffusers import models
from draftattention_diffusers.models.anyflow import AnyFlowFamily, build_tiny_anyflow
from draftattention_diffusers.models.base import count_hooks
from draftattention_diffusers.tiny import tiny_prompt_kwargs

FAMILY = AnyFlowFamily()


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    for name in ("attn_processors", "set_attn_processor"):
        if not hasattr(AnyFlowTransformer3DModel, name):
            monkeypatch.setattr(AnyFlowTransformer3DModel, name, getattr(AttentionMixin, name), raising=False)
    if models.family_for_pipeline("AnyFlowPipeline") is None:
        monkeypatch.setattr(models, "_FAMILIES", models._FAMILIES + (FAMILY,))


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_anyflow()


@pytest.fixture
def case(pipe):
    return models.family_for(pipe.transformer), pipe


def test_shared_family_checks(case):
    conformance.test_the_tiny_grid_reorders(case)
    conformance.test_dense_schedule_and_disable_are_bit_identical(case)
    conformance.test_sparsity_zero_equals_dense_and_the_schedule(case)


def _video_run(pipe, video_latents, steps=2):
    # 144 x 512 pixels, 5 frames: 2 x 9 x 32 tokens, so each frame ends in a 1-row edge strip and the tile order
    # interleaves the frames (full regions of both frames first, then both edges): a per-frame timestep that stayed in
    # diffusers' order would land on the wrong frame's tokens
    return pipe(**tiny_prompt_kwargs(pipe), height=144, width=512, num_frames=5, num_inference_steps=steps,
                video_latents=video_latents, output_type="latent", generator=torch.Generator().manual_seed(0)).frames


def test_per_frame_timesteps_follow_the_tile_order(pipe):
    # a conditioning video: AnyFlowPipeline gives its first latent frame timestep 0, the other frame the step's t
    video_latents = torch.randn(1, 1, 16, 18, 64, generator=torch.Generator().manual_seed(3))
    base = _video_run(pipe, video_latents)
    hooks = count_hooks(pipe.transformer)
    with draft_attention_enabled(pipe, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        zero = _video_run(pipe, video_latents)
        stats = get_draft_stats(pipe).summary()
    assert stats["sparse_calls"] > 0 and stats["fallbacks"] == {}
    assert (zero - base).abs().max().item() <= 1e-4 * max(1.0, base.abs().max().item())
    enable_draft_attention(pipe, sparsity=0.5, dense_steps_fraction=0.0)
    sparse = _video_run(pipe, video_latents)
    disable_draft_attention(pipe)
    assert not torch.equal(sparse, base) and torch.equal(_video_run(pipe, video_latents), base)
    assert count_hooks(pipe.transformer) == hooks


def test_cross_attention_keeps_its_own_processor(pipe):
    with draft_attention_enabled(pipe, sparsity=0.5):
        roles = FAMILY.roles(pipe.transformer, dict(pipe.transformer.attn_processors))
    video_self = sorted(r.name for r in roles.values() if r.video_self)
    assert video_self == ["blocks.0.attn1", "blocks.1.attn1"]
    assert {type(r.default_processor).__name__ for r in roles.values() if not r.video_self} == \
        {"AnyFlowCrossAttnProcessor"}
    assert not any(r.custom for r in roles.values())

"""AnyFlow (``AnyFlowTransformer3DModel``), beyond the shared family checks: per-frame timesteps (a conditioning
video's frames at timestep 0) through the once-per-forward tile order, and cross-attention keeping its own processor.
The transformer has no diffusers ``AttentionMixin``; the integration reads and sets its processors by walking its
modules (``integration/lifecycle.attention_processors``)."""

import pytest
import torch

from draftattention_diffusers import (disable_draft_attention, draft_attention_enabled, enable_draft_attention,
                                      get_draft_stats)
from draftattention_diffusers.integration.lifecycle import attention_processors
from draftattention_diffusers.models import family_for
from draftattention_diffusers.models.anyflow import AnyFlowFamily
from draftattention_diffusers.models.base import count_hooks
from draftattention_diffusers.tiny import build_tiny_pipeline, tiny_prompt_kwargs


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline("anyflow")


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
    family = family_for(pipe.transformer)
    assert isinstance(family, AnyFlowFamily)
    with draft_attention_enabled(pipe, sparsity=0.5):
        roles = family.roles(pipe.transformer, attention_processors(pipe.transformer))
    video_self = sorted(r.name for r in roles.values() if r.video_self)
    assert video_self == ["blocks.0.attn1", "blocks.1.attn1"]
    assert {type(r.default_processor).__name__ for r in roles.values() if not r.video_self} == \
        {"AnyFlowCrossAttnProcessor"}
    assert not any(r.custom for r in roles.values())


def test_anyflow_far_is_refused_with_its_reason():
    from diffusers import AnyFlowFARTransformer3DModel

    from draftattention_diffusers import DraftAttnProcessor
    from draftattention_diffusers.models import require_family

    model = AnyFlowFARTransformer3DModel.__new__(AnyFlowFARTransformer3DModel)
    torch.nn.Module.__init__(model)  # the class alone decides; no weights needed
    for refuse in (require_family, DraftAttnProcessor().attach):
        with pytest.raises(ValueError, match="does not support AnyFlowFARTransformer3DModel: .*KV cache"):
            refuse(model)

"""Kandinsky 5.0 Video (models/kandinsky5.py): the shared family checks, which modules are video self-attention,
image-to-video through its pipeline, and NABLA (its own sparse attention) refused clearly.
(The shared family checks reach Kandinsky 5 from the family table: tests/test_family_conformance.py.)
"""

import pytest
import torch

from draftattention_diffusers import (disable_draft_attention, draft_attention_enabled, enable_draft_attention,
                                      get_draft_stats)
from draftattention_diffusers.integration.lifecycle import installation
from draftattention_diffusers.models.base import count_hooks
from draftattention_diffusers.models.kandinsky5 import Kandinsky5Family, build_tiny_kandinsky5
from draftattention_diffusers.tiny import tiny_prompt_kwargs

FAMILY = Kandinsky5Family()


def build_tiny_pipeline(name, num_layers=2):
    return build_tiny_kandinsky5(num_layers=num_layers, visual_cond=name.endswith("i2v"))


def test_only_the_visual_blocks_self_attention_is_video_self_attention():
    pipe = enable_draft_attention(build_tiny_pipeline("kandinsky5", num_layers=2))
    roles = {r.name: r.video_self for r in installation(pipe.transformer).processor._roles.values()}
    disable_draft_attention(pipe)
    prefix = "transformer."  # the statistics' layer names
    assert {n for n, v in roles.items() if v} == {f"{prefix}visual_transformer_blocks.0.self_attention",
                                                  f"{prefix}visual_transformer_blocks.1.self_attention"}
    assert f"{prefix}text_transformer_blocks.0.self_attention" in roles  # text-only self-attention: the model's own
    assert f"{prefix}visual_transformer_blocks.0.cross_attention" in roles


def test_image_to_video_is_sparse_through_its_pipeline():
    from PIL import Image

    pipe = build_tiny_pipeline("kandinsky5-i2v", num_layers=1)
    # 17 frames (5 latent frames): Kandinsky5I2VPipeline renormalizes the first 4 latent frames by the next ones after
    # denoising, which with fewer latent frames is the mean of nothing: NaN, with or without draft attention
    image = Image.fromarray((torch.rand(128, 512, 3) * 255).to(torch.uint8).numpy())
    kw = dict(tiny_prompt_kwargs(pipe), image=image, height=128, width=512, num_frames=17, num_inference_steps=2,
              output_type="latent")
    base = pipe(**kw, generator=torch.Generator().manual_seed(0)).frames
    with draft_attention_enabled(pipe, sparsity=0.5, dense_steps_fraction=0.5):
        out = pipe(**kw, generator=torch.Generator().manual_seed(0)).frames
        stats = get_draft_stats(pipe).summary()
    assert stats["steps"] == {0: "dense", 1: "sparse"} and stats["fallbacks"] == {} and stats["sparse_calls"] == 2
    assert torch.isfinite(base).all() and torch.isfinite(out).all() and not torch.equal(out, base)


def test_nabla_is_refused_at_enable_and_in_a_forward():
    nabla = build_tiny_kandinsky5(num_layers=1, attention_type="nabla")
    hooks = count_hooks(nabla.transformer)
    processors = dict(nabla.transformer.attn_processors)
    with pytest.raises(ValueError, match="attention_type='nabla'.*register_to_config"):
        enable_draft_attention(nabla)
    assert count_hooks(nabla.transformer) == hooks and installation(nabla.transformer) is None
    assert dict(nabla.transformer.attn_processors) == processors  # nothing changed

    # sparse_params handed to a model configured for full attention: its tokens would be in NABLA's fractal order
    pipe = enable_draft_attention(build_tiny_pipeline("kandinsky5", num_layers=1), dense_steps_fraction=0.0)
    t = pipe.transformer
    x = torch.randn(1, 2, 16, 64, 4)
    with pytest.raises(ValueError, match="attention_type='nabla'"):
        t(hidden_states=x, encoder_hidden_states=torch.randn(1, 4, 32), timestep=torch.tensor([500.0]),
          pooled_projections=torch.randn(1, 16), visual_rope_pos=[torch.arange(n) for n in (2, 8, 32)],
          text_rope_pos=torch.arange(4), sparse_params={"to_fractal": True})

"""ChronoEdit (``ChronoEditTransformer3DModel``, ``ChronoEditPipeline``): image editing as a short video, on a
Wan2.1-I2V-14B transformer. diffusers 0.42.1's ``transformer_chronoedit.py`` carries its own copies of Wan's
``WanAttention`` / ``WanAttnProcessor`` (same names, other classes), so the family is Wan's with those classes. Only
``blocks.<i>.attn1`` (video self-attention) becomes sparse; ``attn2`` (text and the CLIP image tokens) runs the
model's processor unchanged.

What differs from Wan, as facts: its RoPE (``ChronoEditRotaryPosEmbed``) gives a 2-frame latent (the edit without
temporal reasoning: 5 frames) the temporal positions of frames 0 and ``rope_temporal_skip_len - 1``; it still returns
``(cos, sin)`` of ``[1, S, 1, D]`` in diffusers' token order, so Wan's tile-order hooks (patch embedding, RoPE table,
output projection) apply unchanged. With ``enable_temporal_reasoning`` the pipeline cuts the latents to their first and
last frame after ``num_temporal_reasoning_steps`` steps: the grid is read per forward, so the later forwards run on
the 2-frame grid.
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_chronoedit import WanAttention as ChronoEditAttention
from diffusers.models.transformers.transformer_chronoedit import WanAttnProcessor as ChronoEditAttnProcessor

from .base import IMAGE_TO_VIDEO, LoadRecipe, TinyPipeline
from .wan import TINY_IMAGE_DIM, TINY_WAN_TRANSFORMER, WanFamily, tiny_clip_vision, tiny_wan_vae


def build_tiny_chronoedit(seed: int = 0, num_layers: int = 2, heads: int = 2):
    """A tiny random-weight ``ChronoEditPipeline``: a tiny CLIP image encoder (the pipeline always encodes the input
    image) and a transformer taking noise, first-frame mask and image latents (16 + 4 + 16 channels), with the
    image-token cross-attention of Wan2.1 I2V; float32 on CPU, no text encoder; Wan's tiny VAE."""
    from diffusers import ChronoEditPipeline, ChronoEditTransformer3DModel, UniPCMultistepScheduler

    torch.manual_seed(seed + 1)
    transformer = ChronoEditTransformer3DModel(
        num_attention_heads=heads, num_layers=num_layers, **dict(TINY_WAN_TRANSFORMER, in_channels=36),
        image_dim=TINY_IMAGE_DIM, added_kv_proj_dim=heads * TINY_WAN_TRANSFORMER["attention_head_dim"]).eval()
    image_encoder, image_processor = tiny_clip_vision(seed + 3)
    # UniPC as the ChronoEdit repository runs it: the pipeline's temporal reasoning trims the scheduler's
    # model_outputs / last_sample, which flow-match Euler does not have
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    return ChronoEditPipeline(tokenizer=None, text_encoder=None, image_encoder=image_encoder,
                              image_processor=image_processor, transformer=transformer, vae=tiny_wan_vae(seed),
                              scheduler=scheduler)


def _tiny_image():
    """A fixed 512x128 RGB picture (a gradient): the input image of the shared family checks' tiny call."""
    from PIL import Image

    x = torch.linspace(0, 255, 512).to(torch.uint8)
    gray = torch.full((128, 512), 128, dtype=torch.uint8)
    pixels = torch.stack([x.expand(128, 512), x.flip(0).expand(128, 512), gray], dim=-1)
    return Image.fromarray(pixels.numpy(), "RGB")


class ChronoEditFamily(WanFamily):
    """ChronoEdit-14B: image editing through a (temporal-reasoning) video of the edit."""

    name = "chronoedit"
    title = "ChronoEdit"
    transformer_classes = ("ChronoEditTransformer3DModel",)
    # as the ChronoEditPipeline docstring example loads it: float32 CLIP image encoder and VAE, bfloat16 rest
    pipelines = {"ChronoEditPipeline": LoadRecipe(torch.bfloat16, torch.float32, torch.bfloat16,
                                                  component_dtypes=(("image_encoder", torch.float32),),
                                                  inputs=IMAGE_TO_VIDEO)}
    other_pipelines = ()
    default_fps = 16
    tiny_variants = {"tiny-chronoedit": TinyPipeline(build_tiny_chronoedit, "ChronoEditPipeline")}
    # ChronoEditPipeline runs 5 frames (2 latent frames) unless enable_temporal_reasoning: 2 x 8 x 32 tokens, two
    # 8x16 regions side by side per frame; the image is the pipeline's required input
    tiny_call = dict(image=_tiny_image(), height=128, width=512, num_frames=5)
    attention_class = ChronoEditAttention
    processor_class = ChronoEditAttnProcessor

    # diffusers 0.42.1 has a plan for it (Wan's, without the per-token timestep split), but it was not run with
    # draft attention (tests/test_parallel.py covers Wan and HunyuanVideo)
    cp_unsupported_because = ("diffusers' context-parallel plan for it has not been verified with draft attention "
                              "(its temporal-reasoning step changes the grid mid-call)")

"""Wan-Animate (``WanAnimateTransformer3DModel``, ``WanAnimatePipeline``): Wan2.2-Animate-14B character animation and
replacement, a Wan2.1-I2V-style transformer with pose latents added to the video tokens and a face adapter.
diffusers 0.42.1's ``transformer_wan_animate.py`` carries its own copies of Wan's ``WanAttention`` /
``WanAttnProcessor`` (same names, other classes), so the family is Wan's with those classes. Only
``blocks.<i>.attn1`` (video self-attention over the reference latent frame and the segment's frames) becomes sparse;
``attn2`` (text and the CLIP image tokens) and the face adapter's cross-attention to the motion vectors
(``face_adapter.<j>``, ``WanAnimateFaceBlockCrossAttention``) run the model's processors unchanged.

Tokens are gathered per call (no tile-order hooks): the face adapter splits the video tokens into frames by position
(``query.unflatten(1, (T, -1))``, frame-major order) and the pose latents are added to the patch embedding's frames
1.. inside the forward, which a once-per-forward token order would break.

The pipeline takes a character image, a pose video and a face video (and for ``mode="replace"`` a background and a
mask video): more than the command line's ``--image`` / ``--video``, so it is served through the Python API. Its
segments each run the whole schedule (the scheduler is reset per segment), so every segment has its dense warm-up
steps; the statistics cover the whole call, segment by segment (``section_loops``: the segment's index is its first
frame ``start`` over ``effective_segment_length``; the pipeline sets new timesteps after each segment, the last one
too, which ``get_draft_stats`` takes for the call's: ``sections_reset_after``). Wan-Animate-2
(``WanAnimate2Transformer3DModel``) is refused: see ``models/__init__.py``'s ``REFUSED``.
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_wan_animate import (WanAnimateFaceBlockAttnProcessor,
                                                                     WanAnimateFaceBlockCrossAttention)
from diffusers.models.transformers.transformer_wan_animate import WanAttention as WanAnimateAttention
from diffusers.models.transformers.transformer_wan_animate import WanAttnProcessor as WanAnimateAttnProcessor

from .base import AttentionRole, keep_or_default
from .wan import TINY_IMAGE_DIM, TINY_WAN_TRANSFORMER, WanFamily, tiny_clip_vision, tiny_wan_vae

TINY_FACE_SIZE = 16
"""Face-video frames of the tiny Wan-Animate transformer (its motion encoder's input size, 512 in the real model)."""


def build_tiny_wan_animate(seed: int = 0, num_layers: int = 2, heads: int = 2):
    """A tiny random-weight ``WanAnimatePipeline``: a tiny CLIP image encoder, a transformer taking noise and the
    reference/conditioning latents (16 + 4 + 16 channels) plus pose latents, a 16x16 motion encoder and a face adapter
    after every block; float32 on CPU, no text encoder; Wan's tiny VAE."""
    from diffusers import UniPCMultistepScheduler, WanAnimatePipeline, WanAnimateTransformer3DModel

    size = TINY_FACE_SIZE
    torch.manual_seed(seed + 1)
    transformer = WanAnimateTransformer3DModel(
        num_attention_heads=heads, num_layers=num_layers, **dict(TINY_WAN_TRANSFORMER, in_channels=36),
        latent_channels=16, image_dim=TINY_IMAGE_DIM,
        added_kv_proj_dim=heads * TINY_WAN_TRANSFORMER["attention_head_dim"], motion_encoder_size=size,
        motion_encoder_channel_sizes={str(size): 8, str(size // 2): 8, str(size // 4): 8}, motion_style_dim=16,
        motion_dim=4, motion_encoder_dim=16, face_encoder_hidden_dim=16, face_encoder_num_heads=2,
        inject_face_latents_blocks=1).eval()
    image_encoder, image_processor = tiny_clip_vision(seed + 3)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    return WanAnimatePipeline(tokenizer=None, text_encoder=None, vae=tiny_wan_vae(seed), scheduler=scheduler,
                              image_processor=image_processor, image_encoder=image_encoder, transformer=transformer)


def tiny_animate_inputs(height: int = 128, width: int = 512, frames: int = 5) -> dict:
    """Fixed inputs of a tiny Wan-Animate call (mode "animate"): a character image, a pose video and a face video
    of ``frames`` frames (one segment of ``frames`` frames: ``segment_frame_length``)."""
    from PIL import Image

    g = torch.Generator().manual_seed(7)

    def picture(h, w):
        return Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy(), "RGB")

    return dict(image=picture(height, width), pose_video=[picture(height, width) for _ in range(frames)],
                face_video=[picture(TINY_FACE_SIZE, TINY_FACE_SIZE) for _ in range(frames)],
                segment_frame_length=frames, height=height, width=width)


class WanAnimateFamily(WanFamily):
    """Wan2.2-Animate-14B: character animation ("animate") and replacement ("replace")."""

    name = "wan_animate"
    title = "Wan-Animate"
    transformer_classes = ("WanAnimateTransformer3DModel",)
    pipelines = {}
    other_pipelines = ("WanAnimatePipeline",)
    # for _ in range(num_segments): ... start += effective_segment_length; scheduler.set_timesteps (after the segment)
    section_loops = {"WanAnimatePipeline": "start"}
    sections_reset_after = ("WanAnimatePipeline",)
    default_fps = 16
    # no tiny_variants: the command line cannot give this pipeline its pose and face videos; the tiny pipeline is
    # build_tiny_wan_animate (tests/test_wan_animate.py), called with tiny_call: one 5-frame segment, 3 latent frames
    # (the reference frame first) of 8 x 32 tokens, two 8x16 regions side by side per frame
    tiny_variants = {}
    tiny_call = tiny_animate_inputs()
    attention_class = WanAnimateAttention
    processor_class = WanAnimateAttnProcessor

    # diffusers 0.42.1 has no context-parallel plan for it
    cp_unsupported_because = ("diffusers has no context-parallel plan for it, and its face adapter splits the video "
                              "tokens into frames by position, which a split sequence would have to follow")

    def pipeline_section(self, owner, owner_locals):
        # the segment loop has no index variable: its segment starts at frame `start`, segments apart by
        # `effective_segment_length` (segment_frame_length - prev_segment_conditioning_frames)
        start = super().pipeline_section(owner, owner_locals)
        length = owner_locals.get("effective_segment_length")
        return start // length if start is not None and type(length) is int and length > 0 else None

    def roles(self, transformer, current):
        out = super().roles(transformer, current)
        for name, module in transformer.named_modules():
            if isinstance(module, WanAnimateFaceBlockCrossAttention):  # cross-attention to the motion vectors
                default = keep_or_default(current.get(f"{name}.processor"), WanAnimateFaceBlockAttnProcessor)
                out[module] = AttentionRole(name, False, None, default,
                                            custom=not isinstance(default, WanAnimateFaceBlockAttnProcessor))
        return out

    def call_default(self, processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope, **kwargs):
        if isinstance(attn, WanAnimateFaceBlockCrossAttention):  # its forward passes these four and drops the rest
            return processor(attn, hidden_states, encoder_hidden_states, attention_mask)
        return super().call_default(processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope,
                                    **kwargs)

    def tile_order_hooks(self, transformer, order):
        return False  # the face adapter and the pose latents index tokens by position (module docstring)

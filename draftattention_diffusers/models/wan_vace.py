"""Wan VACE (``WanVACETransformer3DModel``): Wan2.1 blocks plus VACE control blocks that run self-attention over the
control video's tokens on the same grid. Both become sparse: ``blocks.<i>.attn1`` and ``vace_blocks.<j>.attn1``
(``dense_layers`` counts the main blocks first, then the VACE blocks). Cross-attention stays dense.

Tokens are gathered per call (no tile-order hooks): the control tokens (``vace_patch_embedding``) are added to the
video tokens inside the forward as hints, which the hooks of a per-forward order do not reach.
"""

from __future__ import annotations

import torch

from .base import LoadRecipe, PipelineInput, TinyPipeline
from .wan import TINY_WAN_TRANSFORMER, WanFamily, tiny_wan_vae


def build_tiny_wan_vace(seed: int = 0, num_layers: int = 2, heads: int = 2):
    """A tiny random-weight ``WanVACEPipeline`` (a VACE layer at block 0), float32 on CPU, no text encoder."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanVACEPipeline, WanVACETransformer3DModel

    vae = tiny_wan_vae(seed)
    torch.manual_seed(seed + 1)
    transformer = WanVACETransformer3DModel(num_attention_heads=heads, num_layers=num_layers, vace_layers=[0],
                                            vace_in_channels=96, **TINY_WAN_TRANSFORMER).eval()
    return WanVACEPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                           scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))


class WanVACEFamily(WanFamily):
    """Wan2.1 VACE: control-conditioned generation (reference images, masks, control videos)."""

    name = "wan_vace"
    title = "Wan VACE"
    transformer_classes = ("WanVACETransformer3DModel",)
    # as the WanVACEPipeline docstring example loads it: float32 VAE, bfloat16 rest. --video is the control video
    # (diffusers needs it to have num_frames frames: more fail, fewer only warn), --image a reference image
    pipelines = {"WanVACEPipeline": LoadRecipe(
        torch.bfloat16, torch.float32, torch.bfloat16,
        inputs=(PipelineInput("video", "video", same_frames=True), PipelineInput("image", "reference_images")))}
    other_pipelines = ()
    tiny_variants = {"tiny-wan-vace": TinyPipeline(build_tiny_wan_vace, "WanVACEPipeline")}
    self_attention_blocks = ("blocks", "vace_blocks")

    # diffusers 0.42.1 has no context-parallel plan for this model, and none was verified with draft attention
    cp_unsupported_because = (
        "diffusers has no context-parallel plan for it, and its control tokens are a second sequence added to "
        "the video tokens inside the forward, which a plan would have to split consistently")

    def tile_order_hooks(self, transformer, order):
        return False  # control tokens join the video tokens inside the forward (module docstring)

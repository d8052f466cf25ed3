"""SkyReels-V2 (``SkyReelsV2Transformer3DModel``): a Wan2.1-derived model (same blocks, token order, q/k norms and
RoPE), so the family is Wan's with SkyReels' own classes. Only ``blocks.<i>.attn1`` becomes sparse.

Tokens are gathered per call (no tile-order hooks): in the diffusion-forcing pipelines the model builds per-token
timestep embeddings (one timestep per frame, repeated over the frame's tokens) and a frame-block causal mask inside
its forward, both indexed by diffusers' token positions, where no hook can reorder them. A causal mask is not a
key-padding mask: those calls run dense with diffusers' attention and the mask (visible in the statistics as a
fallback), so they stay exact.

What "step" means in the diffusion-forcing pipelines: one iteration of their loop over the rows of the timestep
matrix (``i`` of ``len(step_matrix)``, frames at different noise levels denoised together); their per-frame schedulers
leave ``scheduler.step_index`` unset, so the step is read from the running pipeline call. ``dense_steps_fraction``
counts those iterations: with ``ar_step > 0`` there are more of them than ``num_inference_steps``.
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_skyreels_v2 import SkyReelsV2Attention, SkyReelsV2AttnProcessor

from .base import IMAGE_TO_VIDEO, LoadRecipe, TinyPipeline
from .wan import TINY_IMAGE_DIM, TINY_WAN_TRANSFORMER, WanFamily, tiny_clip_vision, tiny_wan_vae


def build_tiny_skyreels_v2(seed: int = 0, num_layers: int = 2, heads: int = 2):
    """A tiny random-weight ``SkyReelsV2Pipeline`` (T2V), float32 on CPU, no text encoder; Wan's tiny VAE."""
    from diffusers import SkyReelsV2Pipeline, SkyReelsV2Transformer3DModel, UniPCMultistepScheduler

    vae = tiny_wan_vae(seed)
    torch.manual_seed(seed + 1)
    transformer = SkyReelsV2Transformer3DModel(num_attention_heads=heads, num_layers=num_layers,
                                               **TINY_WAN_TRANSFORMER).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0)
    return SkyReelsV2Pipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=vae,
                              scheduler=scheduler)


def build_tiny_skyreels_v2_i2v(seed: int = 0, num_layers: int = 2, heads: int = 2):
    """A tiny random-weight ``SkyReelsV2ImageToVideoPipeline``: a tiny CLIP image encoder (which this pipeline
    always runs) and a transformer taking noise, first-frame mask and image latents (16 + 4 + 16 channels);
    float32 on CPU, no text encoder; Wan's tiny VAE."""
    from diffusers import SkyReelsV2ImageToVideoPipeline, SkyReelsV2Transformer3DModel, UniPCMultistepScheduler

    torch.manual_seed(seed + 1)
    transformer = SkyReelsV2Transformer3DModel(
        num_attention_heads=heads, num_layers=num_layers, **dict(TINY_WAN_TRANSFORMER, in_channels=36),
        image_dim=TINY_IMAGE_DIM, added_kv_proj_dim=heads * TINY_WAN_TRANSFORMER["attention_head_dim"]).eval()
    image_encoder, image_processor = tiny_clip_vision(seed + 3, with_projection=True)
    # flow shift 5.0: the value the diffusers example gives for I2V (8.0 for T2V)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    return SkyReelsV2ImageToVideoPipeline(tokenizer=None, text_encoder=None, image_encoder=image_encoder,
                                          image_processor=image_processor, transformer=transformer,
                                          vae=tiny_wan_vae(seed), scheduler=scheduler)


class SkyReelsV2Family(WanFamily):
    """SkyReels-V2 T2V / I2V and its diffusion-forcing pipelines."""

    name = "skyreels_v2"
    title = "SkyReels-V2"
    transformer_classes = ("SkyReelsV2Transformer3DModel",)
    # as the diffusers SkyReels-V2 examples load them: float32 VAE, bfloat16 rest (the I2V image encoder too)
    pipelines = {"SkyReelsV2Pipeline": LoadRecipe(torch.bfloat16, torch.float32, torch.bfloat16),
                 "SkyReelsV2ImageToVideoPipeline": LoadRecipe(torch.bfloat16, torch.float32, torch.bfloat16,
                                                              inputs=IMAGE_TO_VIDEO)}
    other_pipelines = ("SkyReelsV2DiffusionForcingPipeline", "SkyReelsV2DiffusionForcingImageToVideoPipeline",
                       "SkyReelsV2DiffusionForcingVideoToVideoPipeline")
    default_fps = 24
    tiny_variants = {"tiny-skyreels-v2": TinyPipeline(build_tiny_skyreels_v2, "SkyReelsV2Pipeline"),
                     "tiny-skyreels-v2-i2v": TinyPipeline(build_tiny_skyreels_v2_i2v,
                                                          "SkyReelsV2ImageToVideoPipeline")}
    attention_class = SkyReelsV2Attention
    processor_class = SkyReelsV2AttnProcessor

    # diffusers 0.42.1 has no context-parallel plan for this model, and none was verified with draft attention
    cp_unsupported_because = (
        "diffusers has no context-parallel plan for it, and its diffusion-forcing forward builds per-frame "
        "timesteps and causal masks over the whole sequence, which a plan would have to split consistently")

    def pipeline_step(self, pipe, pipeline_locals):
        i, num = pipeline_locals.get("i"), getattr(pipe, "_num_timesteps", None)
        if type(pipe).__name__.startswith("SkyReelsV2DiffusionForcing") and isinstance(i, int) \
                and isinstance(num, int) and 0 <= i < num:
            return i, num
        return None

    def tile_order_hooks(self, transformer, order):
        return False  # per-frame timesteps and causal masks are built inside the forward (module docstring)

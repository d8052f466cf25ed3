"""Cosmos 1.0 / Predict2 / Predict2.5 (``CosmosTransformer3DModel``). Only ``transformer_blocks.<i>.attn1`` (video
self-attention, no mask) becomes sparse; ``attn2`` (text, and Transfer2.5's image context) runs diffusers'
``CosmosAttnProcessor2_0`` / ``CosmosAttnProcessor2_5`` unchanged. The model's own processor computes q, k, v, norms
and RoPE; draft attention replaces its ``dispatch_attention_fn`` call only (``integration/routing.py``). Its processor
passes no ``backend`` to the dispatcher, so diffusers' default attention (or ``DIFFUSERS_ATTN_BACKEND``) is its dense
path, as without draft attention.

Token grid: the latents ``[B, C, T, H, W]`` patched by ``config.patch_size`` (condition and padding masks are
concatenated as channels, not tokens). Tokens are put in tile order once per forward: ``patch_embed``'s output, the
RoPE tables (``rope``), Cosmos 1.0's learnable positions (``learnable_pos_embed``), and everything the blocks and
``norm_out`` take per token: Predict2 / 2.5's per-frame timesteps (``timestep [B, 1, T, 1, 1]`` expanded by the
forward to ``[B, THW, C]``, after any module could reorder it) and Transfer2.5's controlnet residuals; back before
``proj_out``.

Checked against diffusers 0.42.1 ``models/transformers/transformer_cosmos.py``: ``CosmosTransformerBlock`` creates
``attn1 = Attention(..., processor=CosmosAttnProcessor2_0())`` and calls it as ``self.attn1(norm_hidden_states,
image_rotary_emb=image_rotary_emb)``; ``CosmosAttnProcessor2_0.__call__`` ends in ``dispatch_attention_fn(query,
key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)``; the blocks are called positionally
``block(hidden_states, encoder_hidden_states, embedded_timestep, temb, image_rotary_emb, extra_pos_emb,
attention_mask, controlnet_residual)``; ``norm_out(hidden_states, embedded_timestep, temb)`` precedes ``proj_out``.
"""

from __future__ import annotations

import re

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.transformers.transformer_cosmos import (CosmosAttention, CosmosAttnProcessor2_0,
                                                              CosmosAttnProcessor2_5)

from ..core.layout import VideoGrid
from .base import (TINY_TEXT_DIM, AttentionRole, LoadRecipe, ModelFamily, PipelineInput, TinyPipeline,
                   keep_or_default, register_hook, register_tokens_back_hook)
from .hunyuan_video import call_with_image_rotary_emb
from .wan import tiny_wan_vae

_SELF = re.compile(r"^transformer_blocks\.(\d+)\.attn1$")
# CosmosTransformerBlock.forward's positional arguments that hold one entry per video token ([B, S, C])
_BLOCK_PER_TOKEN = {2: "embedded_timestep", 3: "temb", 7: "controlnet_residual"}
# CosmosAdaLayerNorm (norm_out).forward(hidden_states, embedded_timestep, temb)
_NORM_OUT_PER_TOKEN = {1: "embedded_timestep", 2: "temb"}


class TinySafetyChecker(ModelMixin, ConfigMixin):
    """Stands in for ``cosmos_guardrail.CosmosSafetyChecker`` in the tiny pipelines (the Cosmos pipelines refuse to
    run without a safety checker, and the real one downloads its models): passes every prompt and video. A model
    (``ModelMixin``) because the pipelines ask every component for its device."""

    @register_to_config
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_device_anchor", torch.zeros(1), persistent=False)

    def check_text_safety(self, prompt: str) -> bool:
        return True

    def check_video_safety(self, frames):
        return frames


TINY_COSMOS_TRANSFORMER = dict(in_channels=16 + 1, out_channels=16, attention_head_dim=32, mlp_ratio=2.0,
                               text_embed_dim=TINY_TEXT_DIM, adaln_lora_dim=16, patch_size=(1, 2, 2),
                               rope_scale=(1.0, 3.0, 3.0), extra_pos_embed_type=None,
                               # the published models concatenate a padding mask channel, resized with torchvision
                               # (not a dependency of this package); the token grid and attention are the same
                               concat_padding_mask=False)


def tiny_cosmos_transformer(seed: int, num_layers: int, heads: int, **config):
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(seed)
    return CosmosTransformer3DModel(num_attention_heads=heads, num_layers=num_layers,
                                    **{**TINY_COSMOS_TRANSFORMER, **config}).eval()


def build_tiny_cosmos25(seed: int = 0, num_layers: int = 2, heads: int = 2):
    """A tiny random-weight ``Cosmos2_5_PredictBasePipeline`` (Predict2.5: text-to-world, image-to-world and
    video-to-world; per-frame timesteps), float32 on CPU, no text encoder (its Qwen2.5-VL hidden states, projected by
    ``crossattn_proj`` as in the published model, are the given prompt embeddings) and a stand-in safety checker.
    Wan VAE (8x spatial, 4x temporal), 2x2 patches: 16 pixels per token."""
    from diffusers import UniPCMultistepScheduler
    from diffusers.pipelines.cosmos.pipeline_cosmos2_5_predict import Cosmos2_5_PredictBasePipeline

    transformer = tiny_cosmos_transformer(seed + 1, num_layers, heads, use_crossattn_projection=True,
                                          crossattn_proj_in_channels=TINY_TEXT_DIM,
                                          encoder_hidden_states_channels=TINY_TEXT_DIM)
    # the scheduler of diffusers' scripts/convert_cosmos_to_diffusers.py (save_pipeline_cosmos2_5_predict)
    scheduler = UniPCMultistepScheduler(use_karras_sigmas=True, use_flow_sigmas=True,
                                        prediction_type="flow_prediction", sigma_max=200.0, sigma_min=0.01)
    return Cosmos2_5_PredictBasePipeline(text_encoder=None, tokenizer=None, transformer=transformer,
                                         vae=tiny_wan_vae(seed), scheduler=scheduler,
                                         safety_checker=TinySafetyChecker())


def build_tiny_cosmos2_video2world(seed: int = 0, num_layers: int = 2, heads: int = 2):
    """A tiny random-weight ``Cosmos2VideoToWorldPipeline`` (Predict2: an image or a video continued; conditioned
    frames at their own timestep), float32 on CPU, no text encoder, a stand-in safety checker."""
    from diffusers import Cosmos2VideoToWorldPipeline, FlowMatchEulerDiscreteScheduler

    return Cosmos2VideoToWorldPipeline(text_encoder=None, tokenizer=None,
                                       transformer=tiny_cosmos_transformer(seed + 1, num_layers, heads),
                                       vae=tiny_wan_vae(seed),
                                       scheduler=FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True),
                                       safety_checker=TinySafetyChecker())


class CosmosFamily(ModelFamily):
    """Cosmos 1.0 / Predict2 / Predict2.5: text only in cross-attention, tokens in tile order once per forward."""

    name = "cosmos"
    title = "Cosmos"
    transformer_classes = ("CosmosTransformer3DModel",)
    processor_class = CosmosAttnProcessor2_0  # (attn1 is a legacy Attention: it declares no default processor)
    grid_locals = ("post_patch_num_frames", "post_patch_height", "post_patch_width")
    # The command line loads the Predict2 / 2.5 pipelines (Wan VAE: 4k+1 frames, 16 pixels per token), every
    # component in bfloat16 as the diffusers docstring examples load them. They need `cosmos_guardrail` (the safety
    # checker the pipelines refuse to run without).
    pipelines = {
        # Predict2.5 (2B, 14B): text-to-world, or --image / --video to continue
        "Cosmos2_5_PredictBasePipeline": LoadRecipe(torch.bfloat16, torch.bfloat16, torch.bfloat16,
                                                    inputs=(PipelineInput("image", "image"),
                                                            PipelineInput("video", "video"))),
        # Predict2 Video2World (2B, 14B): an image or a video
        "Cosmos2VideoToWorldPipeline": LoadRecipe(torch.bfloat16, torch.bfloat16, torch.bfloat16,
                                                  inputs=(PipelineInput("image", "image"),
                                                          PipelineInput("video", "video")),
                                                  needs_one_of=("image", "video")),
    }
    # Python API only: Cosmos 1.0 (its VAE compresses time 8x: 8k+1 frames, where this family's command-line frame
    # rule is the Wan VAE's 4k+1), Transfer2.5 (a controlnet model to load beside it) and Predict2 Text2Image
    # (one frame: nothing to sparsify)
    other_pipelines = ("CosmosTextToWorldPipeline", "CosmosVideoToWorldPipeline", "Cosmos2_5_TransferPipeline",
                       "Cosmos2TextToImagePipeline")
    # Transfer2.5 denoises a long control video in autoregressive chunks, each a loop with new timesteps
    section_loops = {"Cosmos2_5_TransferPipeline": "chunk_idx"}
    default_fps = 16  # Predict2 / 2.5 (diffusers' examples export at 16 fps; Cosmos 1.0's at 30)
    frame_step = 4
    pixel_step = 16
    tiny_variants = {
        "tiny-cosmos25": TinyPipeline(build_tiny_cosmos25, "Cosmos2_5_PredictBasePipeline"),
        "tiny-cosmos2-v2w": TinyPipeline(build_tiny_cosmos2_video2world, "Cosmos2VideoToWorldPipeline"),
    }
    tiny_call = dict(height=128, width=512, num_frames=5)  # 2 latent frames of 8x32 tokens: two regions side by side
    cp_unsupported_because = "diffusers 0.42.1 has no context-parallel plan for CosmosTransformer3DModel"

    def grid(self, transformer, latents):
        p_t, p_h, p_w = transformer.config.patch_size
        _, _, t, h, w = latents.shape
        return VideoGrid(t // p_t, h // p_h, w // p_w)

    def roles(self, transformer, current):
        out = {}
        for name, module in transformer.named_modules():
            if not isinstance(module, Attention):
                continue
            m = _SELF.match(name)
            # attn2 is a CosmosAttention (processor 2_5) where the model has an image context (Transfer2.5)
            own = CosmosAttnProcessor2_5 if isinstance(module, CosmosAttention) else CosmosAttnProcessor2_0
            default = keep_or_default(current.get(f"{name}.processor"), own)
            out[module] = AttentionRole(name, m is not None, None if m is None else int(m.group(1)), default,
                                        custom=not isinstance(default, own))
        return out

    def call_default(self, processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope, **kwargs):
        return call_with_image_rotary_emb(processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope,
                                          **kwargs)

    def tile_order_hooks(self, transformer, order):
        def per_token(x):  # [B, S, C] per video token (S > 1); [B, C] or [B, 1, C] are per item
            return isinstance(x, torch.Tensor) and x.ndim == 3 and x.shape[1] > 1

        def permute_args(positions):
            def hook(module, args):
                if not order.active or not any(per_token(args[i]) for i in positions if i < len(args)):
                    return None
                return tuple(order.to_tiles(a, 1) if i in positions and per_token(a) else a
                             for i, a in enumerate(args))
            return hook

        def patches(module, args, out):  # [B, T, H, W, C]; the forward flattens dims 1..3 into the sequence next
            return order.to_tiles(out.flatten(1, 3), 1).view(out.shape) if order.active else None

        def rope(module, args, out):  # (cos, sin), each [S, D]
            return tuple(order.to_tiles(t, 0) for t in out) if order.active else None

        def positions(module, args, out):  # Cosmos 1.0's learnable positions [B, S, C]
            return order.to_tiles(out, 1) if order.active else None

        register_hook(transformer.patch_embed, "post", patches)
        register_hook(transformer.rope, "post", rope)
        if transformer.learnable_pos_embed is not None:
            register_hook(transformer.learnable_pos_embed, "post", positions)
        for block in transformer.transformer_blocks:
            register_hook(block, "pre", permute_args(tuple(_BLOCK_PER_TOKEN)))
        register_hook(transformer.norm_out, "pre", permute_args(tuple(_NORM_OUT_PER_TOKEN)))
        register_tokens_back_hook(transformer.proj_out, order)
        return True

    def tiny_prompt_kwargs(self, pipe, emb, text_len, valid_len, negative):
        out = dict(prompt_embeds=emb(1, text_len, TINY_TEXT_DIM))
        if negative:
            out["negative_prompt_embeds"] = emb(1, text_len, TINY_TEXT_DIM)
        return out

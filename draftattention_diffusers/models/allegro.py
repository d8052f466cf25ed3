"""Allegro (``AllegroTransformer3DModel``, 2.8B): every block's ``transformer_blocks.<i>.attn1`` is self-attention
over the video tokens only (``text_position = "none"``; the T5 prompt enters through ``attn2``, cross-attention,
which keeps its processor) and becomes sparse.

Its processor (``AllegroAttnProcessor2_0``) calls ``F.scaled_dot_product_attention`` itself, so the family computes
q, k, v as that processor does for self-attention (:meth:`AllegroFamily.self_attention`, with diffusers' own
``apply_rotary_emb_allegro``) and hands ``attend`` the result. ``AllegroPipeline`` passes no self-attention mask; a
video mask given to the transformer (``attention_mask [B, F, H, W]``, turned into a key bias ``[B, 1, S]`` by the
forward) is not a key-padding suffix mask, so those calls run dense (visibly), with the mask in the tokens' order.

Token grid: latents ``[B, C, F, H, W]``, ``2x2`` patches per latent frame (``PatchEmbed`` frame by frame; the model's
``patch_size_t`` is 1), frame-major then row-major. Tile order once per forward: the output of ``pos_embed``
(``[B*F, H*W, C]``), the RoPE positions (the forward argument ``image_rotary_emb = (freqs, (t, h, w))``, each
position index ``[1, S]``), the self-attention bias ``[B, 1, S]`` where one is given (a pre-hook on every ``attn1``),
and back before ``proj_out``; everything between is per token or attention.
"""

from __future__ import annotations

import re

import torch
from diffusers.models.attention_processor import AllegroAttnProcessor2_0, Attention
from diffusers.models.embeddings import apply_rotary_emb_allegro

from ..core.layout import VideoGrid
from .base import (SDPA_CP_UNSUPPORTED, TINY_TEXT_DIM, LoadRecipe, ModelFamily, TinyPipeline, numbered_roles,
                   permute_forward_argument, pipeline_loop_step, register_frame_patches_hook, register_hook,
                   register_tokens_back_hook, tiny_prompt_mask)

_SELF = re.compile(r"^transformer_blocks\.(\d+)\.attn1$")


def build_tiny_allegro(seed: int = 0, num_layers: int = 2, heads: int = 2):
    """A tiny random-weight ``AllegroPipeline``, float32 on CPU, no text encoder (prompts of 16 tokens). Head dim 48
    (Allegro's RoPE splits it in three even parts). The VAE compresses 8x spatially and 4x temporally like the real
    one, so ``height x width`` pixels give ``height/16 x width/16`` tokens per frame and ``4k+1`` frames give ``k+1``
    latent frames; it decodes in tiles like the real one (diffusers implements no other decoding), sized here for
    tiny videos (the real tiles are 24 frames of 320x320 pixels, which a tiny video does not fill)."""
    from diffusers import (AllegroPipeline, AllegroTransformer3DModel, AutoencoderKLAllegro,
                           EulerAncestralDiscreteScheduler)

    torch.manual_seed(seed + 1)
    transformer = AllegroTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=48, in_channels=4, out_channels=4, num_layers=num_layers,
        cross_attention_dim=heads * 48, caption_channels=TINY_TEXT_DIM, sample_height=16, sample_width=64,
        sample_frames=2).eval()
    torch.manual_seed(seed)
    vae = AutoencoderKLAllegro(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=2,
        block_out_channels=(8, 8, 8, 8), down_block_types=("AllegroDownBlock3D",) * 4,
        up_block_types=("AllegroUpBlock3D",) * 4, temporal_compression_ratio=4, sample_size=128).eval()
    vae.enable_tiling()
    # tiles of 8 frames x 128 x 128 pixels, overlapping by 4 frames and 64 pixels (the real ones: 24 x 320 x 320, by
    # 8 x 120 x 80)
    vae.tile_overlap_t, vae.tile_overlap_h, vae.tile_overlap_w = 4, 64, 64
    vae.kernel, vae.stride = (8, 128, 128), (4, 64, 64)
    return AllegroPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                           scheduler=EulerAncestralDiscreteScheduler())


class AllegroFamily(ModelFamily):
    """Allegro: video-only self-attention in every block (text through cross-attention), tokens in tile order once
    per forward, no context-parallel plan."""

    name = "allegro"
    title = "Allegro"
    transformer_classes = ("AllegroTransformer3DModel",)
    text_position = "none"
    # its processor calls F.scaled_dot_product_attention itself: nothing to route
    routes_attention_call = False
    processor_class = AllegroAttnProcessor2_0  # diffusers' Attention declares no _default_processor_cls
    # as AllegroPipeline's docstring example loads it: the VAE in float32, the rest in bfloat16, VAE tiling (diffusers
    # implements Allegro's VAE decoding only in tiles)
    pipelines = {"AllegroPipeline": LoadRecipe(torch.bfloat16, torch.float32, torch.bfloat16, vae_tiling=True)}
    default_fps = 15  # diffusers' Allegro examples export at 15 fps
    frame_step = 4  # the VAE compresses time 4x: 4k+1 frames (85: 22 latent frames, as the published 88)
    tiny_variants = {"tiny-allegro": TinyPipeline(build_tiny_allegro, "AllegroPipeline")}
    tiny_call = dict(height=128, width=512, num_frames=5)  # 2 latent frames of 8x32 tokens
    cp_unsupported_because = SDPA_CP_UNSUPPORTED

    # the step is the denoising loop's i: its pipeline takes any Karras scheduler, some without step_index (DDIM)
    pipeline_step = pipeline_loop_step

    def grid(self, transformer, latents):
        config = transformer.config
        _, _, t, h, w = latents.shape
        return VideoGrid(t // config.patch_size_t, h // config.patch_size, w // config.patch_size)

    def roles(self, transformer, current):
        return numbered_roles(transformer, current, Attention, _SELF, AllegroAttnProcessor2_0)

    def self_attention(self, attn, hidden_states, encoder_hidden_states, attention_mask, rope, attend):
        # diffusers' AllegroAttnProcessor2_0 as it runs for Allegro's self-attention (3-D input, no spatial or group
        # norm, no residual, output scale 1) with `attend` in place of its SDPA call
        b, s, _ = hidden_states.shape
        if attention_mask is not None:  # the key bias [B, 1, S] -> [B, H, 1, S], as the processor prepares it
            attention_mask = attn.prepare_attention_mask(attention_mask, s, b).view(b, attn.heads, -1, s)
        q, k, v = (f(hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2)  # [B, H, S, D]
                   for f in (attn.to_q, attn.to_k, attn.to_v))
        if rope is not None and not attn.is_cross_attention:
            q, k = apply_rotary_emb_allegro(q, *rope), apply_rotary_emb_allegro(k, *rope)
        out = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 0, attention_mask)
        return attn.to_out[1](attn.to_out[0](out.flatten(2, 3).to(q.dtype)))

    def call_default(self, processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope, **kwargs):
        return processor(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb=rope, **kwargs)

    def tile_order_hooks(self, transformer, order):
        def rope(module, args, kwargs=None):  # forward argument image_rotary_emb: (freqs, (t, h, w) positions [1, S])
            if not order.active or kwargs is None:  # (None: removed while this forward's hooks were running)
                return None
            in_kwargs = "image_rotary_emb" in kwargs
            value = kwargs.get("image_rotary_emb") if in_kwargs else (args[5] if len(args) > 5 else None)
            if value is None:
                return None
            value = (value[0], tuple(order.to_tiles(p, 1) for p in value[1]))
            if in_kwargs:
                return args, {**kwargs, "image_rotary_emb": value}
            return args[:5] + (value,) + tuple(args[6:]), kwargs

        def mask(module, args, kwargs):  # attn1's attention_mask: the key bias [B, 1, S] where the forward got one
            if not order.active:
                return None
            return permute_forward_argument(args, kwargs, 2, "attention_mask", order, (2,), per_token_ndim=3)

        register_frame_patches_hook(transformer.pos_embed, order)
        register_hook(transformer, "pre", rope, with_kwargs=True)
        for name, module in transformer.named_modules():
            if _SELF.match(name):
                register_hook(module, "pre", mask, with_kwargs=True)
        register_tokens_back_hook(transformer.proj_out, order)
        return True

    def tiny_prompt_kwargs(self, pipe, emb, text_len, valid_len, negative):
        mask = tiny_prompt_mask(text_len, valid_len)
        out = dict(prompt_embeds=emb(1, text_len, TINY_TEXT_DIM), prompt_attention_mask=mask)
        if negative:  # (negative_prompt defaults to "", which AllegroPipeline refuses next to negative embeddings)
            out.update(negative_prompt=None, negative_prompt_embeds=emb(1, text_len, TINY_TEXT_DIM),
                       negative_prompt_attention_mask=mask)
        return out

"""Mochi 1 (``MochiTransformer3DModel``, 10B): every block's ``transformer_blocks.<i>.attn1`` is joint
self-attention over ``[video, text]`` (text after the video tokens) and becomes sparse over the video tokens; the
text tokens attend and are attended densely. Its processor (``MochiAttnProcessor2_0``) calls
``F.scaled_dot_product_attention`` itself, once per batch item over the valid text tokens only, so the family
computes q, k, v as that processor does (:meth:`MochiFamily.self_attention`) and hands ``attend`` one key-padding
mask instead of the per-item loop.

Padded text: diffusers attends each item's video and valid text tokens and pads the output with zero rows at the end
of the sequence; for the tokenizer's masks (valid tokens first) that is zero rows at the padded text positions. We
reproduce exactly that for any mask: valid text rows first, in order, then zeros. (An empty negative prompt with
``force_zeros_for_empty_prompt`` has no valid text token: its video tokens attend only to each other.)

Token grid: latents ``[B, C, F, H, W]``, 2x2 patches per latent frame (``PatchEmbed`` frame by frame), frame-major
then row-major. Tile order once per forward: the output of ``patch_embed`` (``[B*F, H*W, D]``), the RoPE tables (output
of ``rope``: ``[S, H, D/2]`` each), and back before ``proj_out``; everything between is per token or attention.
"""

from __future__ import annotations

import re
import torch
from diffusers.models.attention_processor import MochiAttention, MochiAttnProcessor2_0

from ..core.layout import VideoGrid
from .base import (SDPA_CP_UNSUPPORTED, TINY_TEXT_DIM, LoadRecipe, ModelFamily, TextKeyMask, TinyPipeline,
                   numbered_roles, register_frame_patches_hook, register_hook, register_tokens_back_hook)

_SELF = re.compile(r"^transformer_blocks\.(\d+)\.attn1$")


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # MochiAttnProcessor2_0's apply_rotary_emb (a function local to its __call__, so not importable)
    x_even, x_odd = x[..., 0::2].float(), x[..., 1::2].float()
    return torch.stack([(x_even * cos - x_odd * sin).to(x.dtype), (x_even * sin + x_odd * cos).to(x.dtype)],
                       dim=-1).flatten(-2)


def build_tiny_mochi(seed: int = 0, num_layers: int = 2, heads: int = 2):
    """A tiny random-weight ``MochiPipeline``, float32 on CPU, no text encoder. Head dim 32; the RoPE frequencies
    (zero-initialised by diffusers, which would make RoPE the identity) get random values. The VAE compresses 8x
    spatially and 6x temporally like the real one, so ``height x width`` pixels give ``height/16 x width/16`` tokens
    per frame and ``6k+1`` frames give ``k+1`` latent frames."""
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    torch.manual_seed(seed + 1)
    transformer = MochiTransformer3DModel(
        patch_size=2, num_attention_heads=heads, attention_head_dim=32, num_layers=num_layers,
        pooled_projection_dim=16, in_channels=12, text_embed_dim=TINY_TEXT_DIM, time_embed_dim=8,
        max_sequence_length=16).eval()
    torch.nn.init.normal_(transformer.pos_frequencies, std=0.5)
    torch.manual_seed(seed)
    # 12 latent channels as the real VAE: MochiPipeline's decode reshapes latents_mean to [1, 12, 1, 1, 1]
    vae = AutoencoderKLMochi(latent_channels=12, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
                             decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1),
                             add_attention_block=(False,) * 5, latents_mean=(0.0,) * 12,
                             latents_std=(1.0,) * 12).eval()
    return MochiPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                         transformer=transformer)


class MochiFamily(ModelFamily):
    """Mochi 1: text tokens after the video tokens in every block's self-attention (padded prompts masked), tokens
    in tile order once per forward."""

    name = "mochi"
    title = "Mochi 1"
    transformer_classes = ("MochiTransformer3DModel",)
    text_position = "trailing"
    # its processor calls F.scaled_dot_product_attention itself: nothing to route
    routes_attention_call = False
    # as diffusers' Mochi docs load it: bfloat16 (the "bf16" weights variant), VAE tiling
    pipelines = {"MochiPipeline": LoadRecipe(torch.bfloat16, torch.bfloat16, torch.bfloat16, vae_tiling=True)}
    default_fps = 30  # diffusers' Mochi examples export at 30 fps
    frame_step = 6  # the VAE compresses time 6x: 6k+1 frames (19, 85, 163)
    tiny_variants = {"tiny-mochi": TinyPipeline(build_tiny_mochi, "MochiPipeline")}
    tiny_call = dict(height=128, width=512, num_frames=7)  # 2 latent frames of 8x32 tokens
    cp_unsupported_because = SDPA_CP_UNSUPPORTED

    def __init__(self) -> None:
        self._key_mask = TextKeyMask()

    def grid(self, transformer, latents):
        p = transformer.config.patch_size
        _, _, t, h, w = latents.shape
        return VideoGrid(t, h // p, w // p)

    def roles(self, transformer, current):
        return numbered_roles(transformer, current, MochiAttention, _SELF, MochiAttnProcessor2_0)

    def self_attention(self, attn, hidden_states, encoder_hidden_states, attention_mask, rope, attend):
        # diffusers' MochiAttnProcessor2_0 with one masked attention call instead of its loop over the batch
        def heads(x):
            return x.unflatten(2, (attn.heads, -1))  # [B, S, H, D]

        q, k, v = (heads(f(hidden_states)) for f in (attn.to_q, attn.to_k, attn.to_v))
        eq, ek, ev = (heads(f(encoder_hidden_states)) for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
        q, k = (q if attn.norm_q is None else attn.norm_q(q)), (k if attn.norm_k is None else attn.norm_k(k))
        if attn.norm_added_q is not None:
            eq = attn.norm_added_q(eq)
        if attn.norm_added_k is not None:
            ek = attn.norm_added_k(ek)
        if rope is not None:
            q, k = _rotary(q, *rope), _rotary(k, *rope)
        video_len, text_len = q.shape[1], eq.shape[1]
        valid = attention_mask.bool()
        out = attend(*(torch.cat(p, dim=1) for p in ((q, eq), (k, ek), (v, ev))), text_len,
                     self._key_mask(attention_mask, video_len))
        out = out.flatten(2, 3).to(q.dtype)
        video, text = out[:, :video_len], out[:, video_len:]
        # diffusers: each item's valid text rows first, in order, then zero rows (module docstring)
        first = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)
        text = text.gather(1, first[:, :, None].expand_as(text))
        text = text * (torch.arange(text_len, device=text.device)[None] < valid.sum(1, keepdim=True))[..., None]
        video = attn.to_out[1](attn.to_out[0](video))
        if hasattr(attn, "to_add_out"):
            text = attn.to_add_out(text)
        return video, text

    def call_default(self, processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope, **kwargs):
        return processor(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb=rope, **kwargs)

    def tile_order_hooks(self, transformer, order):
        def rope(module, args, out):  # (cos, sin), each [S, H, D/2]
            return tuple(order.to_tiles(t, 0) for t in out) if order.active else None

        register_frame_patches_hook(transformer.patch_embed, order)
        register_hook(transformer.rope, "post", rope)
        register_tokens_back_hook(transformer.proj_out, order)
        return True

    def tiny_prompt_kwargs(self, pipe, emb, text_len, valid_len, negative):
        mask = torch.zeros(1, text_len, dtype=torch.bool)
        mask[:, :text_len if valid_len is None else valid_len] = True
        out = dict(prompt_embeds=emb(1, text_len, TINY_TEXT_DIM), prompt_attention_mask=mask)
        if negative:
            out.update(negative_prompt_embeds=emb(1, text_len, TINY_TEXT_DIM), negative_prompt_attention_mask=mask)
        return out

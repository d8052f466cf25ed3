"""EasyAnimate V5 / V5.1 (``EasyAnimateTransformer3DModel``, 7B / 12B): every block's ``transformer_blocks.<i>.attn1``
is joint self-attention over ``[text, video]`` (the text tokens come *first*, as in CogVideoX) and becomes sparse
over the video tokens; the text tokens attend and are attended densely (the transformer takes no text mask: the
pipeline's padded prompt slots are attended like the others).

Its processor (``EasyAnimateAttnProcessor2_0``) calls ``F.scaled_dot_product_attention`` itself, so the family
computes q, k, v as that processor does (:meth:`EasyAnimateFamily.self_attention`), in the order ``[video, text]``
(attention does not depend on the order of the tokens it is given), and splits the output back. Two block kinds:
an MMDiT block (the first ``mmdit_layers``, every block of the published models) projects the text with its own
``add_*_proj`` / ``norm_added_*`` / ``to_add_out``; a later block projects both streams with ``to_q/k/v`` and returns
the text rows unprojected. RoPE (``image_rotary_emb``) applies to the video tokens only.

Token grid: latents ``[B, C, F, H, W]``, ``2x2`` patches per latent frame (a ``Conv2d`` frame by frame), frame-major
then row-major. Tile order once per forward: the RoPE tables (output of ``rope_embedding``, ``[S, D]`` each), the
video tokens as the first block receives them (``[B, S, C]``, after the patch embedding), and back before
``norm_final``; everything between is per token or attention.
"""

from __future__ import annotations

import re

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_easyanimate import EasyAnimateAttnProcessor2_0

from ..core.layout import VideoGrid
from .base import (SDPA_CP_UNSUPPORTED, TINY_TEXT_DIM, LoadRecipe, ModelFamily, TinyPipeline, numbered_roles,
                   permute_forward_argument, pipeline_loop_step, register_hook, register_tokens_back_hook)

_SELF = re.compile(r"^transformer_blocks\.(\d+)\.attn1$")


def build_tiny_easyanimate(seed: int = 0, num_layers: int = 2, heads: int = 2):
    """A tiny random-weight ``EasyAnimatePipeline``, float32 on CPU, no text encoder (prompts of 16 tokens). Head dim
    32; the last block is not an MMDiT block (``mmdit_layers = num_layers - 1``, at least 1), so both block kinds
    run. The Magvit VAE compresses 8x spatially and 4x temporally like the real one, so ``height x width`` pixels
    give ``height/16 x width/16`` tokens per frame and ``4k+1`` frames give ``k+1`` latent frames."""
    from diffusers import (AutoencoderKLMagvit, EasyAnimatePipeline, EasyAnimateTransformer3DModel,
                           FlowMatchEulerDiscreteScheduler)

    torch.manual_seed(seed + 1)
    transformer = EasyAnimateTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=32, in_channels=4, out_channels=4, patch_size=2,
        time_embed_dim=32, text_embed_dim=TINY_TEXT_DIM, num_layers=num_layers,
        mmdit_layers=max(1, num_layers - 1), add_norm_text_encoder=True).eval()
    torch.manual_seed(seed)
    vae = AutoencoderKLMagvit(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=2,
        block_out_channels=(8, 8, 8, 8), spatial_group_norm=False,
        down_block_types=("SpatialDownBlock3D",) + ("SpatialTemporalDownBlock3D",) * 3,
        up_block_types=("SpatialUpBlock3D",) + ("SpatialTemporalUpBlock3D",) * 3).eval()
    return EasyAnimatePipeline(vae=vae, text_encoder=None, tokenizer=None, transformer=transformer,
                               scheduler=FlowMatchEulerDiscreteScheduler())


class EasyAnimateFamily(ModelFamily):
    """EasyAnimate V5 / V5.1: text tokens before the video tokens in every block's self-attention, tokens in tile
    order once per forward, no context-parallel plan."""

    name = "easyanimate"
    title = "EasyAnimate"
    transformer_classes = ("EasyAnimateTransformer3DModel",)
    text_position = "leading"
    # its processor calls F.scaled_dot_product_attention itself: nothing to route
    routes_attention_call = False
    processor_class = EasyAnimateAttnProcessor2_0  # diffusers' Attention declares no _default_processor_cls
    # as diffusers' EasyAnimate docs load it: float16 (the recommended inference dtype of every V5.1 checkpoint)
    pipelines = {"EasyAnimatePipeline": LoadRecipe(torch.float16, torch.float16, torch.float16)}
    # image-to-video / inpainting and control take tensors (video, mask_video, control_video): Python API only
    other_pipelines = ("EasyAnimateInpaintPipeline", "EasyAnimateControlPipeline")
    default_fps = 8  # diffusers' docs: "Exporting videos at 8 FPS is recommended"
    frame_step = 4  # the Magvit VAE compresses time 4x: 4k+1 frames (49)
    tiny_variants = {"tiny-easyanimate": TinyPipeline(build_tiny_easyanimate, "EasyAnimatePipeline")}
    tiny_call = dict(height=128, width=512, num_frames=5)  # 2 latent frames of 8x32 tokens
    cp_unsupported_because = SDPA_CP_UNSUPPORTED

    # the step is the denoising loop's i: its pipelines also take schedulers without step_index (DDIM, ...)
    pipeline_step = pipeline_loop_step

    def grid(self, transformer, latents):
        p = transformer.config.patch_size
        _, _, t, h, w = latents.shape
        return VideoGrid(t, h // p, w // p)

    def roles(self, transformer, current):
        return numbered_roles(transformer, current, Attention, _SELF, EasyAnimateAttnProcessor2_0)

    def self_attention(self, attn, hidden_states, encoder_hidden_states, attention_mask, rope, attend):
        # diffusers' EasyAnimateAttnProcessor2_0 with the tokens as [video, text] instead of [text, video]
        if attention_mask is not None:
            raise ValueError("draft attention does not support an attention_mask on EasyAnimate self-attention (the "
                             "model passes none; one would index [text, video] tokens)")
        video_len, text_len = hidden_states.shape[1], encoder_hidden_states.shape[1]

        def heads(x):
            return x.unflatten(2, (attn.heads, -1))  # [B, S, H, D]

        def norm(f, x):
            return x if f is None else f(x)

        if attn.add_q_proj is None:  # not an MMDiT block: one projection for both streams
            x = torch.cat([hidden_states, encoder_hidden_states], dim=1)
            q, k, v = heads(attn.to_q(x)), heads(attn.to_k(x)), heads(attn.to_v(x))
            q, k = norm(attn.norm_q, q), norm(attn.norm_k, k)
        else:
            q, k, v = (heads(f(hidden_states)) for f in (attn.to_q, attn.to_k, attn.to_v))
            eq, ek, ev = (heads(f(encoder_hidden_states)) for f in (attn.add_q_proj, attn.add_k_proj,
                                                                     attn.add_v_proj))
            q, k = norm(attn.norm_q, q), norm(attn.norm_k, k)
            eq, ek = norm(attn.norm_added_q, eq), norm(attn.norm_added_k, ek)
            q, k, v = torch.cat([q, eq], dim=1), torch.cat([k, ek], dim=1), torch.cat([v, ev], dim=1)
        if rope is not None:  # RoPE on the video tokens only (keys too, in self-attention)
            q = torch.cat([apply_rotary_emb(q[:, :video_len], rope, sequence_dim=1), q[:, video_len:]], dim=1)
            if not attn.is_cross_attention:
                k = torch.cat([apply_rotary_emb(k[:, :video_len], rope, sequence_dim=1), k[:, video_len:]], dim=1)
        out = attend(q, k, v, text_len, None).flatten(2, 3).to(q.dtype)
        video, text = out[:, :video_len], out[:, video_len:]
        if getattr(attn, "to_out", None) is not None:
            video = attn.to_out[1](attn.to_out[0](video))
        if getattr(attn, "to_add_out", None) is not None:
            text = attn.to_add_out(text)
        return video, text

    def call_default(self, processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope, **kwargs):
        return processor(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb=rope, **kwargs)

    def tile_order_hooks(self, transformer, order):
        def rope(module, args, out):  # (cos, sin), each [S, D]
            return tuple(order.to_tiles(t, 0) for t in out) if order.active else None

        def tokens(module, args, kwargs):  # the first block's hidden_states [B, S, C], positional or by name
            if not order.active:
                return None
            return permute_forward_argument(args, kwargs, 0, "hidden_states", order, (1,), per_token_ndim=3)

        register_hook(transformer.rope_embedding, "post", rope)
        register_hook(transformer.transformer_blocks[0], "pre", tokens, with_kwargs=True)
        register_tokens_back_hook(transformer.norm_final, order)
        return True

    def tiny_prompt_kwargs(self, pipe, emb, text_len, valid_len, negative):
        # the pipeline requires a mask with given embeddings; the transformer does not take it (it attends every slot)
        mask = torch.ones(1, text_len, dtype=torch.long)
        out = dict(prompt_embeds=emb(1, text_len, TINY_TEXT_DIM), prompt_attention_mask=mask)
        if negative:
            out.update(negative_prompt_embeds=emb(1, text_len, TINY_TEXT_DIM), negative_prompt_attention_mask=mask)
        return out


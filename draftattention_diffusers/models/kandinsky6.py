"""Kandinsky 6.0 (``Kandinsky6Transformer3DModel``: text/image-to-video-and-audio, ``Kandinsky6TI2VAPipeline``).
Only ``visual_transformer_blocks.<i>.video_dec_block.self_attention`` (video self-attention) becomes sparse. Every
other attention runs diffusers' ``Kandinsky6AttnProcessor`` unchanged: the audio self-attention
(``audio_dec_block.self_attention``), the text cross-attentions (``*_dec_block.cross_attention``), the video<->audio
cross-attentions (``va_cross_attention``, ``av_cross_attention``) and both text branches' self-attention
(``video_text_transformer_blocks``, ``audio_text_transformer_blocks``). The model's own processor computes q, k, v,
norms and RoPE; draft attention replaces its ``dispatch_attention_fn`` call only (diffusers 0.42.1: the video
self-attention is called with no mask and over the video tokens alone, so the text is in no self-attention sequence).

Token grid: the latents arrive channels-last ``[B, T, H, W, C]`` (``Kandinsky6VisualEmbeddings``), patched by
``config.patch_size`` (1, 2, 2) and flattened frame-major, then row-major. Image-to-video appends the encoded image
as one more latent frame (``Kandinsky6TI2VAPipeline``: a tail frame with token type 1 reusing RoPE position 0): it
is part of the grid the forward sees, so it is tiled like any frame.

Tile order: gathered per attention call (``tile_order_hooks`` registers nothing). The forward adds per-frame
``visual_token_type_ids`` embeddings after ``visual_embeddings`` (the I2V tail frame), so reordering at that
module's output as for Kandinsky 5 would put the token types on the wrong tokens.
"""

from __future__ import annotations

import re

import torch
from diffusers.models.transformers.transformer_kandinsky6 import Kandinsky6Attention, Kandinsky6AttnProcessor

from .base import TINY_TEXT_DIM, LoadRecipe, PipelineInput, TinyPipeline, numbered_roles
from .hunyuan_video import tiny_hunyuan_vae
from .kandinsky5 import KandinskyVisualFacts

_SELF = re.compile(r"^visual_transformer_blocks\.(\d+)\.video_dec_block\.self_attention$")
_TINY_POOLED_DIM = 16
_TINY_AUDIO_DIM = 4


def build_tiny_kandinsky6(seed: int = 0, num_layers: int = 2, heads: int = 2):
    """A tiny random-weight ``Kandinsky6TI2VAPipeline`` (video + audio), float32 on CPU, no text encoders. The
    transformer is configured as the released checkpoints are (``visual_cond``, ``ca_rope``, ``cross_gates``,
    ``fix_modulation``, two visual token types: text-to-video and, with ``image``, image-to-video): head dim 32
    (RoPE axes 8 + 12 + 12) for video and audio, one text block per branch, ``num_layers`` fused blocks. The VAE is
    a tiny HunyuanVideo VAE (8x spatial, 4x temporal), so ``height x width`` pixels give ``height/16 x width/16``
    tokens per frame; a tiny MMAudio VAE and vocoder at 2048 Hz give a handful of audio tokens."""
    from diffusers import (FlowMatchEulerDiscreteScheduler, Kandinsky6TI2VAPipeline,
                           Kandinsky6Transformer3DModel, MMAudioVAE, MMAudioVocoder)

    torch.manual_seed(seed + 1)
    tr = Kandinsky6Transformer3DModel(
        in_visual_dim=4, out_visual_dim=4, in_text_dim=TINY_TEXT_DIM, in_text_dim2=_TINY_POOLED_DIM, time_dim=32,
        patch_size=(1, 2, 2), model_dim=heads * 32, ff_dim=64, num_text_blocks=1, num_visual_blocks=num_layers,
        axes_dims=(8, 12, 12), visual_cond=True, in_audio_dim=_TINY_AUDIO_DIM, out_audio_dim=_TINY_AUDIO_DIM,
        text_token_padding=True, ca_rope=True, cross_gates=True, fix_modulation=True,
        visual_token_type_num_embeddings=2).eval()
    vae = tiny_hunyuan_vae(seed)
    audio_vae = MMAudioVAE(mel_bins=8, latent_channels=_TINY_AUDIO_DIM, hidden_channels=8, channel_multipliers=(1,),
                           layers_per_block=1, sample_rate=2048, n_fft=32, hop_length=16).eval()
    vocoder = MMAudioVocoder(num_mels=8, upsample_initial_channel=8, upsample_rates=(4, 4),
                             upsample_kernel_sizes=(8, 8), resblock_kernel_sizes=(3,),
                             resblock_dilation_sizes=((1,),)).eval()
    return Kandinsky6TI2VAPipeline(transformer=tr, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
                                   tokenizer_2=None, scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
                                   audio_vae=audio_vae, vocoder=vocoder)


class Kandinsky6Family(KandinskyVisualFacts):
    """Kandinsky 6.0 (video + audio): the fused blocks' video self-attention sparse, everything else the model's own
    processor; tile order gathered per call (module docstring)."""

    name = "kandinsky6"
    title = "Kandinsky 6.0"
    transformer_classes = ("Kandinsky6Transformer3DModel",)
    # as diffusers' Kandinsky6TI2VAPipeline example loads it: every component in bfloat16; one pipeline for text- and
    # image-to-video (the image is optional: a tail frame)
    pipelines = {"Kandinsky6TI2VAPipeline": LoadRecipe(torch.bfloat16, torch.bfloat16, torch.bfloat16,
                                                       inputs=(PipelineInput("image", "image"),))}
    default_fps = 24  # the example exports at 24 fps (the pipeline's frame_rate default)
    tiny_variants = {"tiny-kandinsky6": TinyPipeline(build_tiny_kandinsky6, "Kandinsky6TI2VAPipeline")}
    cp_unsupported_because = "diffusers 0.42.1 has no context-parallel plan for it"

    def roles(self, transformer, current):
        return numbered_roles(transformer, current, Kandinsky6Attention, _SELF, Kandinsky6AttnProcessor)

    def call_default(self, processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope, **kwargs):
        # Kandinsky6Attention.forward: processor(attn, x, encoder_hidden_states=, rotary_emb=, rotary_emb_kv=,
        # attn_mask=): its mask is `attn_mask` (in kwargs); `attention_mask` never comes from that forward
        if attention_mask is not None:
            raise ValueError("Kandinsky6AttnProcessor takes its mask as attn_mask, not attention_mask")
        return processor(attn, hidden_states, encoder_hidden_states=encoder_hidden_states, rotary_emb=rope, **kwargs)

    def pipeline_kwargs(self, pipe, kwargs):
        # sample_audio (the pipeline's default) needs both audio components, which are optional in a checkpoint
        if getattr(pipe, "audio_vae", None) is None or getattr(pipe, "vocoder", None) is None:
            return {**kwargs, "sample_audio": False}
        return kwargs

    def tiny_prompt_kwargs(self, pipe, emb, text_len, valid_len, negative):
        # Qwen2.5-VL token embeddings and the pooled CLIP embedding (the pipeline takes no prompt mask with them);
        # without negative prompts, no CFG (the pipeline would encode its default one)
        out = dict(prompt_embeds=emb(1, text_len, TINY_TEXT_DIM), pooled_prompt_embeds=emb(1, _TINY_POOLED_DIM))
        if negative:
            out.update(negative_prompt_embeds=emb(1, text_len, TINY_TEXT_DIM),
                       negative_pooled_prompt_embeds=emb(1, _TINY_POOLED_DIM))
        else:
            out["guidance_scale"] = 1.0
        return out

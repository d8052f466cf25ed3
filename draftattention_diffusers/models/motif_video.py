"""Motif-Video (``MotifVideoTransformer3DModel``, 2B; ``MotifVideoPipeline`` T2V, ``MotifVideoImage2VideoPipeline``
I2V): HunyuanVideo-style dual-stream (``transformer_blocks.<i>.attn``) and single-stream
(``single_transformer_blocks.<i>.attn``) blocks whose self-attention runs over ``[video | text]``, the text (with I2V
the SigLIP image tokens first) trailing and padded text masked by a key-padding suffix mask ``[B, 1, 1, S]``. Those
modules become sparse over the video tokens; the text tokens attend and are attended densely, padded keys never.
The shared text cross-attention (``*.cross_attn``, ``MotifVideoCrossAttention``) runs diffusers' processor unchanged.
The model's own processor computes q, k, v, norms, RoPE and the output projections; draft attention replaces its
``dispatch_attention_fn`` call only.

The last ``num_decoder_layers`` single-stream blocks (the DDT decoder, 8 of 24 in the published model) run over
``[video (a copy of the patch embeddings) | the encoder's video tokens]`` with no mask: their first half is the video
grid (sparse) and the encoder's tokens stand where the text stands elsewhere (trailing, dense: every query attends
to all of them, and they attend to everything).

``dense_layers`` counts the dual-stream blocks first, then the single-stream ones (decoder blocks last).

Token grid: the latents ``[B, C, T, H, W]`` patched by ``config.patch_size_t`` x ``config.patch_size``. Tile order
once per forward: ``x_embedder``'s output (the decoder's copy is taken after it, so it is in tile order too), the
RoPE tables (``rope``), and back before ``proj_out``; ``norm_out`` and the blocks' modulation are per batch item.

Checked against diffusers 0.42.1 ``models/transformers/transformer_motif_video.py``: ``MotifVideoAttention.forward``
calls ``self.processor(self, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)``
positionally; ``MotifVideoAttnProcessor2_0.__call__`` concatenates ``[video, text]`` (RoPE on the video part only)
and ends in ``dispatch_attention_fn(query, key, value, attn_mask=attention_mask, backend=self._attention_backend,
parallel_config=self._parallel_config)``; the forward builds ``attention_mask = F.pad(encoder_attention_mask,
(video_tokens, 0), value=True)[:, None, None]`` (the decoder blocks get None); ``pipelines/motif_video``.
"""

from __future__ import annotations

import re

import torch
from diffusers.models.transformers.transformer_motif_video import (MotifVideoAttention, MotifVideoAttnProcessor2_0,
                                                                   MotifVideoCrossAttention,
                                                                   MotifVideoCrossAttnProcessor2_0)

from ..core.layout import VideoGrid
from .base import (IMAGE_TO_VIDEO, TINY_TEXT_DIM, AttentionRole, LoadRecipe, ModelFamily, TinyPipeline,
                   guidance_from_guider, keep_or_default, register_sequence_tile_order_hooks)
from .hunyuan_video import call_with_image_rotary_emb
from .wan import tiny_wan_vae

_DUAL = re.compile(r"^transformer_blocks\.(\d+)\.attn$")
_SINGLE = re.compile(r"^single_transformer_blocks\.(\d+)\.attn$")


def build_tiny_motif_video(seed: int = 0, num_layers: int = 2, heads: int = 2, decoder_layers: int = 0,
                           image_to_video: bool = False):
    """A tiny random-weight ``MotifVideoPipeline`` (``image_to_video``: ``MotifVideoImage2VideoPipeline``), float32
    on CPU, no text encoder (its T5Gemma2 embeddings are given; I2V then has no SigLIP image tokens, as the pipeline
    without a text encoder). ``num_layers`` blocks split between dual-stream (half, at least 1) and single-stream (the
    rest, at least 1, of which the last ``decoder_layers`` are DDT decoder blocks); head dim 32 (RoPE 8/12/12), the
    shared text cross-attention in every block as in the published model, Wan's tiny VAE (8x spatial, 4x temporal;
    16 latent channels: the transformer takes noise, condition latents and a mask, 33 channels), adaptive projected
    guidance as the Motif-Video docs run it."""
    from diffusers import FlowMatchEulerDiscreteScheduler, MotifVideoImage2VideoPipeline, MotifVideoPipeline
    from diffusers.guiders import AdaptiveProjectedGuidance
    from diffusers.models.transformers.transformer_motif_video import MotifVideoTransformer3DModel

    torch.manual_seed(seed + 1)
    single = max(1, num_layers - num_layers // 2) + decoder_layers
    transformer = MotifVideoTransformer3DModel(
        in_channels=2 * 16 + 1, out_channels=16, num_attention_heads=heads, attention_head_dim=32,
        num_layers=max(1, num_layers // 2), num_single_layers=single, num_decoder_layers=decoder_layers,
        mlp_ratio=2.0, patch_size=2, patch_size_t=1, text_embed_dim=TINY_TEXT_DIM, rope_axes_dim=(8, 12, 12),
        enable_text_cross_attention_dual=True, enable_text_cross_attention_single=True).eval()
    cls = MotifVideoImage2VideoPipeline if image_to_video else MotifVideoPipeline
    return cls(scheduler=FlowMatchEulerDiscreteScheduler(shift=8.0), vae=tiny_wan_vae(seed), text_encoder=None,
               tokenizer=None, transformer=transformer, guider=AdaptiveProjectedGuidance(guidance_scale=8.0),
               feature_extractor=None)


class MotifVideoFamily(ModelFamily):
    """Motif-Video T2V / I2V: text trailing in every block's self-attention (padded prompts masked)."""

    name = "motif_video"
    title = "Motif-Video"
    transformer_classes = ("MotifVideoTransformer3DModel",)
    text_position = "trailing"
    grid_locals = ("post_patch_num_frames", "post_patch_height", "post_patch_width")
    # as diffusers' Motif-Video docs load them: every component in bfloat16
    pipelines = {"MotifVideoPipeline": LoadRecipe(torch.bfloat16, torch.bfloat16, torch.bfloat16),
                 "MotifVideoImage2VideoPipeline": LoadRecipe(torch.bfloat16, torch.bfloat16, torch.bfloat16,
                                                             inputs=IMAGE_TO_VIDEO)}
    default_fps = 24  # the docs export at 24 fps
    frame_step = 4  # Wan VAE: 4k + 1 frames
    pixel_step = 16  # 8x VAE, 2x2 patches
    tiny_variants = {"tiny-motif-video": TinyPipeline(build_tiny_motif_video, "MotifVideoPipeline")}
    # 2 latent frames of 8 x 32 tokens: two 8x16 regions side by side
    tiny_call = dict(height=128, width=512, num_frames=5)
    cp_unsupported_because = "diffusers 0.42.1 has no context-parallel plan for MotifVideoTransformer3DModel"

    def grid(self, transformer, latents):
        p, p_t = transformer.config.patch_size, transformer.config.patch_size_t
        _, _, t, h, w = latents.shape
        return VideoGrid(t // p_t, h // p, w // p)

    def roles(self, transformer, current):
        num_dual = len(transformer.transformer_blocks)
        out = {}
        for name, module in transformer.named_modules():
            if isinstance(module, MotifVideoAttention):
                dual, single = _DUAL.match(name), _SINGLE.match(name)
                index = int(dual.group(1)) if dual else num_dual + int(single.group(1)) if single else None
                default = keep_or_default(current.get(f"{name}.processor"), MotifVideoAttnProcessor2_0)
                out[module] = AttentionRole(name, index is not None, index, default,
                                            custom=not isinstance(default, MotifVideoAttnProcessor2_0))
            elif isinstance(module, MotifVideoCrossAttention):  # text cross-attention: its processor, unchanged
                out[module] = AttentionRole(name, False, None, keep_or_default(current.get(f"{name}.processor"),
                                                                               MotifVideoCrossAttnProcessor2_0))
        return out

    def call_default(self, processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope, **kwargs):
        # MotifVideoAttention passes (hidden, encoder_hidden, mask, image_rotary_emb) positionally; the cross-attention
        # (hidden, encoder_hidden, mask, image_rotary_emb, image_embed_seq_len): DraftAttnProcessor.__call__ receives
        # the int in its 6th parameter and hands it on as key_rope (next to the RoPE) or, without RoPE, as rope
        if isinstance(attn, MotifVideoCrossAttention):
            if "key_rope" in kwargs:
                rotary, image_len = rope, kwargs.pop("key_rope")
            elif isinstance(rope, int):
                rotary, image_len = None, rope
            else:
                rotary, image_len = rope, 0
            return processor(attn, hidden_states, encoder_hidden_states, attention_mask, rotary, image_len, **kwargs)
        return call_with_image_rotary_emb(processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope,
                                          **kwargs)

    def tile_order_hooks(self, transformer, order):
        # x_embedder: [B, S, C]; rope: (cos, sin), each [S, D]
        register_sequence_tile_order_hooks(order, transformer.x_embedder, transformer.proj_out, transformer.rope)
        return True

    def pipeline_kwargs(self, pipe, kwargs):  # guidance comes from the pipelines' guider
        return guidance_from_guider(pipe, kwargs)

    def tiny_prompt_kwargs(self, pipe, emb, text_len, valid_len, negative):
        mask = torch.zeros(1, text_len, dtype=torch.bool)
        mask[:, : text_len if valid_len is None else valid_len] = True
        out = dict(prompt_embeds=emb(1, text_len, TINY_TEXT_DIM), prompt_attention_mask=mask)
        # a guider with classifier-free guidance needs the negative embeddings (it would encode "" otherwise)
        if negative or pipe.guider.num_conditions > 1:
            out.update(negative_prompt_embeds=emb(1, text_len, TINY_TEXT_DIM),
                       negative_prompt_attention_mask=mask.clone())
        return out

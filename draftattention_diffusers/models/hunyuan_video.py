"""HunyuanVideo (``HunyuanVideoTransformer3DModel``): the attention of the dual-stream blocks
(``transformer_blocks.<i>.attn``) and single-stream blocks (``single_transformer_blocks.<i>.attn``) becomes sparse
over video tokens; the text tokens (appended after the video) attend and are attended densely, padded text keys
never. The token refiner (``context_embedder.token_refiner``) is never touched.

``dense_layers`` indices count the dual-stream blocks first, then the single-stream ones (0..19, 20..59 for the
published model)."""

from __future__ import annotations

import re

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

from ..core.layout import VideoGrid
from .base import AttentionRole, ModelFamily, keep_or_default, register_hook

_DUAL = re.compile(r"^transformer_blocks\.(\d+)\.attn$")
_SINGLE = re.compile(r"^single_transformer_blocks\.(\d+)\.attn$")


def _qkv(attn, x, projections, norms):
    """q, k, v ``[B, S, H, D]`` of one stream: projections, then the optional q/k RMS norms."""
    q, k, v = (proj(x).unflatten(2, (attn.heads, -1)) for proj in projections)
    norm_q, norm_k = norms
    return (q if norm_q is None else norm_q(q)), (k if norm_k is None else norm_k(k)), v


class HunyuanVideoFamily(ModelFamily):
    name = "hunyuan_video"
    transformer_classes = ("HunyuanVideoTransformer3DModel",)

    def grid(self, transformer, latents):
        p, p_t = transformer.config.patch_size, transformer.config.patch_size_t
        _, _, t, h, w = latents.shape
        return VideoGrid(t // p_t, h // p, w // p)

    def roles(self, transformer, current):
        num_dual = len(transformer.transformer_blocks)
        out = {}
        for name, module in transformer.named_modules():
            if not isinstance(module, Attention):
                continue
            cur = current.get(f"{name}.processor")
            dual, single = _DUAL.match(name), _SINGLE.match(name)
            if dual or single:
                index = int(dual.group(1)) if dual else num_dual + int(single.group(1))
                default = keep_or_default(cur, HunyuanVideoAttnProcessor2_0)
                out[module] = AttentionRole(name, True, index, default,
                                            custom=not isinstance(default, HunyuanVideoAttnProcessor2_0))
            else:  # token refiner: plain self-attention over text
                out[module] = AttentionRole(name, False, None, keep_or_default(cur, AttnProcessor2_0))
        return out

    def self_attention(self, attn, hidden_states, encoder_hidden_states, attention_mask, rope, attend):
        # Steps 1-4 and 6 of diffusers' HunyuanVideoAttnProcessor2_0; step 5 (attention) is `attend`.
        text_len = encoder_hidden_states.shape[1]
        single_stream = attn.add_q_proj is None
        if single_stream:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)
        query, key, value = _qkv(attn, hidden_states, (attn.to_q, attn.to_k, attn.to_v), (attn.norm_q, attn.norm_k))
        if rope is not None:
            if single_stream:
                query = torch.cat([apply_rotary_emb(query[:, :-text_len], rope, sequence_dim=1),
                                   query[:, -text_len:]], dim=1)
                key = torch.cat([apply_rotary_emb(key[:, :-text_len], rope, sequence_dim=1),
                                 key[:, -text_len:]], dim=1)
            else:
                query = apply_rotary_emb(query, rope, sequence_dim=1)
                key = apply_rotary_emb(key, rope, sequence_dim=1)
        if not single_stream:
            eq, ek, ev = _qkv(attn, encoder_hidden_states, (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj),
                              (attn.norm_added_q, attn.norm_added_k))
            query, key, value = (torch.cat(p, dim=1) for p in ((query, eq), (key, ek), (value, ev)))

        out = attend(query, key, value, text_len, attention_mask)
        out = out.flatten(2, 3).to(query.dtype)

        video, text = out[:, :-text_len], out[:, -text_len:]
        if getattr(attn, "to_out", None) is not None:
            video = attn.to_out[1](attn.to_out[0](video))
        if getattr(attn, "to_add_out", None) is not None:
            text = attn.to_add_out(text)
        return video, text

    def call_default(self, processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope, **kwargs):
        if rope is not None:
            kwargs["image_rotary_emb"] = rope
        return processor(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)

    def tile_order_hooks(self, transformer, order):
        if getattr(transformer.config, "image_condition_type", None) == "token_replace":
            return False  # its blocks slice the first frame's tokens by position

        def patches(module, args, out):  # [B, S, C]
            return order.to_tiles(out, 1) if order.active else None

        def rope(module, args, out):  # (cos, sin), each [S, D]
            return tuple(order.to_tiles(t, 0) for t in out) if order.active else None

        def back(module, args):  # proj_out input [B, S, C] (video stream only)
            return (order.from_tiles(args[0], 1),) + tuple(args[1:]) if order.active else None

        register_hook(transformer.x_embedder, "post", patches)
        register_hook(transformer.rope, "post", rope)
        register_hook(transformer.proj_out, "pre", back)
        return True

"""Wan2.1 / Wan2.2 (``WanTransformer3DModel``): T2V, I2V, TI2V. Only ``blocks.<i>.attn1`` (video self-attention)
becomes sparse; ``attn2`` (text, and I2V image tokens) runs diffusers' ``WanAttnProcessor`` unchanged."""

from __future__ import annotations

import re

import torch
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor, _get_qkv_projections

from ..core.layout import VideoGrid
from .base import AttentionRole, ModelFamily, keep_or_default, register_hook

_SELF = re.compile(r"^blocks\.(\d+)\.attn1$")


def _apply_rotary_emb(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    # Same arithmetic as the closure inside diffusers' WanAttnProcessor (interleaved pairs).
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class WanFamily(ModelFamily):
    name = "wan"
    transformer_classes = ("WanTransformer3DModel",)

    def grid(self, transformer, latents):
        p_t, p_h, p_w = transformer.config.patch_size
        _, _, t, h, w = latents.shape
        return VideoGrid(t // p_t, h // p_h, w // p_w)

    def roles(self, transformer, current):
        out = {}
        for name, module in transformer.named_modules():
            if isinstance(module, WanAttention):
                m = _SELF.match(name)
                video_self = m is not None and not module.is_cross_attention
                default = keep_or_default(current.get(f"{name}.processor"), WanAttnProcessor)
                out[module] = AttentionRole(name, video_self, int(m.group(1)) if m else None, default,
                                            custom=not isinstance(default, WanAttnProcessor))
        return out

    def self_attention(self, attn, hidden_states, encoder_hidden_states, attention_mask, rope, attend):
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rope is not None:
            query = _apply_rotary_emb(query, *rope)
            key = _apply_rotary_emb(key, *rope)
        out = attend(query, key, value, 0, attention_mask)
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))

    def call_default(self, processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope, **kwargs):
        return processor(attn, hidden_states, encoder_hidden_states, attention_mask, rope, **kwargs)

    def tile_order_hooks(self, transformer, order):
        def patches(module, args, out):  # [B, C, F, H, W]; the model flattens dims 2.. into the sequence next
            return order.to_tiles(out.flatten(2), 2).view(out.shape) if order.active else None

        def rope(module, args, out):  # (cos, sin), each [1, S, 1, D]
            return tuple(order.to_tiles(t, 1) for t in out) if order.active else None

        def per_token_timestep(module, args, kwargs=None):  # Wan2.2 TI2V: timestep [B, S]
            if not order.active or kwargs is None:  # (None: removed while this forward's hooks were running)
                return None
            t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
            if t is None or t.ndim != 2:
                return None
            t = order.to_tiles(t, 1)
            if "timestep" in kwargs:
                return args, {**kwargs, "timestep": t}
            return (args[0], t) + tuple(args[2:]), kwargs

        def back(module, args):  # proj_out input [B, S, C]
            return (order.from_tiles(args[0], 1),) + tuple(args[1:]) if order.active else None

        register_hook(transformer.patch_embedding, "post", patches)
        register_hook(transformer.rope, "post", rope)
        register_hook(transformer, "pre", per_token_timestep, with_kwargs=True)
        register_hook(transformer.proj_out, "pre", back)
        return True

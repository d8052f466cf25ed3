"""AnyFlow (``AnyFlowTransformer3DModel``, ``AnyFlowPipeline``): flow-map-distilled text-to-video on a Wan2.1 backbone
(any number of steps from one checkpoint). Only ``blocks.<i>.attn1`` (video self-attention, ``AnyFlowAttnProcessor``)
becomes sparse: its ``dispatch_attention_fn`` call is routed to draft attention (``integration/routing.py``);
``attn2`` (text, ``AnyFlowCrossAttnProcessor``) runs the model's processor unchanged.

Facts (diffusers 0.42.1, ``transformer_anyflow.py``): the forward takes latents as ``[B, F, C, H, W]`` (frames before
channels) and flattens the patch embedding's ``[B, C, F, H, W]`` output frame-major into the sequence, as Wan does;
its RoPE returns ``{"query": freqs, "key": freqs}``, complex ``[1, 1, S, D/2]``; its condition embedder returns
per-token time embeddings ``[B, S, D]`` and ``[B, S, 6D]`` (each frame's timestep repeated over the frame's tokens:
``AnyFlowPipeline`` gives the frames of a conditioning video timestep 0). The tile-order hooks put all three in tile
order once per forward and the tokens back before ``proj_out``. Self-attention has no mask and no text tokens.

``AnyFlowTransformer3DModel`` has no diffusers ``AttentionMixin``: the integration reads and sets its processors by
walking its modules. The chunk-wise causal variant (``AnyFlowFARTransformer3DModel``, ``AnyFlowFARPipeline``) is refused: see
``models/__init__.py``'s ``REFUSED``.
"""

from __future__ import annotations

import re

import torch
from diffusers.models.transformers.transformer_anyflow import (AnyFlowAttention, AnyFlowAttnProcessor,
                                                                 AnyFlowCrossAttnProcessor)

from ..core.layout import VideoGrid
from .base import (TINY_TEXT_DIM, AttentionRole, LoadRecipe, ModelFamily, TinyPipeline, keep_or_default, register_hook,
                   register_tokens_back_hook)
from .wan import TINY_WAN_TRANSFORMER, tiny_wan_vae

_SELF = re.compile(r"^blocks\.(\d+)\.attn1$")
_CROSS = re.compile(r"^blocks\.\d+\.attn2$")
_OWN = (AnyFlowAttnProcessor, AnyFlowCrossAttnProcessor)


def build_tiny_anyflow(seed: int = 0, num_layers: int = 2, heads: int = 2):
    """A tiny random-weight ``AnyFlowPipeline`` (T2V), float32 on CPU, no text encoder; Wan's tiny VAE; the flow-map
    scheduler with shift 5.0, as diffusers' scripts/convert_anyflow_to_diffusers.py builds it."""
    from diffusers import AnyFlowPipeline, AnyFlowTransformer3DModel, FlowMapEulerDiscreteScheduler

    keys = ("patch_size", "attention_head_dim", "in_channels", "out_channels", "text_dim", "freq_dim", "ffn_dim",
            "cross_attn_norm", "rope_max_seq_len")
    torch.manual_seed(seed + 1)
    transformer = AnyFlowTransformer3DModel(num_attention_heads=heads, num_layers=num_layers,
                                            **{k: TINY_WAN_TRANSFORMER[k] for k in keys}).eval()
    return AnyFlowPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=tiny_wan_vae(seed),
                           scheduler=FlowMapEulerDiscreteScheduler(shift=5.0))


class AnyFlowFamily(ModelFamily):
    """AnyFlow T2V (bidirectional flow-map model on Wan2.1 14B / 1.3B)."""

    name = "anyflow"
    title = "AnyFlow"
    transformer_classes = ("AnyFlowTransformer3DModel",)
    # AnyFlowPipeline's docstring example loads the whole pipeline in bfloat16; the VAE in float32 as for Wan (the
    # same AutoencoderKLWan). Its conditioning video (`video` / `video_latents`) is for the Python API
    pipelines = {"AnyFlowPipeline": LoadRecipe(torch.bfloat16, torch.float32, torch.bfloat16)}
    other_pipelines = ()
    default_fps = 16
    tiny_variants = {"tiny-anyflow": TinyPipeline(build_tiny_anyflow, "AnyFlowPipeline")}
    processor_class = AnyFlowAttnProcessor

    # diffusers 0.42.1 has no context-parallel plan for it
    cp_unsupported_because = "diffusers has no context-parallel plan for it"

    def grid(self, transformer, latents):  # latents [B, F, C, H, W]
        p_t, p_h, p_w = transformer.config.patch_size
        _, f, _, h, w = latents.shape
        return VideoGrid(f // p_t, h // p_h, w // p_w)

    def grid_from_locals(self, transformer, frame_locals):
        cfg = frame_locals.get("layout_cfg")  # the forward's token layout (its RoPE reads the same entries)
        if not isinstance(cfg, dict) or transformer.config.patch_size[0] != 1:
            return None
        return VideoGrid(cfg["total_frames"], *cfg["full_frame_shape"])

    def roles(self, transformer, current):
        out = {}
        for name, module in transformer.named_modules():
            if not isinstance(module, AnyFlowAttention):
                continue
            m = _SELF.match(name)
            own = AnyFlowCrossAttnProcessor if _CROSS.match(name) else AnyFlowAttnProcessor
            default = keep_or_default(current.get(f"{name}.processor"), own)
            out[module] = AttentionRole(name, m is not None, None if m is None else int(m.group(1)), default,
                                        custom=not isinstance(default, _OWN))
        return out

    def call_default(self, processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope, **kwargs):
        # AnyFlowAttention.forward passes everything by name; only self-attention gets rotary_emb (the cross
        # processor takes none)
        if rope is not None:
            kwargs["rotary_emb"] = rope
        return processor(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)

    def tile_order_hooks(self, transformer, order):
        def patches(module, args, out):  # [B, C, F, H, W]; the model flattens dims 2.. into the sequence next
            return order.to_tiles(out.flatten(2), 2).view(out.shape) if order.active else None

        def rope(module, args, out):  # {"query": freqs, "key": freqs}, [1, 1, S, D/2] (one tensor, twice)
            if not order.active:
                return None
            tiled = {id(t): order.to_tiles(t, 2) for t in out.values()}
            return {k: tiled[id(t)] for k, t in out.items()}

        def time_embeddings(module, args, out):  # (temb [B, S, D], timestep_proj [B, S, 6D], text, image)
            if not order.active:
                return None
            return (order.to_tiles(out[0], 1), order.to_tiles(out[1], 1)) + tuple(out[2:])

        register_hook(transformer.patch_embedding, "post", patches)
        register_hook(transformer.rope, "post", rope)
        register_hook(transformer.condition_embedder, "post", time_embeddings)
        register_tokens_back_hook(transformer.proj_out, order)
        return True

    def tiny_prompt_kwargs(self, pipe, emb, text_len, valid_len, negative):
        # no negative embeddings: AnyFlowPipeline batches given negative embeddings with the prompt's even without
        # guidance (its default guidance_scale is 1.0: the released checkpoints fold CFG into the weights), and the
        # transformer then gets two prompts for one video
        return dict(prompt_embeds=emb(1, text_len, TINY_TEXT_DIM))

"""Kandinsky 5.0 Video (``Kandinsky5Transformer3DModel``: Lite 2B, Pro 19B; T2V and I2V). Only
``visual_transformer_blocks.<i>.self_attention`` (video self-attention) becomes sparse; the text encoder blocks'
self-attention (text only) and the visual blocks' ``cross_attention`` (to the text) run diffusers'
``Kandinsky5AttnProcessor`` unchanged. The model's own processor computes q, k, v, norms and RoPE; draft attention
replaces its ``dispatch_attention_fn`` call only.

Token grid: the latents arrive channels-last ``[B, T, H, W, C]`` (``Kandinsky5VisualEmbeddings``), patched by
``config.patch_size`` (1, 2, 2) and flattened frame-major, then row-major (``fractal_flatten`` without a block mask).

Tile order once per forward: the visual embeddings ``[B, T', H', W', D]`` (output of ``visual_embeddings``) and the
visual RoPE table (output of ``visual_rope_embeddings``, ``[B, T', H', W', 1, D/2, 2, 2]``) are put in tile order
along their flattened token axis, and back before ``out_layer``. In between every layer is per token (modulation is
per batch item) or attention, so no hook is missing.

NABLA (``config.attention_type == "nabla"``, the 10 s Lite models and, per the docs' flex-attention advice, Pro):
refused at ``enable``. NABLA is a sparse attention of its own: with it the pipeline passes ``sparse_params``, the
forward flattens the tokens in an 8x8 "fractal" block order instead of frame-major order, and every self-attention
call builds a flex ``BlockMask`` from pooled q/k. Keeping it as the model's dense path (bit-identical to diffusers
with ``dense_steps_fraction=1``) while draft attention replaces it in sparse steps would need a second token order
under the draft layout and a per-forward switch of the pipeline's ``sparse_params``; replacing it outright would
change the model's warm-up steps. Neither is implemented, so draft attention says so instead of computing over tokens
in an order it does not read. A forward given ``sparse_params`` on a model configured ``regular`` is refused the
same way (a clear error, never a result over misread tokens).
"""

from __future__ import annotations

import re
from functools import partial

import torch
from diffusers.models.transformers.transformer_kandinsky import Kandinsky5Attention, Kandinsky5AttnProcessor

from ..core.layout import VideoGrid
from .base import (IMAGE_TO_VIDEO, TINY_TEXT_DIM, LoadRecipe, ModelFamily, TinyPipeline, numbered_roles,
                   register_hook)
from .hunyuan_video import tiny_hunyuan_vae

_SELF = re.compile(r"^visual_transformer_blocks\.(\d+)\.self_attention$")
_TINY_POOLED_DIM = 16

NABLA_REFUSAL = (
    "draft attention does not support Kandinsky 5 with attention_type='nabla' (its own NABLA sparse attention: the "
    "tokens run in an 8x8 'fractal' block order and every self-attention call builds a flex BlockMask from pooled "
    "q/k, so draft attention would have to replace a sparse attention the model was configured with, not a dense "
    "one). Draft attention supports the models with attention_type='regular' (Kandinsky 5.0 Lite 5 s). To run draft "
    "attention instead of NABLA, switch the model to full attention first "
    "(transformer.register_to_config(attention_type='regular'): the pipeline then passes no sparse_params); that "
    "changes the model's own attention, so compare the results")


def build_tiny_kandinsky5(seed: int = 0, num_layers: int = 2, heads: int = 2, visual_cond: bool = False,
                          attention_type: str = "regular"):
    """A tiny random-weight ``Kandinsky5T2VPipeline`` (``visual_cond``: an I2V-style transformer taking noise, image
    latents and a first-frame mask, 4 + 4 + 1 channels, as ``Kandinsky5I2VPipeline``), float32 on CPU, no text
    encoders. Head dim 32 (RoPE axes 8 + 12 + 12), one text block, ``num_layers`` visual blocks; the modulation
    layers (zero-initialised by diffusers, which would zero every attention branch) get random weights. The VAE is a
    tiny HunyuanVideo VAE (8x spatial, 4x temporal), so ``height x width`` pixels give ``height/16 x width/16``
    tokens per frame."""
    from diffusers import (FlowMatchEulerDiscreteScheduler, Kandinsky5I2VPipeline,
                           Kandinsky5T2VPipeline, Kandinsky5Transformer3DModel)
    from diffusers.models.transformers.transformer_kandinsky import Kandinsky5Modulation

    torch.manual_seed(seed + 1)
    tr = Kandinsky5Transformer3DModel(
        in_visual_dim=4, in_text_dim=TINY_TEXT_DIM, in_text_dim2=_TINY_POOLED_DIM, time_dim=32, out_visual_dim=4,
        patch_size=(1, 2, 2), model_dim=heads * 32, ff_dim=64, num_text_blocks=1, num_visual_blocks=num_layers,
        axes_dims=(8, 12, 12), visual_cond=visual_cond, attention_type=attention_type).eval()
    for m in tr.modules():
        if isinstance(m, Kandinsky5Modulation):
            torch.nn.init.normal_(m.out_layer.weight, std=0.1)
            torch.nn.init.normal_(m.out_layer.bias, std=0.5)
    vae = tiny_hunyuan_vae(seed)
    cls = Kandinsky5I2VPipeline if visual_cond else Kandinsky5T2VPipeline
    return cls(transformer=tr, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
               scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))


class KandinskyVisualFacts(ModelFamily):
    """What Kandinsky 5 and 6 share: channels-last visual latents ``[B, T, H, W, C]`` and a head dim that is the sum
    of the RoPE axes (their configs state no ``attention_head_dim``)."""

    def head_dim(self, transformer):
        return sum(transformer.config.axes_dims)  # (its config has no attention_head_dim)

    def grid(self, transformer, latents):
        p_t, p_h, p_w = transformer.config.patch_size
        _, t, h, w, _ = latents.shape  # channels last
        return VideoGrid(t // p_t, h // p_h, w // p_w)


class Kandinsky5Family(KandinskyVisualFacts):
    """Kandinsky 5.0 Video Lite / Pro with full attention: text only in cross-attention, tokens in tile order once
    per forward; NABLA refused (module docstring)."""

    name = "kandinsky5"
    title = "Kandinsky 5.0 Video"
    transformer_classes = ("Kandinsky5Transformer3DModel",)
    # as diffusers' Kandinsky 5.0 docs load them: every component in bfloat16 (Pro: with model CPU offload)
    pipelines = {"Kandinsky5T2VPipeline": LoadRecipe(torch.bfloat16, torch.bfloat16, torch.bfloat16),
                 # after denoising it renormalizes the first 4 latent frames by the next ones
                 # (normalize_first_frame): with fewer than 5 latent frames there are none, and the video is NaN
                 "Kandinsky5I2VPipeline": LoadRecipe(
                     torch.bfloat16, torch.bfloat16, torch.bfloat16, inputs=IMAGE_TO_VIDEO, min_frames=17,
                     min_frames_why="after denoising it renormalizes its first 4 latent frames by the following "
                                    "ones; with fewer than 5 latent frames there are none and its video is NaN")}
    other_pipelines = ("Kandinsky5T2IPipeline", "Kandinsky5I2IPipeline")  # one frame: an image
    default_fps = 24  # the docs export at 24 fps
    tiny_variants = {"tiny-kandinsky5": TinyPipeline(build_tiny_kandinsky5, "Kandinsky5T2VPipeline"),
                     "tiny-kandinsky5-i2v": TinyPipeline(partial(build_tiny_kandinsky5, visual_cond=True),
                                                         "Kandinsky5I2VPipeline")}
    cp_unsupported_because = "diffusers 0.42.1 has no context-parallel plan for it"

    def forward_grid(self, transformer, args, kwargs):
        if kwargs.get("sparse_params") is not None or (len(args) > 7 and args[7] is not None):
            raise ValueError(NABLA_REFUSAL)
        return super().forward_grid(transformer, args, kwargs)

    def roles(self, transformer, current):
        if transformer.config.attention_type == "nabla":
            raise ValueError(NABLA_REFUSAL)
        return numbered_roles(transformer, current, Kandinsky5Attention, _SELF, Kandinsky5AttnProcessor)

    def call_default(self, processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope, **kwargs):
        # Kandinsky5Attention.forward: processor(attn, x, encoder_hidden_states=, sparse_params=, rotary_emb=)
        return processor(attn, hidden_states, encoder_hidden_states=encoder_hidden_states, rotary_emb=rope, **kwargs)

    def tile_order_hooks(self, transformer, order):
        def tokens(module, args, out):  # [B, T, H, W, ...]: dims 1-3 are the tokens, flattened frame-major next
            return order.to_tiles(out.flatten(1, 3), 1).view(out.shape) if order.active else None

        def back(module, args):  # out_layer(visual_embed [B, T, H, W, D], text_embed, time_embed)
            if not order.active:
                return None
            x = args[0]
            return (order.from_tiles(x.flatten(1, 3), 1).view(x.shape),) + tuple(args[1:])

        register_hook(transformer.visual_embeddings, "post", tokens)
        register_hook(transformer.visual_rope_embeddings, "post", tokens)
        register_hook(transformer.out_layer, "pre", back)
        return True

    def tiny_prompt_kwargs(self, pipe, emb, text_len, valid_len, negative):
        # Qwen embeddings of one prompt (cu_seqlens [0, L]: the pipeline's variable-length prompt packing) and the
        # pooled CLIP embedding; without negative prompts, no CFG (the pipeline would encode its default one)
        lengths = torch.tensor([0, text_len], dtype=torch.int32)
        out = dict(prompt_embeds_qwen=emb(1, text_len, TINY_TEXT_DIM), prompt_embeds_clip=emb(1, _TINY_POOLED_DIM),
                   prompt_cu_seqlens=lengths)
        if negative:
            out.update(negative_prompt_embeds_qwen=emb(1, text_len, TINY_TEXT_DIM),
                       negative_prompt_embeds_clip=emb(1, _TINY_POOLED_DIM), negative_prompt_cu_seqlens=lengths)
        else:
            out["guidance_scale"] = 1.0
        return out

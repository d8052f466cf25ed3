"""Wan2.1 / Wan2.2 (``WanTransformer3DModel``): T2V, I2V, TI2V. Only ``blocks.<i>.attn1`` (video self-attention)
becomes sparse; ``attn2`` (text, and I2V image tokens) runs diffusers' ``WanAttnProcessor`` unchanged. The model's
own processor computes q, k, v and RoPE; draft attention replaces its ``dispatch_attention_fn`` call only
(``integration/routing.py``)."""

from __future__ import annotations

import re
from functools import partial

import torch
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor

from ..core.layout import VideoGrid
from .base import (IMAGE_TO_VIDEO, TINY_TEXT_DIM, AttentionRole, LoadRecipe, ModelFamily, TinyPipeline,
                   keep_or_default, permute_forward_argument, register_hook, register_tokens_back_hook)

_SELF = re.compile(r"^(\w+)\.(\d+)\.attn1$")


# The tiny Wan-architecture transformer (head dim 32) and VAE (8x spatial, 4x temporal compression, like the real
# one) that the tiny pipelines of every Wan-derived family share.
TINY_WAN_TRANSFORMER = dict(patch_size=(1, 2, 2), attention_head_dim=32, in_channels=16, out_channels=16,
                            text_dim=TINY_TEXT_DIM, freq_dim=32, ffn_dim=64, cross_attn_norm=True,
                            qk_norm="rms_norm_across_heads", rope_max_seq_len=64)


def tiny_wan_vae(seed: int):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True]).eval()


TINY_IMAGE_DIM = 32
"""Width of the tiny CLIP image encoder's tokens (the tiny I2V transformers' ``image_dim``)."""

# the real Wan I2V transformers split the image tokens off the context as all but its last 512 tokens (the text
# encoder's padded length, hardcoded in diffusers' WanAttnProcessor), so prompts of tiny I2V pipelines are that long
_I2V_TEXT_LEN = 512


def tiny_clip_vision(seed: int, with_projection: bool = False):
    """A tiny random-weight CLIP vision encoder (``CLIPVisionModel``, or ``CLIPVisionModelWithProjection`` as
    SkyReels-V2 declares it; width :data:`TINY_IMAGE_DIM`, 32x32 pixels in 8x8 patches: 17 tokens) and its image
    processor: the image path of Wan2.1 I2V and SkyReels-V2 I2V."""
    import transformers

    config = transformers.CLIPVisionConfig(hidden_size=TINY_IMAGE_DIM, intermediate_size=2 * TINY_IMAGE_DIM,
                                           projection_dim=TINY_IMAGE_DIM, num_hidden_layers=2, num_attention_heads=2,
                                           image_size=32, patch_size=8)
    torch.manual_seed(seed)
    model_class = transformers.CLIPVisionModelWithProjection if with_projection else transformers.CLIPVisionModel
    # transformers >= 5 names the torchvision-free processor CLIPImageProcessorPil (the plain name warns without
    # torchvision); both resize, crop and normalize the same way
    processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    processor = processor_class(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model_class(config).eval(), processor


def build_tiny_wan(seed: int = 0, num_layers: int = 2, heads: int = 2, two_experts: bool = False,
                   expand_timesteps: bool = False):
    """A tiny random-weight ``WanPipeline`` (Wan2.1 T2V; ``two_experts``: Wan2.2 A14B-style, two transformers with
    a boundary; ``expand_timesteps``: Wan2.2 TI2V-5B-style, per-token timesteps, image-to-video as
    ``WanImageToVideoPipeline``), float32 on CPU, no text encoder. Head dim 32; the VAE compresses 8x spatially and
    4x temporally."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    def transformer(s):
        torch.manual_seed(s)
        return WanTransformer3DModel(num_attention_heads=heads, num_layers=num_layers, **TINY_WAN_TRANSFORMER).eval()

    vae = tiny_wan_vae(seed)
    kwargs = dict(transformer=transformer(seed + 1), expand_timesteps=expand_timesteps)
    if two_experts:
        kwargs.update(transformer_2=transformer(seed + 2), boundary_ratio=0.5)
    return WanPipeline(tokenizer=None, text_encoder=None, vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), **kwargs)


def build_tiny_wan_i2v(seed: int = 0, num_layers: int = 2, heads: int = 2, image_encoder: bool = True,
                       two_experts: bool = False):
    """A tiny random-weight ``WanImageToVideoPipeline``: Wan2.1 I2V-style (a tiny CLIP image encoder whose tokens
    the transformer's cross-attention reads) or, with ``image_encoder=False`` and ``two_experts``, Wan2.2
    I2V-A14B-style (no image encoder, two transformers with a boundary). The transformer takes the noise, the
    first-frame mask and the image latents (16 + 4 + 16 channels); float32 on CPU, no text encoder."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanTransformer3DModel

    config = dict(TINY_WAN_TRANSFORMER, in_channels=36)
    if image_encoder:
        config.update(image_dim=TINY_IMAGE_DIM, added_kv_proj_dim=heads * TINY_WAN_TRANSFORMER["attention_head_dim"])

    def transformer(s):
        torch.manual_seed(s)
        return WanTransformer3DModel(num_attention_heads=heads, num_layers=num_layers, **config).eval()

    kwargs = dict(transformer=transformer(seed + 1))
    if image_encoder:
        kwargs["image_encoder"], kwargs["image_processor"] = tiny_clip_vision(seed + 3)
    if two_experts:
        kwargs.update(transformer_2=transformer(seed + 2), boundary_ratio=0.5)
    return WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=tiny_wan_vae(seed),
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), **kwargs)


class WanFamily(ModelFamily):
    """Wan2.1 and Wan2.2 (both experts): text only in cross-attention, diffusers' own context-parallel plan."""

    name = "wan"
    title = "Wan2.1 / Wan2.2"
    transformer_classes = ("WanTransformer3DModel",)
    grid_locals = ("post_patch_num_frames", "post_patch_height", "post_patch_width")
    pipelines = {
        # as diffusers' Wan docs load it: bfloat16 transformer(s) and text encoder, float32 VAE. A checkpoint with
        # expand_timesteps (Wan2.2 TI2V-5B, whose model_index.json names WanPipeline) does image-to-video as
        # WanImageToVideoPipeline, loaded the same way (diffusers PR #12006, the TI2V-5B model card)
        "WanPipeline": LoadRecipe(torch.bfloat16, torch.float32, torch.bfloat16,
                                  loads_as={"image": "WanImageToVideoPipeline"}, loads_as_if="expand_timesteps"),
        # the WanImageToVideoPipeline docstring example (Wan2.1 I2V): float32 CLIP image encoder and VAE, bfloat16
        # rest; Wan2.2 I2V-A14B has no image encoder and loads the same way
        "WanImageToVideoPipeline": LoadRecipe(torch.bfloat16, torch.float32, torch.bfloat16,
                                              component_dtypes=(("image_encoder", torch.float32),),
                                              inputs=IMAGE_TO_VIDEO),
    }
    other_pipelines = ("WanVideoToVideoPipeline", "LucyEditPipeline")
    default_fps = 16
    tiny_variants = {
        "tiny-wan": TinyPipeline(build_tiny_wan, "WanPipeline"),
        "tiny-wan22": TinyPipeline(partial(build_tiny_wan, two_experts=True), "WanPipeline"),
        "tiny-wan-i2v": TinyPipeline(build_tiny_wan_i2v, "WanImageToVideoPipeline"),
        "tiny-wan22-i2v": TinyPipeline(partial(build_tiny_wan_i2v, image_encoder=False, two_experts=True),
                                       "WanImageToVideoPipeline", {"boundary_ratio": 0.5}),
        "tiny-wan-ti2v": TinyPipeline(partial(build_tiny_wan, expand_timesteps=True), "WanPipeline",
                                      {"expand_timesteps": True}),
    }
    # the model's attention module and processor classes (Wan-derived families set their own)
    attention_class: type = WanAttention
    processor_class = WanAttnProcessor
    # block lists whose ``attn1`` is video self-attention; ``dense_layers`` counts them in this order
    self_attention_blocks: tuple[str, ...] = ("blocks",)

    def grid(self, transformer, latents):
        p_t, p_h, p_w = transformer.config.patch_size
        _, _, t, h, w = latents.shape
        return VideoGrid(t // p_t, h // p_h, w // p_w)

    def roles(self, transformer, current):
        offsets, start = {}, 0
        for blocks in self.self_attention_blocks:
            offsets[blocks], start = start, start + len(getattr(transformer, blocks))
        out = {}
        for name, module in transformer.named_modules():
            if isinstance(module, self.attention_class):
                m = _SELF.match(name)
                m = m if m is not None and m.group(1) in offsets else None
                video_self = m is not None and not module.is_cross_attention
                index = None if m is None else offsets[m.group(1)] + int(m.group(2))
                default = keep_or_default(current.get(f"{name}.processor"), self.processor_class)
                out[module] = AttentionRole(name, video_self, index, default,
                                            custom=not isinstance(default, self.processor_class))
        return out

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
            return permute_forward_argument(args, kwargs, 1, "timestep", order, dims=(1,))

        register_hook(transformer.patch_embedding, "post", patches)
        register_hook(transformer.rope, "post", rope)
        register_hook(transformer, "pre", per_token_timestep, with_kwargs=True)
        register_tokens_back_hook(transformer.proj_out, order)
        return True

    def tiny_prompt_kwargs(self, pipe, emb, text_len, valid_len, negative):
        transformer = next(t for t in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None))
                           if t is not None)
        if getattr(transformer.config, "image_dim", None) is not None:
            text_len = _I2V_TEXT_LEN
        out = dict(prompt_embeds=emb(1, text_len, TINY_TEXT_DIM))
        if negative:
            out["negative_prompt_embeds"] = emb(1, text_len, TINY_TEXT_DIM)
        return out

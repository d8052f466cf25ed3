"""HunyuanVideo-1.5 (``HunyuanVideo15Transformer3DModel``): the attention of its dual-stream blocks
(``transformer_blocks.<i>.attn``, 54 in the published models; ``dense_layers`` counts them) becomes sparse over
video tokens. The token refiner (``context_embedder.token_refiner``) is never touched.

What joins the video tokens in self-attention: one text block appended after them, which the model's forward packs
per item as ``[valid image, valid ByT5, valid MLLM, padded image, padded ByT5, padded MLLM]`` (image tokens: SigLIP
features of the I2V pipeline's image; the T2V pipeline passes zero image features, all marked padding), so the valid
tokens are always a prefix and the padding a suffix. The model passes that packed text mask ``[B, S_text]`` to every
block; diffusers' processor expands it to a square ``[B, 1, S, S]`` mask (query and key padding). We build only the
key mask ``[B, 1, 1, S]`` (S bytes instead of S^2: 13 GB per call at 720p) and zero the padded query rows ourselves,
which is what diffusers' attention (SDPA) gives for those all-masked rows: valid rows and padded rows then match it.

Tile order per forward: the image condition of I2V arrives as latent channels and the image tokens sit in the text
block, so nothing inside the forward indexes video tokens by position.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15AttnProcessor2_0

from ..core.layout import VideoGrid
from .base import (IMAGE_TO_VIDEO, TINY_TEXT_DIM, AttentionRole, LoadRecipe, ModelFamily, TextKeyMask, TinyPipeline,
                   guidance_from_guider, keep_or_default, register_sequence_tile_order_hooks)
from .hunyuan_video import call_with_image_rotary_emb

_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.attn$")

_TINY_LATENT_CHANNELS = 4
_TINY_BYT5_DIM = 16  # ByT5 (glyph) embedding width of the tiny pipelines
_TINY_BYT5_LEN, _TINY_BYT5_VALID = 8, 3  # a short quoted (glyph) text, the rest padding
_TINY_IMAGE_DIM = 16  # SigLIP feature width of the tiny pipelines


def project_streams(attn, video: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The last step of HunyuanVideo's processors (1.0 and 1.5): attention output ``[B, S, H*D]`` of the video and
    the text tokens through ``to_out`` and ``to_add_out`` (where the module has them)."""
    if getattr(attn, "to_out", None) is not None:
        video = attn.to_out[1](attn.to_out[0](video))
    if getattr(attn, "to_add_out", None) is not None:
        text = attn.to_add_out(text)
    return video, text


def _qkv(attn, x, projections, norms):
    """q, k, v ``[B, S, H, D]`` of one stream: projections, then the optional q/k norms."""
    q, k, v = (proj(x).unflatten(2, (attn.heads, -1)) for proj in projections)
    norm_q, norm_k = norms
    return (q if norm_q is None else norm_q(q)), (k if norm_k is None else norm_k(k)), v


def build_tiny_hunyuan_video15(seed: int = 0, num_layers: int = 2, heads: int = 2):
    """A tiny random-weight ``HunyuanVideo15Pipeline``, float32 on CPU, no text encoders, classifier-free guidance
    6.0 as the published guider. Head dim 32, patch 1; the VAE compresses 16x spatially and 4x temporally like the
    real one, so ``height x width`` pixels give ``height/16 x width/16`` tokens per frame."""
    from diffusers import (AutoencoderKLHunyuanVideo15, ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler,
                           HunyuanVideo15Pipeline, HunyuanVideo15Transformer3DModel)

    torch.manual_seed(seed + 1)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=2 * _TINY_LATENT_CHANNELS + 1, out_channels=_TINY_LATENT_CHANNELS, num_attention_heads=heads,
        attention_head_dim=32, num_layers=num_layers, num_refiner_layers=1, mlp_ratio=2.0, patch_size=1,
        patch_size_t=1, text_embed_dim=TINY_TEXT_DIM, text_embed_2_dim=_TINY_BYT5_DIM,
        image_embed_dim=_TINY_IMAGE_DIM, rope_axes_dim=(8, 12, 12), target_size=256,
    ).eval()
    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo15(latent_channels=_TINY_LATENT_CHANNELS, block_out_channels=(8,) * 5,
                                      layers_per_block=1).eval()
    return HunyuanVideo15Pipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
                                  scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), text_encoder_2=None,
                                  tokenizer_2=None, guider=ClassifierFreeGuidance(guidance_scale=6.0))


def build_tiny_hunyuan_video15_i2v(seed: int = 0, num_layers: int = 2, heads: int = 2):
    """A tiny random-weight ``HunyuanVideo15ImageToVideoPipeline``: the T2V pipeline's components plus a one-layer
    random SigLIP vision encoder (16 image tokens of width 16). The video size follows the image (target size 256):
    a 512 x 128 image gives 128 x 512 pixels, 8 x 32 tokens per frame."""
    from diffusers import HunyuanVideo15ImageToVideoPipeline
    from transformers import SiglipVisionConfig, SiglipVisionModel

    try:  # the PIL processor needs no torchvision
        from transformers import SiglipImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import SiglipImageProcessor as ImageProcessor

    components = build_tiny_hunyuan_video15(seed, num_layers, heads).components
    torch.manual_seed(seed + 2)
    encoder = SiglipVisionModel(SiglipVisionConfig(hidden_size=_TINY_IMAGE_DIM, intermediate_size=32,
                                                   num_hidden_layers=1, num_attention_heads=2, image_size=32,
                                                   patch_size=8)).eval()
    return HunyuanVideo15ImageToVideoPipeline(**components, image_encoder=encoder,
                                              feature_extractor=ImageProcessor(size={"height": 32, "width": 32}))


class HunyuanVideo15Family(ModelFamily):
    """HunyuanVideo-1.5 T2V / I2V: text (and I2V image) tokens appended after the video tokens, their padding a
    suffix (module docstring)."""

    name = "hunyuan_video15"
    title = "HunyuanVideo-1.5"
    transformer_classes = ("HunyuanVideo15Transformer3DModel",)
    text_position = "trailing"
    # its processor expands the text mask to [B, 1, S, S] (13 GB at 720p) before its attention call: the family
    # computes q, k, v itself and hands draft attention the key mask instead
    routes_attention_call = False
    grid_locals = ("post_patch_num_frames", "post_patch_height", "post_patch_width")
    # as diffusers' HunyuanVideo-1.5 docs load them: bfloat16 everywhere, VAE tiling (T2V and I2V are separate
    # checkpoints; the I2V pipeline sizes the video from its image and takes no height / width)
    pipelines = {"HunyuanVideo15Pipeline": LoadRecipe(torch.bfloat16, torch.bfloat16, torch.bfloat16,
                                                      vae_tiling=True),
                 "HunyuanVideo15ImageToVideoPipeline": LoadRecipe(torch.bfloat16, torch.bfloat16, torch.bfloat16,
                                                                  vae_tiling=True, inputs=IMAGE_TO_VIDEO)}
    other_pipelines = ()
    default_fps = 24  # 121 frames = 5 s, as the published model card describes its videos
    # the published (not distilled) checkpoints run classifier-free guidance (guider scale 6.0): negative prompts count
    takes_negative_prompt = True
    tiny_variants = {"tiny-hunyuan15": TinyPipeline(build_tiny_hunyuan_video15, "HunyuanVideo15Pipeline"),
                     "tiny-hunyuan15-i2v": TinyPipeline(build_tiny_hunyuan_video15_i2v,
                                                        "HunyuanVideo15ImageToVideoPipeline")}

    # diffusers 0.42.1 has no context-parallel plan for this model, and none was verified with draft attention
    cp_unsupported_because = (
        "diffusers has no context-parallel plan for it, and its forward packs each item's text and image tokens "
        "(valid first) and its processor masks the whole sequence, which a plan would have to split consistently")

    def __init__(self) -> None:
        self._key_mask = TextKeyMask()

    def grid(self, transformer, latents):
        p, p_t = transformer.config.patch_size, transformer.config.patch_size_t
        _, _, t, h, w = latents.shape
        return VideoGrid(t // p_t, h // p, w // p)

    def roles(self, transformer, current):
        out = {}
        for name, module in transformer.named_modules():
            if not isinstance(module, Attention):
                continue
            cur = current.get(f"{name}.processor")
            block = _BLOCK.match(name)
            if block:
                default = keep_or_default(cur, HunyuanVideo15AttnProcessor2_0)
                out[module] = AttentionRole(name, True, int(block.group(1)), default,
                                            custom=not isinstance(default, HunyuanVideo15AttnProcessor2_0))
            else:  # token refiner: plain self-attention over text
                out[module] = AttentionRole(name, False, None, keep_or_default(cur, AttnProcessor2_0))
        return out

    def self_attention(self, attn, hidden_states, encoder_hidden_states, attention_mask, rope, attend):
        # Steps 1-4 and 6 of diffusers' HunyuanVideo15AttnProcessor2_0; step 5 (attention) is `attend`.
        if encoder_hidden_states is None:
            raise ValueError("HunyuanVideo-1.5 video self-attention expects the text stream (encoder_hidden_states)")
        text_len = encoder_hidden_states.shape[1]
        query, key, value = _qkv(attn, hidden_states, (attn.to_q, attn.to_k, attn.to_v), (attn.norm_q, attn.norm_k))
        if rope is not None:
            query = apply_rotary_emb(query, rope, sequence_dim=1)
            key = apply_rotary_emb(key, rope, sequence_dim=1)
        eq, ek, ev = _qkv(attn, encoder_hidden_states, (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj),
                          (attn.norm_added_q, attn.norm_added_k))
        query, key, value = (torch.cat(p, dim=1) for p in ((query, eq), (key, ek), (value, ev)))

        key_mask = None if attention_mask is None else self._key_mask(attention_mask, hidden_states.shape[1])
        out = attend(query, key, value, text_len, key_mask)
        out = out.flatten(2, 3).to(query.dtype)

        video, text = out[:, :-text_len], out[:, -text_len:]
        if attention_mask is not None:  # padded text queries: all-masked rows, which diffusers' attention zeroes
            text = text * attention_mask[:, :, None].to(text.dtype)
        return project_streams(attn, video, text)

    def call_default(self, processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope, **kwargs):
        return call_with_image_rotary_emb(processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope,
                                          **kwargs)

    def tile_order_hooks(self, transformer, order):
        # x_embedder: [B, S, C]; rope: (cos, sin), each [S, D]
        register_sequence_tile_order_hooks(order, transformer.x_embedder, transformer.proj_out, transformer.rope)
        return True

    def pipeline_kwargs(self, pipe, kwargs):  # guidance comes from the pipelines' guider
        return guidance_from_guider(pipe, kwargs)

    def tiny_prompt_kwargs(self, pipe, emb, text_len, valid_len, negative):
        def prompt(prefix: str) -> dict[str, Any]:
            mask = torch.zeros(1, text_len)
            mask[:, : text_len if valid_len is None else valid_len] = 1
            mask_2 = torch.zeros(1, _TINY_BYT5_LEN)
            mask_2[:, :_TINY_BYT5_VALID] = 1
            return {f"{prefix}prompt_embeds": emb(1, text_len, TINY_TEXT_DIM), f"{prefix}prompt_embeds_mask": mask,
                    f"{prefix}prompt_embeds_2": emb(1, _TINY_BYT5_LEN, _TINY_BYT5_DIM),
                    f"{prefix}prompt_embeds_mask_2": mask_2}

        kwargs = prompt("")
        guider = pipe.guider
        if negative or (guider._enabled and guider.num_conditions > 1):  # CFG needs them: there is no text encoder
            kwargs.update(prompt("negative_"))
        return kwargs

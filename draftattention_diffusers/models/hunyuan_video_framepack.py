"""HunyuanVideo FramePack (``HunyuanVideoFramepackTransformer3DModel``, ``HunyuanVideoFramepackPipeline``: image to
video, section by section). Its blocks are HunyuanVideo's (``transformer_blocks.<i>.attn``,
``single_transformer_blocks.<i>.attn``, ``HunyuanVideoAttnProcessor2_0``), over one sequence per forward:

    [history 4x | history 2x | clean latents | current window | SigLIP image tokens + text]

Only the current window (the forward's ``hidden_states``) is the video grid and becomes sparse; the history and clean
tokens before it and the image and text tokens after it stay dense (queries and keys). ``video_start`` is the
post-patch token count of the history and clean latents, read from the forward's arguments; the router hands draft
attention ``[window | before | after]`` and puts the output back, so the model's key mask (``[B, 1, 1, S]``, padded
text at the very end, batch > 1 only: with one video the model cuts the padded text instead) stays a suffix mask.
The token refiner's attention is never touched. The model's own processor computes q, k, v, RoPE and the output
projections; draft attention replaces its ``dispatch_attention_fn`` call only.

Tokens are gathered per call (no tile-order hooks): the model's RoPE module also builds the history and clean tables
(down-sampled from row-major grids), and the forward keeps the window by position (``hidden_states[:,
-original_context_length:]``). The grid of a forward discovered mid-call (a bare ``set_attn_processor``) is not read
from its locals: without ``video_start`` the window's position is unknown, so that forward runs dense, visibly.

The step: ``HunyuanVideoFramepackPipeline`` denoises each section of the video from noise with its own
``retrieve_timesteps`` call, so the scheduler's ``step_index`` restarts per section; "step" is the denoising step
within the current section (of ``num_inference_steps``), and every section has its own dense warm-up steps (a section
is a whole denoising run). The statistics cover the whole call (``section_loops``: the pipeline's section index is
its ``k``), section by section in ``summary()["sections"]``.

Checked against diffusers 0.42.1 ``models/transformers/transformer_hunyuan_video_framepack.py`` (``forward``: the
history patch embedder ``clean_x_embedder`` with kernels (1, 2, 2), (2, 4, 4) and (4, 8, 8), the last two after
replicate padding to multiples of the kernel; ``_pack_history_states`` prepends clean, then 2x, then 4x tokens, each
only where its latents and indices are given; the image projection before the text, the mask built as a prefix of
ones of each item's valid length for batch > 1, None for batch 1) and ``pipelines/hunyuan_video/
pipeline_hunyuan_video_framepack.py`` (one ``retrieve_timesteps`` per section).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

from ..core.layout import VideoGrid
from .base import TINY_TEXT_DIM, ModelFamily, TinyPipeline
from .chronoedit import _tiny_image
from .hunyuan_video import HunyuanVideoFamily, call_with_image_rotary_emb

# HunyuanVideoFramepackTransformer3DModel.forward's positional parameters
_FORWARD_ARGS = ("hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask", "pooled_projections",
                 "image_embeds", "indices_latents", "guidance", "latents_clean", "indices_latents_clean",
                 "latents_history_2x", "indices_latents_history_2x", "latents_history_4x",
                 "indices_latents_history_4x")
# (latents, indices, patch kernel (t, h, w), padded to the kernel first) of HunyuanVideoHistoryPatchEmbed
_PREFIX = (("latents_clean", "indices_latents_clean", (1, 2, 2), False),
           ("latents_history_2x", "indices_latents_history_2x", (2, 4, 4), True),
           ("latents_history_4x", "indices_latents_history_4x", (4, 8, 8), True))

_TINY_POOLED_DIM = 16
_TINY_IMAGE_DIM = 32


def prefix_tokens(given: dict[str, Any]) -> int:
    """Tokens before the current window in a FramePack forward's self-attention sequence: the patch-embedded clean,
    2x and 4x history latents (``[B, C, T, H, W]``) that the forward packs (those given with their indices)."""
    total = 0
    for latents, indices, kernel, padded in _PREFIX:
        x = given.get(latents)
        if x is None or given.get(indices) is None:
            continue
        dims = x.shape[2:]
        total += int(torch.Size([-(-d // k) if padded else d // k for d, k in zip(dims, kernel)]).numel())
    return total


def _tiny_siglip(seed: int):
    """A tiny random-weight SigLIP vision encoder (width 32, 32x32 pixels in 8x8 patches: 16 tokens) and its image
    processor: FramePack's image-conditioning path."""
    import transformers

    config = transformers.SiglipVisionConfig(hidden_size=_TINY_IMAGE_DIM, intermediate_size=2 * _TINY_IMAGE_DIM,
                                             num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    torch.manual_seed(seed)
    processor_class = getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor
    return transformers.SiglipVisionModel(config).eval(), processor_class(size={"height": 32, "width": 32})


def build_tiny_framepack(seed: int = 0, num_layers: int = 2, heads: int = 2):
    """A tiny random-weight ``HunyuanVideoFramepackPipeline`` (its latent output is a list: the history after each
    section, the last one the whole video), float32 on CPU, no text encoders (prompt embeddings
    given), a tiny SigLIP image encoder; the transformer has the history embedder and image projection of the
    released FramePack models (head dim 32; RoPE 8/12/12); HunyuanVideo's tiny VAE (8x spatial, 4x temporal)."""
    from diffusers import (FlowMatchEulerDiscreteScheduler, HunyuanVideoFramepackPipeline,
                           HunyuanVideoFramepackTransformer3DModel)

    from .hunyuan_video import _tiny_hunyuan_parts

    _, vae = _tiny_hunyuan_parts(seed, num_layers, heads)
    torch.manual_seed(seed + 1)
    transformer = HunyuanVideoFramepackTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=heads, attention_head_dim=32,
        num_layers=max(1, num_layers // 2), num_single_layers=max(1, num_layers - num_layers // 2),
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=TINY_TEXT_DIM, pooled_projection_dim=_TINY_POOLED_DIM, rope_axes_dim=(8, 12, 12),
        has_image_proj=True, image_proj_dim=_TINY_IMAGE_DIM, has_clean_x_embedder=True).eval()
    image_encoder, feature_extractor = _tiny_siglip(seed)
    return HunyuanVideoFramepackPipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
                                         scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), text_encoder_2=None,
                                         tokenizer_2=None, image_encoder=image_encoder,
                                         feature_extractor=feature_extractor)


class HunyuanVideoFramepackFamily(ModelFamily):
    """FramePack (FramePackI2V_HY, FramePack-F1): the current window sparse between a dense history prefix and the
    dense image and text tokens."""

    name = "hunyuan_video_framepack"
    title = "HunyuanVideo FramePack"
    transformer_classes = ("HunyuanVideoFramepackTransformer3DModel",)
    processor_class = HunyuanVideoAttnProcessor2_0  # (legacy Attention modules declare no default processor)
    text_position = "trailing"  # image + text after the window; video_start says where the window starts
    # The pipeline is assembled from three repositories (the transformer, FlowRedux's SigLIP image encoder and
    # HunyuanVideo's other components; diffusers' FramePack docs): the Python API serves it, the command line does not
    pipelines = {}
    other_pipelines = ("HunyuanVideoFramepackPipeline",)
    section_loops = {"HunyuanVideoFramepackPipeline": "k"}  # for k in range(num_latent_sections): retrieve_timesteps
    default_fps = 30  # diffusers' FramePack docs export at 30 fps
    takes_negative_prompt = False
    negative_prompt_note = "FramePack is guidance-distilled and runs without a negative prompt here"
    tiny_variants = {"tiny-framepack": TinyPipeline(build_tiny_framepack, "HunyuanVideoFramepackPipeline")}
    # one section of 2 latent frames of 8 x 32 tokens (two 8x16 regions side by side) after a 640-token prefix
    # (clean 2 x 8 x 32, 2x history 1 x 4 x 16, 4x history 4 x 2 x 8); the image is the pipeline's required input
    tiny_call = dict(image=_tiny_image(), height=128, width=512, num_frames=5, latent_window_size=2)
    cp_unsupported_because = "diffusers 0.42.1 has no context-parallel plan for HunyuanVideoFramepackTransformer3DModel"

    def grid(self, transformer, latents):  # the current window [B, C, T, H, W]
        p, p_t = transformer.config.patch_size, transformer.config.patch_size_t
        _, _, t, h, w = latents.shape
        return VideoGrid(t // p_t, h // p, w // p)

    def video_start(self, transformer, args, kwargs):
        return prefix_tokens({**dict(zip(_FORWARD_ARGS, args)), **kwargs})

    def roles(self, transformer, current):
        return HunyuanVideoFamily.roles(self, transformer, current)  # the same blocks and refiner as HunyuanVideo

    def call_default(self, processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope, **kwargs):
        return call_with_image_rotary_emb(processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope,
                                          **kwargs)

    def tiny_prompt_kwargs(self, pipe, emb, text_len, valid_len, negative):
        mask = torch.zeros(1, text_len, dtype=torch.long)
        mask[:, : text_len if valid_len is None else valid_len] = 1
        return dict(prompt_embeds=emb(1, text_len, TINY_TEXT_DIM), pooled_prompt_embeds=emb(1, _TINY_POOLED_DIM),
                    prompt_attention_mask=mask)

"""HunyuanVideo (``HunyuanVideoTransformer3DModel``): the attention of the dual-stream blocks
(``transformer_blocks.<i>.attn``) and single-stream blocks (``single_transformer_blocks.<i>.attn``) becomes sparse
over video tokens; the text tokens (appended after the video) attend and are attended densely, padded text keys
never. The token refiner (``context_embedder.token_refiner``) is never touched.

``dense_layers`` indices count the dual-stream blocks first, then the single-stream ones (0..19, 20..59 for the
published model). The model's own processor computes q, k, v, RoPE and the output projections; draft attention
replaces its ``dispatch_attention_fn`` call only (``integration/routing.py``)."""

from __future__ import annotations

import re
from typing import Any

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

from ..core.layout import VideoGrid
from .base import (IMAGE_TO_VIDEO, TINY_TEXT_DIM, AttentionRole, LoadRecipe, ModelFamily, TinyPipeline,
                   keep_or_default, register_sequence_tile_order_hooks)

_DUAL = re.compile(r"^transformer_blocks\.(\d+)\.attn$")
_SINGLE = re.compile(r"^single_transformer_blocks\.(\d+)\.attn$")


def call_with_image_rotary_emb(processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope,
                               **kwargs):
    """Call a HunyuanVideo-style processor as the model does (RoPE as ``image_rotary_emb``)."""
    if rope is not None:
        kwargs["image_rotary_emb"] = rope
    return processor(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)


def hunyuan_video_cp_plan() -> dict[str, Any]:
    """The context-parallel plan ``HunyuanVideoTransformer3DModel`` lacks in diffusers 0.42.1, for use with draft
    attention.

    It splits the video tokens (output of ``x_embedder``, ``[B, S_video, C]``), their RoPE tables (output of
    ``rope``, two ``[S_video, D]``) and the refined text tokens (output of ``context_embedder``, ``[B, S_text, C]``)
    along the sequence, and gathers the output of ``proj_out``. The token refiner still sees the whole prompt.

    Use it only with draft attention enabled on the transformer (any sparsity, or ``dense_steps_fraction=1.0`` for
    plain dense attention): the model's own key mask is wrong under this split when the prompt is padded, and
    :class:`~draftattention_diffusers.DraftAttnProcessor` rebuilds it (diffusers' own processor does not).

    Example:
        >>> from diffusers import ContextParallelConfig                                    # doctest: +SKIP
        >>> enable_draft_attention(pipe, sparsity=0.9)                                     # doctest: +SKIP
        >>> pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2),
        ...                                     cp_plan=hunyuan_video_cp_plan())           # doctest: +SKIP

    Requirements (checked at the first forward, ``ValueError`` otherwise): video tokens, the 256 text slots and the
    24 heads divisible by the Ulysses degree, unless ``ContextParallelConfig(ulysses_anything=True)``; not
    ``image_condition_type="token_replace"`` (its blocks slice the first frame by position).
    """
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    seq = ContextParallelInput(split_dim=1, expected_dims=3, split_output=True)
    rope = ContextParallelInput(split_dim=0, expected_dims=2, split_output=True)
    return {
        "x_embedder": {0: seq},
        "context_embedder": {0: seq},
        "rope": {0: rope, 1: rope},
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


_TINY_POOLED_DIM = 16


def tiny_hunyuan_vae(seed: int):
    """A tiny random-weight HunyuanVideo VAE (4 latent channels; 8x spatial, 4x temporal compression), shared by the
    tiny pipelines of the families that decode with it (HunyuanVideo, Kandinsky 5 and 6)."""
    from diffusers import AutoencoderKLHunyuanVideo

    torch.manual_seed(seed)
    return AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4, up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, act_fn="silu", norm_num_groups=4,
        scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=4,
        mid_block_add_attention=False).eval()


def _tiny_hunyuan_parts(seed: int, num_layers: int, heads: int, **transformer_config):
    """The tiny transformer (``num_layers`` blocks split between dual-stream, half and at least 1, and
    single-stream, the rest and at least 1; head dim 32; 4 latent channels unless ``transformer_config`` says)
    and VAE (8x spatial, 4x temporal compression) of the tiny HunyuanVideo pipelines."""
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(seed + 1)
    tr = HunyuanVideoTransformer3DModel(**{
        **dict(in_channels=4, out_channels=4, num_attention_heads=heads, attention_head_dim=32,
               num_layers=max(1, num_layers // 2), num_single_layers=max(1, num_layers - num_layers // 2),
               num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1, qk_norm="rms_norm",
               guidance_embeds=True, text_embed_dim=TINY_TEXT_DIM, pooled_projection_dim=_TINY_POOLED_DIM,
               rope_theta=256.0, rope_axes_dim=(8, 12, 12)),
        **transformer_config}).eval()
    vae = tiny_hunyuan_vae(seed)
    return tr, vae


def build_tiny_hunyuan_video(seed: int = 0, num_layers: int = 2, heads: int = 2):
    """A tiny random-weight ``HunyuanVideoPipeline``, float32 on CPU, no text encoders (:func:`_tiny_hunyuan_parts`:
    head dim 32; the VAE compresses 8x spatially and 4x temporally)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline

    tr, vae = _tiny_hunyuan_parts(seed, num_layers, heads)
    return HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=tr, vae=vae,
                                scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
                                text_encoder_2=None, tokenizer_2=None)


def build_tiny_hunyuan_video_i2v(seed: int = 0, num_layers: int = 2, heads: int = 2,
                                 image_condition_type: str = "token_replace"):
    """A tiny random-weight ``HunyuanVideoImageToVideoPipeline``, float32 on CPU, no text or image encoders (the
    prompt embeddings, which the real pipeline draws from the image and the text, are given). ``token_replace``
    (the released HunyuanVideo-I2V: the first latent frame is the image's, its tokens at timestep 0; draft attention
    then gathers per call) or ``latent_concat`` (HunyuanVideo-I2V-33ch: noise, image latents and a mask, 4 + 4 + 1
    channels here)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoImageToVideoPipeline

    channels = 4 if image_condition_type == "token_replace" else 2 * 4 + 1
    tr, vae = _tiny_hunyuan_parts(seed, num_layers, heads, in_channels=channels,
                                  image_condition_type=image_condition_type)
    return HunyuanVideoImageToVideoPipeline(text_encoder=None, tokenizer=None, transformer=tr, vae=vae,
                                            scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
                                            text_encoder_2=None, tokenizer_2=None, image_processor=None)


class HunyuanVideoFamily(ModelFamily):
    """HunyuanVideo: text tokens appended to the video tokens in every block's self-attention (padded prompts
    masked), and a context-parallel plan of our own (:func:`hunyuan_video_cp_plan`)."""

    name = "hunyuan_video"
    title = "HunyuanVideo"
    transformer_classes = ("HunyuanVideoTransformer3DModel",)
    processor_class = HunyuanVideoAttnProcessor2_0  # (legacy Attention modules declare no default processor)
    text_position = "trailing"
    grid_locals = ("post_patch_num_frames", "post_patch_height", "post_patch_width")
    # as diffusers' HunyuanVideo docs and the HunyuanVideoImageToVideoPipeline docstring example load them:
    # bfloat16 transformer, float16 rest, VAE tiling
    pipelines = {"HunyuanVideoPipeline": LoadRecipe(torch.bfloat16, torch.float16, torch.float16, vae_tiling=True),
                 "HunyuanVideoImageToVideoPipeline": LoadRecipe(torch.bfloat16, torch.float16, torch.float16,
                                                                vae_tiling=True, inputs=IMAGE_TO_VIDEO)}
    other_pipelines = ("HunyuanSkyreelsImageToVideoPipeline",)
    default_fps = 24
    # HunyuanVideoPipeline uses a negative prompt only with true_cfg_scale > 1
    takes_negative_prompt = False
    negative_prompt_note = "HunyuanVideo is guidance-distilled and runs without a negative prompt here"
    tiny_variants = {"tiny-hunyuan": TinyPipeline(build_tiny_hunyuan_video, "HunyuanVideoPipeline"),
                     "tiny-hunyuan-i2v": TinyPipeline(build_tiny_hunyuan_video_i2v,
                                                      "HunyuanVideoImageToVideoPipeline")}
    cp_splits_text = True
    text_mask_argument = "encoder_attention_mask"
    cp_plan_hint = "for HunyuanVideo pass cp_plan=hunyuan_video_cp_plan() to enable_parallelism"
    cp_disable_warning = ("draft attention was disabled on a HunyuanVideo transformer under context parallelism: "
                          "diffusers' own processor does not rebuild the key mask of a split padded prompt "
                          "(hunyuan_video_cp_plan), so padded text keys are attended; keep draft attention "
                          "enabled (dense_steps_fraction=1.0 for dense attention)")

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

    def call_default(self, processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope, **kwargs):
        return call_with_image_rotary_emb(processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope,
                                          **kwargs)

    def tile_order_hooks(self, transformer, order):
        if getattr(transformer.config, "image_condition_type", None) == "token_replace":
            return False  # its blocks slice the first frame's tokens by position

        # x_embedder: [B, S, C]; rope: (cos, sin), each [S, D]
        register_sequence_tile_order_hooks(order, transformer.x_embedder, transformer.proj_out, transformer.rope)
        return True

    def cp_plan(self):
        return hunyuan_video_cp_plan()

    def cp_refusal(self, transformer):
        if getattr(transformer.config, "image_condition_type", None) == "token_replace":
            return ("draft attention under context parallelism does not support HunyuanVideo with "
                    "image_condition_type='token_replace': its blocks slice the first frame's tokens by position, "
                    "which a rank's share of the sequence does not hold")
        return None

    def tiny_prompt_kwargs(self, pipe, emb, text_len, valid_len, negative):
        mask = torch.zeros(1, text_len, dtype=torch.long)
        mask[:, : text_len if valid_len is None else valid_len] = 1
        return dict(prompt_embeds=emb(1, text_len, TINY_TEXT_DIM), pooled_prompt_embeds=emb(1, _TINY_POOLED_DIM),
                    prompt_attention_mask=mask)

"""CogVideoX and CogVideoX 1.5 (``CogVideoXTransformer3DModel``): every block's ``transformer_blocks.<i>.attn1`` is
joint self-attention over ``[text, video]`` (the text tokens come *first*) and becomes sparse over the video tokens;
the text tokens attend and are attended densely (the prompt is never padded-masked: CogVideoX attends to all 226
text slots).

Leading text: our :meth:`CogVideoXFamily.self_attention` concatenates the two streams itself, so it builds q, k, v
in the order ``[video, text]`` and hands ``attend`` trailing text, then splits the output back. Attention is
equivariant to the order of the tokens it is given, and every other layer of the block treats the streams
separately, so this costs no extra copy and ``core/`` keeps one layout (video, then text).

Token grid: the latents are ``[B, F, C, H, W]``; CogVideoX patches ``2x2`` in space and, from version 1.5
(``patch_size_t=2``), 2 latent frames in time, frame-major then row-major like Wan.

Tile order once per forward: the video tokens are reordered at the output of ``patch_embed`` (after the sincos /
learned positional embeddings of CogVideoX-2B and 5B-I2V were added there, in diffusers' order), the RoPE tables
arrive as the forward argument ``image_rotary_emb`` (``[S_video, D]`` each, permuted by a pre-hook), and the tokens go
back to diffusers' order before ``proj_out``.

What "step" means: CogVideoX's own schedulers (``CogVideoXDDIMScheduler``, ``CogVideoXDPMScheduler``) keep no
``step_index``, so the step is the pipeline loop's ``i`` of ``len(timesteps)`` (``pipeline_loop_step``).
"""

from __future__ import annotations

import re
from functools import partial

import torch
from diffusers.models.attention_processor import (Attention, CogVideoXAttnProcessor2_0,
                                                  FusedCogVideoXAttnProcessor2_0)
from diffusers.models.embeddings import apply_rotary_emb

from ..core.layout import VideoGrid
from .base import (IMAGE_TO_VIDEO, SDPA_CP_UNSUPPORTED, TINY_TEXT_DIM, LoadRecipe, ModelFamily, TinyPipeline,
                   numbered_roles, pipeline_loop_step, register_hook, register_tokens_back_hook)

_SELF = re.compile(r"^transformer_blocks\.(\d+)\.attn1$")
_OWN_PROCESSORS = (CogVideoXAttnProcessor2_0, FusedCogVideoXAttnProcessor2_0)  # the model's own (fused or not)


def build_tiny_cogvideox(seed: int = 0, num_layers: int = 2, heads: int = 2, version: str = "1.0",
                         rotary: bool = True):
    """A tiny random-weight ``CogVideoXPipeline``, float32 on CPU, no text encoder (prompts of 16 tokens).

    ``version="1.0"``: CogVideoX-5B-style (RoPE, 2x2 patches, ``CogVideoXDDIMScheduler``); ``rotary=False`` gives
    CogVideoX-2B-style (sincos positional embeddings added inside ``patch_embed``, no RoPE). ``version="1.5"``:
    CogVideoX1.5-style (2x2x2 patches: 2 latent frames per token, ``CogVideoXDPMScheduler``). Head dim 32; the VAE
    compresses 8x spatially and 4x temporally like the real one, so 128x512 pixels give 8x32 tokens per frame."""
    from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXPipeline,
                           CogVideoXTransformer3DModel)

    if version not in ("1.0", "1.5"):
        raise ValueError(f"version={version!r}: expected '1.0' or '1.5'")
    v15 = version == "1.5"
    torch.manual_seed(seed + 1)
    # sample_* (latent pixels) are the RoPE base grid: 1.5's RoPE grid is a slice of it, so it must be large enough
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=32, in_channels=4, out_channels=4, time_embed_dim=32,
        text_embed_dim=TINY_TEXT_DIM, num_layers=num_layers, sample_height=256 if v15 else 16,
        sample_width=256 if v15 else 64, sample_frames=9, patch_size=2, patch_size_t=2 if v15 else None,
        patch_bias=not v15, max_text_seq_length=16, use_rotary_positional_embeddings=rotary or v15,
    ).eval()
    torch.manual_seed(seed)
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4, invert_scale_latents=v15,
    ).eval()
    # the published scheduler settings (v-prediction, zero terminal SNR, trailing timesteps)
    scheduler_cls = CogVideoXDPMScheduler if v15 else CogVideoXDDIMScheduler
    scheduler = scheduler_cls(prediction_type="v_prediction", rescale_betas_zero_snr=True, clip_sample=False,
                              timestep_spacing="trailing", snr_shift_scale=1.0)
    return CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)


def build_tiny_cogvideox_i2v(seed: int = 0, num_layers: int = 2, heads: int = 2):
    """A tiny random-weight ``CogVideoXImageToVideoPipeline``, CogVideoX-5B-I2V-style: the transformer takes the
    noise and the image latents (4 + 4 channels), RoPE and learned positional embeddings (random, not the sincos
    table). Like the real one it runs at its sample size only (learned embeddings): 256 x 512 pixels, 16 x 32 tokens
    per frame (the command line's default size for tiny models); the other components are the T2V pipeline's."""
    from diffusers import CogVideoXImageToVideoPipeline, CogVideoXTransformer3DModel

    components = build_tiny_cogvideox(seed, num_layers, heads).components
    torch.manual_seed(seed + 2)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=32, in_channels=8, out_channels=4, time_embed_dim=32,
        text_embed_dim=TINY_TEXT_DIM, num_layers=num_layers, sample_height=32, sample_width=64, sample_frames=9,
        patch_size=2, max_text_seq_length=16, use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=True).eval()
    torch.nn.init.normal_(transformer.patch_embed.pos_embedding)  # learned: not the sincos table
    return CogVideoXImageToVideoPipeline(**{**components, "transformer": transformer})


def patch_sizes(transformer) -> tuple[int, int]:
    """(spatial, temporal) patch size of a CogVideoX-style transformer; ``patch_size_t`` is None (CogVideoX 1.0) or
    absent from the config (ConsisID) where tokens cover one latent frame."""
    config = transformer.config
    return config.patch_size, getattr(config, "patch_size_t", None) or 1


class CogVideoXFamily(ModelFamily):
    """CogVideoX (2B, 5B; T2V, I2V, V2V, Fun-Control) and CogVideoX 1.5: text tokens before the video tokens in
    every block's self-attention, no context-parallel plan."""

    name = "cogvideox"
    title = "CogVideoX"
    transformer_classes = ("CogVideoXTransformer3DModel",)
    text_position = "leading"
    # its processor calls F.scaled_dot_product_attention itself: nothing to route
    routes_attention_call = False
    # as diffusers' CogVideoX docs and the 5B model cards load it: bfloat16 throughout, VAE tiling
    # (CogVideoX-2B's card recommends float16; bfloat16 also runs it); image-to-video is its own checkpoint
    # (CogVideoX-5b-I2V, whose card loads it the same way)
    pipelines = {"CogVideoXPipeline": LoadRecipe(torch.bfloat16, torch.bfloat16, torch.bfloat16, vae_tiling=True),
                 "CogVideoXImageToVideoPipeline": LoadRecipe(torch.bfloat16, torch.bfloat16, torch.bfloat16,
                                                             vae_tiling=True, inputs=IMAGE_TO_VIDEO)}
    other_pipelines = ("CogVideoXVideoToVideoPipeline", "CogVideoXFunControlPipeline")
    default_fps = 8  # CogVideoX 1.0 (diffusers' examples export at 8 fps); the 1.5 preset says 16
    tiny_variants = {"tiny-cogvideox": TinyPipeline(build_tiny_cogvideox, "CogVideoXPipeline"),
                     "tiny-cogvideox15": TinyPipeline(partial(build_tiny_cogvideox, version="1.5"),
                                                      "CogVideoXPipeline"),
                     "tiny-cogvideox-i2v": TinyPipeline(build_tiny_cogvideox_i2v, "CogVideoXImageToVideoPipeline")}

    # diffusers 0.42.1 has no context-parallel plan for this model (its processor calls
    # F.scaled_dot_product_attention directly), and none was verified with draft attention
    cp_unsupported_because = SDPA_CP_UNSUPPORTED

    rope_argument_index = 5
    """Position of ``image_rotary_emb`` among the transformer forward's parameters (ConsisID: 4)."""

    def grid(self, transformer, latents):
        p, p_t = patch_sizes(transformer)
        _, f, _, h, w = latents.shape  # [B, F, C, H, W]
        return VideoGrid(f // p_t, h // p, w // p)

    def grid_from_locals(self, transformer, frame_locals):
        # the forward's locals hold the latent sizes before patching
        dims = [frame_locals.get(n) for n in ("num_frames", "height", "width")]
        if not all(isinstance(d, int) and d > 0 for d in dims):
            return None
        p, p_t = patch_sizes(transformer)
        return VideoGrid(dims[0] // p_t, dims[1] // p, dims[2] // p)

    def roles(self, transformer, current):
        return numbered_roles(transformer, current, Attention, _SELF, CogVideoXAttnProcessor2_0, _OWN_PROCESSORS)

    def self_attention(self, attn, hidden_states, encoder_hidden_states, attention_mask, rope, attend):
        # diffusers' CogVideoXAttnProcessor2_0 with the tokens as [video, text] instead of [text, video]
        if attention_mask is not None:
            raise ValueError("draft attention does not support an attention_mask on CogVideoX self-attention (the "
                             "model passes none; one in attention_kwargs would index [text, video] tokens)")
        video_len = hidden_states.shape[1]
        x = torch.cat([hidden_states, encoder_hidden_states], dim=1)
        if getattr(attn, "fused_projections", False):  # fuse_qkv_projections(): FusedCogVideoXAttnProcessor2_0
            q, k, v = attn.to_qkv(x).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in (q, k, v))  # [B, S, H, D]
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if rope is not None:  # RoPE on the video tokens only
            q = torch.cat([apply_rotary_emb(q[:, :video_len], rope, sequence_dim=1), q[:, video_len:]], dim=1)
            k = torch.cat([apply_rotary_emb(k[:, :video_len], rope, sequence_dim=1), k[:, video_len:]], dim=1)
        out = attend(q, k, v, x.shape[1] - video_len, None)
        out = attn.to_out[1](attn.to_out[0](out.flatten(2, 3).type_as(q)))
        return out[:, :video_len], out[:, video_len:]

    def call_default(self, processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope, **kwargs):
        return processor(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb=rope, **kwargs)

    def tile_order_hooks(self, transformer, order):
        def patches(module, args, out):  # [B, S_text + S_video, C]; args: (text_embeds, image_embeds)
            if not order.active:
                return None
            text_len = args[0].shape[1]
            return torch.cat([out[:, :text_len], order.to_tiles(out[:, text_len:], 1)], dim=1)

        def rope(module, args, kwargs=None):  # forward argument image_rotary_emb: (cos, sin), each [S_video, D]
            if not order.active or kwargs is None:  # (None: removed while this forward's hooks were running)
                return None

            def permuted(tables):
                return tuple(order.to_tiles(t, 0) for t in tables)

            if kwargs.get("image_rotary_emb") is not None:
                return args, {**kwargs, "image_rotary_emb": permuted(kwargs["image_rotary_emb"])}
            i = self.rope_argument_index
            if len(args) > i and args[i] is not None:  # passed positionally
                return args[:i] + (permuted(args[i]),) + tuple(args[i + 1:]), kwargs
            return None

        register_hook(transformer.patch_embed, "post", patches)
        register_hook(transformer, "pre", rope, with_kwargs=True)
        register_tokens_back_hook(transformer.proj_out, order)
        return True

    # its DDIM / DPM schedulers keep no step_index: the step is the denoising loop's i of len(timesteps)
    pipeline_step = pipeline_loop_step

    def tiny_prompt_kwargs(self, pipe, emb, text_len, valid_len, negative):
        out = dict(prompt_embeds=emb(1, text_len, TINY_TEXT_DIM))
        if negative:
            out["negative_prompt_embeds"] = emb(1, text_len, TINY_TEXT_DIM)
        return out

"""LTX-2 (``LTX2VideoTransformer3DModel``, audio + video): each block has six attentions; only the video
self-attention ``transformer_blocks.<i>.attn1`` becomes sparse. Audio self-attention (``audio_attn1``), the text
cross-attentions (``attn2``, ``audio_attn2``) and the audio<->video cross-attentions (``audio_to_video_attn``,
``video_to_audio_attn``, which take separate query and key RoPE) run diffusers' processor unchanged.

As in LTX-Video the latents arrive packed ``[B, S, C]``; the grid comes from ``video_coords`` (patch bounds
``[B, 3, S, 2]``, what RoPE uses; the pipelines pass it) or else ``num_frames`` / ``height`` / ``width``. Tokens
appended behind the grid (``LTX2ConditionPipeline``'s keyframe conditions) stay dense and in place.

Tile order once per forward: the video tokens after ``proj_in``; the video self-attention RoPE (``rope``) and the
video side of the audio-video RoPE (``cross_attn_rope``); per-token timesteps (image-to-video; every timestep
modulation of the video tokens, a2v included, is computed from them); the optional per-token keyframe marker
``video_keyframes_mask [B, S, 1]`` and video self-attention mask ``[B, S, S]``; back before ``proj_out``. Audio
tokens are never reordered. A video self-attention mask is not a key-padding mask: those calls run dense with it
(listed in the statistics as a fallback).

LTX-2.3 and LTX-2.5 (``perturbed_attn=True``, with gated attention and prompt AdaLN) run the same way. Their blocks
pass spatio-temporal guidance (STG) arguments to the attention processors by name (``perturbation_mask``,
``all_perturbed``); draft attention's processor names every keyword of the processors it replaces (diffusers drops
names a processor's signature lacks: ``accept_processor_keywords``) and hands them to the model's own processor,
which mixes the value back in per batch item. In the STG pass
(``all_perturbed``) the perturbed blocks compute no attention at all: those calls are not counted.
"""

from __future__ import annotations

import re
from functools import partial

import torch
from diffusers.models.transformers.transformer_ltx2 import (LTX2Attention, LTX2AudioVideoAttnProcessor,
                                                            LTX2PerturbedAttnProcessor)

from ..core.layout import VideoGrid
from .base import (IMAGE_TO_VIDEO, TINY_TEXT_DIM, LoadRecipe, ModelFamily, TinyPipeline, numbered_roles, register_hook,
                   register_tokens_back_hook)
from .ltx_video import forward_arguments, grid_from_coords, grid_from_sizes, leading_tokens

_SELF = re.compile(r"^transformer_blocks\.(\d+)\.attn1$")
# LTX2VideoTransformer3DModel.forward's positional parameters (up to the ones the hooks read)
_FORWARD_ARGS = ("hidden_states", "audio_hidden_states", "encoder_hidden_states", "audio_encoder_hidden_states",
                 "timestep", "audio_timestep", "sigma", "audio_sigma", "encoder_attention_mask",
                 "audio_encoder_attention_mask", "num_frames", "height", "width", "fps", "audio_num_frames",
                 "video_coords", "audio_coords", "isolate_modalities", "spatio_temporal_guidance_blocks",
                 "perturbation_mask", "use_cross_timestep", "attention_kwargs", "video_self_attention_mask",
                 "video_keyframes_mask")


def build_tiny_ltx2(seed: int = 0, num_layers: int = 2, heads: int = 2, version: str = "2.0"):
    """A tiny random-weight ``LTX2Pipeline`` (audio + video), float32 on CPU, no text encoder (fixed random
    prompt embeddings go through the pipeline's text connectors). Video head dim 32, audio head dim 8; the video VAE
    compresses 32x spatially and 8x temporally like the real one, so ``height x width`` pixels give
    ``height/32 x width/32`` tokens per frame. ``version="2.3"``: the architecture flags diffusers' conversion script
    gives LTX-2.3 (perturbed attention for STG, gated attention, prompt AdaLN, per-modality text projections)."""
    v23 = version == "2.3"
    from diffusers import (AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, FlowMatchEulerDiscreteScheduler,
                           LTX2Pipeline, LTX2VideoTransformer3DModel)
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    torch.manual_seed(seed)
    # the real VAE's block layout with 8 channels (its decoder halves the channels at each 2x upsampling)
    vae = AutoencoderKLLTX2Video(latent_channels=8, block_out_channels=(8, 8, 8, 8),
                                 decoder_block_out_channels=(8, 16, 32), layers_per_block=(1, 1, 1, 1, 1),
                                 decoder_layers_per_block=(1, 1, 1, 1), spatial_compression_ratio=32,
                                 temporal_compression_ratio=8).eval()
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    audio_vae = AutoencoderKLLTX2Audio(base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1,
                                       attn_resolutions=None, in_channels=2, resolution=32, latent_channels=2,
                                       norm_type="pixel", causality_axis="height", dropout=0.0,
                                       mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160,
                                       is_causal=True, mel_bins=8).eval()
    vocoder = LTX2Vocoder(in_channels=2 * 8, hidden_channels=32, out_channels=2, upsample_kernel_sizes=[4, 4],
                          upsample_factors=[2, 2], resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]],
                          leaky_relu_negative_slope=0.1, output_sampling_rate=16000).eval()
    connectors = LTX2TextConnectors(caption_channels=TINY_TEXT_DIM, text_proj_in_factor=1,
                                    # 2.3's connectors output the transformer's widths (per-modality projections)
                                    video_connector_num_attention_heads=heads if v23 else 2,
                                    video_connector_attention_head_dim=32 if v23 else 16,
                                    video_connector_num_layers=1, video_connector_num_learnable_registers=None,
                                    audio_connector_num_attention_heads=heads if v23 else 2,
                                    audio_connector_attention_head_dim=8 if v23 else 16,
                                    audio_connector_num_layers=1, audio_connector_num_learnable_registers=None,
                                    connector_rope_base_seq_len=32, rope_double_precision=False,
                                    rope_type="split", video_gated_attn=v23, audio_gated_attn=v23,
                                    per_modality_projections=v23, video_hidden_dim=heads * 32,
                                    audio_hidden_dim=heads * 8, proj_bias=v23).eval()
    torch.manual_seed(seed + 1)
    transformer = LTX2VideoTransformer3DModel(
        in_channels=8, out_channels=8, num_attention_heads=heads, attention_head_dim=32, cross_attention_dim=heads * 32,
        audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=heads, audio_attention_head_dim=8,
        audio_cross_attention_dim=heads * 8, num_layers=num_layers, caption_channels=TINY_TEXT_DIM,
        rope_double_precision=False, rope_type="split", gated_attn=v23, cross_attn_mod=v23, audio_gated_attn=v23,
        audio_cross_attn_mod=v23, use_prompt_embeddings=not v23, perturbed_attn=v23).eval()
    return LTX2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, audio_vae=audio_vae, text_encoder=None,
                        tokenizer=None, connectors=connectors, transformer=transformer, vocoder=vocoder)


def _own_class(transformer) -> type:
    """The processor class LTX2VideoTransformer3DModel gives its attention modules (its blocks choose by config)."""
    return LTX2PerturbedAttnProcessor if transformer.config.get("perturbed_attn", False) else LTX2AudioVideoAttnProcessor


class LTX2Family(ModelFamily):
    """LTX-2 (2.0, 2.3, 2.5): video self-attention sparse; audio, text and audio-video attention dense."""

    name = "ltx2"
    title = "LTX-2"
    transformer_classes = ("LTX2VideoTransformer3DModel",)
    grid_locals = ("num_frames", "height", "width")
    # as diffusers' LTX-2 docs load it: every component in bfloat16; image-to-video from the same checkpoint as
    # LTX2ImageToVideoPipeline (diffusers' example loads Lightricks/LTX-2 with it). That pipeline re-compresses the
    # image with H.264 as LTX-2 was trained (diffusers' default CRF; needs PyAV).
    pipelines = {"LTX2Pipeline": LoadRecipe(torch.bfloat16, torch.bfloat16, torch.bfloat16,
                                            loads_as={"image": "LTX2ImageToVideoPipeline"}),
                 "LTX2ImageToVideoPipeline": LoadRecipe(torch.bfloat16, torch.bfloat16, torch.bfloat16,
                                                        inputs=IMAGE_TO_VIDEO)}
    # video first: LTX2ConditionPipeline's keyframe conditions (latent index > 0) are tokens appended behind the video
    # grid, kept dense and in place
    text_position = "trailing"
    other_pipelines = ("LTX2ConditionPipeline", "LTX2InContextPipeline", "LTX2HDRPipeline", "LTX2DFRPipeline",
                       "LTX2DFRTemporalRefinePipeline")
    # a denoising loop (new timesteps, its own warm-up) per temporal tile
    section_loops = {"LTX2DFRTemporalRefinePipeline": "tile_index"}
    default_fps = 24  # LTX2Pipeline's frame_rate default
    frame_step = 8  # the VAE compresses time 8x: 8k+1 frames (9, 121, 161)
    pixel_step = 32  # and space 32x, patch 1
    # --image: LTX2ImageToVideoPipeline
    tiny_variants = {"tiny-ltx2": TinyPipeline(build_tiny_ltx2, "LTX2Pipeline"),
                     "tiny-ltx2.3": TinyPipeline(partial(build_tiny_ltx2, version="2.3"), "LTX2Pipeline")}

    # diffusers 0.42.1 has a plan (_cp_plan) splitting the video tokens and RoPE, not verified with draft attention
    cp_unsupported_because = (
        "diffusers' context-parallel plan for it splits the video tokens and the video RoPE but not the audio-video "
        "RoPE or per-token timesteps the same way, and was not verified with draft attention's tile order")

    def grid(self, transformer, latents):
        raise ValueError("LTX-2 latents arrive packed [B, S, C]: the grid comes from the forward's video_coords or "
                         "num_frames / height / width (forward_grid)")

    def forward_grid(self, transformer, args, kwargs):
        return self._grid_of(transformer, forward_arguments(args, kwargs, _FORWARD_ARGS))

    def grid_from_locals(self, transformer, frame_locals):
        return self._grid_of(transformer, frame_locals)

    def _grid_of(self, transformer, given: dict) -> VideoGrid | None:
        tokens = given["hidden_states"].shape[1]
        p, p_t = transformer.config.patch_size, transformer.config.patch_size_t
        sizes = [given.get(n) for n in ("num_frames", "height", "width")]
        sizes = [-(-sizes[0] // p_t), -(-sizes[1] // p), -(-sizes[2] // p)] if all(
            isinstance(s, int) for s in sizes) else None
        # Tokens appended behind the video grid (LTX2ConditionPipeline's keyframes, IC-LoRA's references, DFR's
        # anchors and slots): the grid is the head of the sequence, its size given, else up to where time goes back
        video = min(tokens, sizes[0] * sizes[1] * sizes[2]) if sizes else tokens
        coords = given.get("video_coords")
        # patch bounds [B, 3, S, 2]: the starts place each token (a compiled graph reads the sizes: see ltx_video.py)
        if coords is not None and not torch.compiler.is_compiling():
            starts = coords[..., 0] if coords.ndim == 4 else coords
            video = video if sizes else leading_tokens(starts)
            return grid_from_coords(starts[..., :video], video)
        return None if sizes is None else grid_from_sizes(*sizes, video)

    def roles(self, transformer, current):
        return numbered_roles(transformer, current, LTX2Attention, _SELF, _own_class(transformer))

    def own_processor(self, transformer, module):
        return _own_class(transformer)()

    def skips_attention(self, kwargs):
        # LTX2PerturbedAttnProcessor: with every batch item perturbed it returns the value projection
        skip, mask = kwargs.get("all_perturbed"), kwargs.get("perturbation_mask")
        if skip is None and mask is not None:
            skip = torch.all(mask == 0)
        return skip is not None and bool(skip)

    def call_default(self, processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope,
                     key_rope=None, **kwargs):
        # LTX2Attention passes the query RoPE and the key RoPE (audio-video attention) as 5th and 6th argument
        return processor(attn, hidden_states, encoder_hidden_states, attention_mask, rope, key_rope, **kwargs)

    def tile_order_hooks(self, transformer, order):
        def tokens(module, args, out):  # proj_in output [B, S, D]
            return order.to_tiles(out, 1) if order.active else None

        def rope(module, args, out):  # (cos, sin): [B, S, D] (interleaved) or [B, H, S, D/2] (split)
            return tuple(order.to_tiles(t, 1 if t.ndim == 3 else 2) for t in out) if order.active else None

        def per_token_inputs(module, args, kwargs=None):
            if not order.active or kwargs is None:  # (None: removed while this forward's hooks were running)
                return None
            given = forward_arguments(args, kwargs, _FORWARD_ARGS)
            changed = {}
            t = given.get("timestep")
            if isinstance(t, torch.Tensor) and t.ndim == 2 and t.shape[1] > 1:  # image-to-video: [B, S]
                changed["timestep"] = order.to_tiles(t, 1)
                if given.get("audio_timestep") is None:  # the model's default: the (unpermuted) video timestep
                    changed["audio_timestep"] = t
            marker = given.get("video_keyframes_mask")
            if isinstance(marker, torch.Tensor):  # [B, S, 1]
                changed["video_keyframes_mask"] = order.to_tiles(marker, 1)
            mask = given.get("video_self_attention_mask")
            if isinstance(mask, torch.Tensor):  # [B, S, S]
                changed["video_self_attention_mask"] = order.to_tiles(order.to_tiles(mask, 1), 2)
            if not changed:
                return None
            return (), {**given, **changed}  # every argument by name

        register_hook(transformer.proj_in, "post", tokens)
        register_hook(transformer.rope, "post", rope)
        register_hook(transformer.cross_attn_rope, "post", rope)  # video side of audio-video attention
        register_hook(transformer, "pre", per_token_inputs, with_kwargs=True)
        register_tokens_back_hook(transformer.proj_out, order)
        return True

    def tiny_prompt_kwargs(self, pipe, emb, text_len, valid_len, negative):
        mask = torch.zeros(1, text_len, dtype=torch.long)
        mask[:, text_len - (text_len if valid_len is None else valid_len):] = 1  # Gemma pads on the left
        out = dict(prompt_embeds=emb(1, text_len, TINY_TEXT_DIM), prompt_attention_mask=mask)
        if negative:
            out.update(negative_prompt_embeds=emb(1, text_len, TINY_TEXT_DIM), negative_prompt_attention_mask=mask)
        return out

"""Draft attention inside the diffusers 0.42.1 pipelines that take a served transformer and that the families' own
tests do not run (served through the Python API, ``other_pipelines``): each is built from its family's tiny
components (the transformer rebuilt from
the tiny config where the pipeline needs other input channels, or a tiny component of the class the pipeline
declares where the tiny pipeline has none) and called with prompt embeddings, latent output, 2-3 steps and a fixed
seed, at a size of several 8x16-token regions per frame (the tile order is not the identity).

Every case checks, against the same pipeline without draft attention:

1. sparsity 0 (reference backend) equals it within float32 rounding (1e-4, relative to the output's magnitude);
2. the statistics cover the whole call (``forwards`` = the transformer forwards the plain call made) and either
   every video self-attention call ran sparse (``sparse_calls > 0``, no fallback) or, where the pipeline legitimately
   cannot run sparse (``Case.fallback``: a ``[B, S, S]`` self-attention mask, tokens not on one grid), that dense
   fallback is listed in ``summary()["fallbacks"]`` (and, where no call can run sparse, ``Case.sparse=False``, the
   sparsity-0.5 output still equals the plain one);
3. sparsity 0.5 gives finite outputs, different from the plain ones where it ran sparse;
4. after the ``with`` block, draft attention's hooks are gone (same hook count as before enabling).

Cases marked ``xfail(strict=True)`` show a real problem of draft attention with that pipeline; the reason says
which. The builders' docstrings say what each case exercises and why a fallback is legitimate where one is expected.
Every case takes under 8 s on one CPU thread; those that repeat a path another case takes are marked slow.
"""

from __future__ import annotations

import inspect
import types
from dataclasses import dataclass
from typing import Callable
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from pipeline_utils import max_diff

from draftattention_diffusers import draft_attention_enabled, get_draft_processor, get_draft_stats
from draftattention_diffusers.models.base import TINY_TEXT_DIM, count_hooks
from draftattention_diffusers.models.cosmos import TinySafetyChecker, tiny_cosmos_transformer
from draftattention_diffusers.tiny import build_tiny_pipeline, tiny_prompt_kwargs

NOT_KEY_PADDING = "the attention mask is not a key-padding suffix mask"
# 128 x 512 pixels on the 16-pixels-a-token families (Wan, HunyuanVideo, Cosmos): 8 x 32 tokens a frame, two 8x16
# regions side by side; 256 x 1024 (8 x 32) or 256 x 1280 (8 x 40: two regions and an 8x8 edge strip) on the
# 32-pixels-a-token LTX VAEs
WAN_SIZE = dict(height=128, width=512)
LTX2_GUIDANCE = dict(guidance_scale=3.0, stg_scale=0.0, modality_scale=1.0, audio_guidance_scale=3.0,
                     audio_stg_scale=0.0, audio_modality_scale=1.0, spatio_temporal_guidance_blocks=None)


def gen():
    return torch.Generator().manual_seed(0)


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def make(cls, base, **components):
    """``cls`` from ``base``'s components (those its ``__init__`` takes), ``components`` replacing or adding some."""
    names = inspect.signature(cls.__init__).parameters
    pipe = cls(**{k: v for k, v in {**base.components, **components}.items() if k in names})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def rebuilt(transformer, seed, **config):
    """A transformer of ``transformer``'s class and config with ``config`` changed, random weights (seeded)."""
    torch.manual_seed(seed)
    return type(transformer).from_config(transformer.config, **config).eval()


# ------------------------------------------------------------------------------------------------------ Wan family
def wan_video_to_video():
    from diffusers import WanVideoToVideoPipeline

    p = make(WanVideoToVideoPipeline, build_tiny_pipeline("wan"))
    video = rand(1, 5, 3, 128, 512)  # 5 frames -> 2 latent frames

    def call(p):  # strength 0.8 of 4 steps: 3 steps from the noised video latents; CFG as two forwards
        return (p(video=video, **tiny_prompt_kwargs(p), **WAN_SIZE, num_inference_steps=4, strength=0.8,
                  output_type="latent", generator=gen()).frames,)
    return p, call


def lucy_edit(expand_timesteps: bool):
    """Lucy-Edit (Wan2.2 TI2V-5B based): the condition video's latents concatenated on the channels (16 + 16 in
    the tiny transformer). With ``expand_timesteps`` (the pipeline's config, as Lucy-Edit ships) per-token timesteps
    ``[B, S]`` (all equal: Lucy's mask is all ones); without it (the pipeline's default, Wan2.1 style) one timestep
    ``[B]`` per forward. Both run every video self-attention call sparse."""
    from diffusers import LucyEditPipeline

    base = build_tiny_pipeline("wan")
    p = make(LucyEditPipeline, base, transformer=rebuilt(base.transformer, 1, in_channels=32),
             expand_timesteps=expand_timesteps)
    assert p.config.expand_timesteps == expand_timesteps
    video = rand(1, 5, 3, 128, 512)

    def call(p):
        return (p(video=video, **tiny_prompt_kwargs(p), **WAN_SIZE, num_frames=5, num_inference_steps=3,
                  output_type="latent", generator=gen()).frames,)
    return p, call


# ----------------------------------------------------------------------------------------------- SkyReels-V2 family
def skyreels_df(kind: str, num_frames: int, **extra):
    """SkyReels-V2 diffusion forcing on the tiny T2V transformer (16 channels: the condition is latent frames, not
    channels), synchronous (``ar_step=0``, the transformer's causal block size 1: no causal mask), CFG as two
    forwards. ``"i2v"``: the image's latent frame is the prefix frame of the first latent frame (its timestep 0 in
    the step matrix), ``last_image`` appends the end image's latent frame behind the generated ones (4 latent frames,
    all on the grid); ``num_frames > base_num_frames`` with ``overlap_history`` runs the long-video iterations (each
    its own loop over the step matrix, the previous iteration's last latent frames as prefix; one set of
    ``scheduler.timesteps`` for the whole call). ``"v2v"``: the video's last ``overlap_history`` frames (5 -> 2 latent
    frames) are the prefix; it always runs the long-video iterations (17 frames, ``base_num_frames=9``: three)."""
    from diffusers import (SkyReelsV2DiffusionForcingImageToVideoPipeline,
                           SkyReelsV2DiffusionForcingVideoToVideoPipeline)

    if kind == "i2v":
        p = make(SkyReelsV2DiffusionForcingImageToVideoPipeline, build_tiny_pipeline("skyreels-v2"))
        inputs = dict(image=rand(1, 3, 128, 512))
    else:
        p = make(SkyReelsV2DiffusionForcingVideoToVideoPipeline, build_tiny_pipeline("skyreels-v2"))
        inputs = dict(video=rand(1, 5, 3, 128, 512), overlap_history=5)
    assert p.transformer.config.num_frame_per_block == 1

    def call(p):
        return (p(**inputs, **extra, **tiny_prompt_kwargs(p), **WAN_SIZE, num_frames=num_frames, base_num_frames=9,
                  num_inference_steps=3, output_type="latent", generator=gen()).frames,)
    return p, call


# ------------------------------------------------------------------------------------------- HunyuanVideo family
def hunyuan_skyreels_i2v():
    """SkyReels-V1 I2V: image latents concatenated on the channels (4 + 4), true CFG with padded prompts."""
    from diffusers import HunyuanSkyreelsImageToVideoPipeline

    base = build_tiny_pipeline("hunyuan")
    p = make(HunyuanSkyreelsImageToVideoPipeline, base, transformer=rebuilt(base.transformer, 1, in_channels=8))
    image = rand(1, 3, 128, 512)
    prompt = tiny_prompt_kwargs(p, valid_len=10)
    negative = {f"negative_{k}": v for k, v in tiny_prompt_kwargs(p, seed=1, valid_len=12).items()}

    def call(p):
        return (p(image=image, **prompt, **negative, true_cfg_scale=6.0, **WAN_SIZE, num_frames=5,
                  num_inference_steps=3, output_type="latent", generator=gen()).frames,)
    return p, call


# ---------------------------------------------------------------------------------------------- LTX-Video family
def ltx_long(cond_image: bool, num_frames: int):
    """LTXI2VLongMultiPromptPipeline encodes its prompts itself (it takes no prompt embeddings): its ``encode_prompt``
    is replaced on the instance by one returning the tiny prompt embeddings and masks (padded), which is what the
    T5 encoder would hand it. Temporal windows of 2 latent frames overlapping by 1 (``temporal_tile_size=16``,
    ``temporal_overlap=8``): 9 frames -> one window, 17 frames -> two. With ``cond_image``, the first frame is
    conditioned and the image latents are appended to every window as a "negative index" frame at time -8/fps.
    Without it, the second window appends the first window's last latent frame at time 0 (the time of its own first
    frame): behind the grid, dense (the time goes back there, so the grid is the head).
    Its scheduler is the tiny FlowMatchEulerDiscreteScheduler (it warns that ComfyUI uses the ancestral one); the
    loop runs ``num_inference_steps - 1`` steps per window."""
    from diffusers import LTXI2VLongMultiPromptPipeline

    base = build_tiny_pipeline("ltx")
    p = make(LTXI2VLongMultiPromptPipeline, base)
    kw = tiny_prompt_kwargs(base, valid_len=10)

    def encode_prompt(self, *args, **kwargs):
        return (kw["prompt_embeds"], kw["prompt_attention_mask"], kw["negative_prompt_embeds"],
                kw["negative_prompt_attention_mask"])

    p.encode_prompt = types.MethodType(encode_prompt, p)
    extra = dict(cond_image=rand(1, 3, 256, 1024)) if cond_image else {}

    def call(p):
        return (p(prompt="tiny", **extra, height=256, width=1024, num_frames=num_frames, temporal_tile_size=16,
                  temporal_overlap=8, guidance_scale=3.0, num_inference_steps=3, output_type="latent",
                  seed=0).frames,)
    return p, call


def ltx_long_grid_covers_the_window(p):
    """The last forward is one window of 2 generated latent frames (8 x 32 tokens each) plus the appended
    negative-index frame: the grid draft attention sparsifies must hold the generated frames."""
    grid = get_draft_processor(p).grid
    assert grid is not None and grid.num_tokens >= 2 * 8 * 32, (
        f"draft attention's grid is {grid}: only the appended conditioning frame; the 2 generated latent frames run "
        "dense as 'other' tokens, listed nowhere")


# ---------------------------------------------------------------------------------------------------- LTX-2 family
def ltx2_hdr():
    """HDR IC-LoRA: the reference video's tokens appended behind the video grid (own coords, timestep 0)."""
    from diffusers import LTX2HDRPipeline
    from diffusers.pipelines.ltx2.pipeline_ltx2_hdr_lora import LTX2HDRReferenceCondition

    p = make(LTX2HDRPipeline, build_tiny_pipeline("ltx2"))
    refs = [LTX2HDRReferenceCondition(frames=rand(1, 9, 3, 256, 1280))]

    def call(p):
        return (p(**tiny_prompt_kwargs(p, valid_len=10), reference_conditions=refs, height=256, width=1280,
                  num_frames=9, guidance_scale=3.0, num_inference_steps=2, output_type="latent",
                  generator=gen()).frames,)
    return p, call


def ltx2_in_context(strength: float, keyframe: bool = False):
    """IC-LoRA: reference tokens appended behind the video grid; with ``conditioning_attention_strength < 1`` the
    pipeline passes a ``[B, S, S]`` video self-attention mask, which is not a key-padding mask: dense, listed.
    With ``keyframe``, a frame condition at latent index 1 (a single frame, ``crf=0``: no H.264 re-compression of a
    float tensor) is appended as keyframe tokens between the video and the reference (``[base | keyframe |
    reference]``, 320 + 320 + 640 tokens, timestep 0). The keyframe sits at the time of the last latent frame (time
    does not go back there, only at the reference): the grid is the head of the sizes the forward passes (2 x 8 x 40),
    the keyframe and reference tokens stay dense; every video self-attention call runs sparse."""
    from diffusers import LTX2InContextPipeline
    from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition
    from diffusers.pipelines.ltx2.pipeline_ltx2_ic_lora import LTX2ReferenceCondition

    p = make(LTX2InContextPipeline, build_tiny_pipeline("ltx2"))
    refs = [LTX2ReferenceCondition(frames=rand(1, 9, 3, 256, 1280))]
    # frames (F, C, H, W) in [0, 255]
    extra = dict(conditions=[LTX2VideoCondition(frames=rand(1, 3, 256, 1280, seed=1) * 255, index=1, crf=0)]
                 ) if keyframe else {}

    def call(p):
        out = p(**tiny_prompt_kwargs(p, valid_len=10), reference_conditions=refs, **extra,
                conditioning_attention_strength=strength, height=256, width=1280, num_frames=9, **LTX2_GUIDANCE,
                num_inference_steps=2, output_type="latent", generator=gen())
        return out.frames, out.audio
    return p, call


def ltx2_in_context_grid_is_the_video(p):
    """The grid draft attention sparsifies is the 2 generated latent frames, not the appended keyframe."""
    grid = get_draft_processor(p).grid
    assert grid is not None and (grid.frames, grid.height, grid.width) == (2, 8, 40), (
        f"draft attention's grid is {grid}")


def ltx25_transformer(base):
    """The tiny LTX-2.3 transformer with the LTX-2.5 keyframe marker (``use_keyframes_abs_pos_embedding``, random
    instead of diffusers' zero init) that the DFR pipelines require."""
    transformer = rebuilt(base.transformer, 3, use_keyframes_abs_pos_embedding=True)
    with torch.no_grad():
        transformer.keyframes_abs_pos_embedding.copy_(torch.randn(transformer.keyframes_abs_pos_embedding.shape,
                                                                  generator=torch.Generator().manual_seed(3)))
    return transformer


def ltx2_dfr():
    """DFR stage 1: 9 frames pad to a 25-frame canvas (4 latent frames) plus one generated keyframe slot (pixel 24),
    passed with ``video_coords`` only (no sizes); no CFG (distilled schedule, 2 sigmas)."""
    from diffusers import LTX2DFRPipeline

    base = build_tiny_pipeline("ltx2.3")
    p = make(LTX2DFRPipeline, base, transformer=ltx25_transformer(base))

    def call(p):
        out = p(**tiny_prompt_kwargs(p, valid_len=10, negative=False), height=256, width=1024, num_frames=9,
                sigmas=[1.0, 0.6], output_type="latent", generator=gen())
        return out.frames, out.audio, out.keyframes
    return p, call


def ltx2_dfr_video_tiles():
    """DFR with the spatial epilogue's ``video_tiles`` (``LTX2DFREpilogueTile``): a 256 x 1824 canvas (8 x 57 latent
    cells a frame, 4 latent frames plus one generated keyframe slot at pixel 24) cut in two width tiles overlapping 8
    cells (``split_by_count``: widths 33 and 32, trapezoidal blend weights), each at least two 8x16-token regions
    wide. Every step runs the transformer once per tile on that tile's ``keep`` subset (base tokens, then the slot's
    tokens inside the window) with the tile's rebased ``video_coords`` and keyframe mask (``video_tile_plan``), so
    consecutive forwards have different token counts (1320, 1280) and grids. The slot sits at a later time than the
    last latent frame, so its tokens (a whole frame of the tile) join the grid as a fifth frame, as in the untiled
    ``LTX2DFRPipeline`` case: the grids are 5 x 8 x 33 and 5 x 8 x 32, and every call runs sparse (no fallback)."""
    from diffusers import LTX2DFRPipeline
    from diffusers.pipelines.ltx2.dfr_layout import LTX2DFREpilogueTile, split_by_count, trapezoidal_mask_1d

    base = build_tiny_pipeline("ltx2.3")
    p = make(LTX2DFRPipeline, base, transformer=ltx25_transformer(base))
    frames, height, width = 4, 8, 57
    tiles = [LTX2DFREpilogueTile(frames=slice(0, frames), heights=slice(0, height), widths=slice(w.start, w.end),
                                 blend_weight=torch.ones(frames, height, 1)
                                 * trapezoidal_mask_1d(w.end - w.start, w.left_ramp, w.right_ramp))
             for w in split_by_count(width, 2, 8)]
    assert [(t.widths.start, t.widths.stop) for t in tiles] == [(0, 33), (25, 57)]

    def call(p):
        out = p(**tiny_prompt_kwargs(p, valid_len=10, negative=False), height=256, width=32 * width, num_frames=9,
                sigmas=[1.0, 0.6], video_tiles=tiles, output_type="latent", generator=gen())
        return out.frames, out.audio, out.keyframes
    return p, call


def ltx2_dfr_grid_is_the_last_tile(p):
    """The last forward is the second tile: 4 latent frames and the keyframe slot, 8 x 32 cells each."""
    grid = get_draft_processor(p).grid
    assert grid is not None and (grid.frames, grid.height, grid.width) == (5, 8, 32), (
        f"draft attention's grid is {grid}")


def ltx2_dfr_temporal_refine(num_frames: int):
    """One temporal refine round on a DFR canvas of ``num_frames`` (25: one keyframe, one tile; 49: two keyframes,
    two tiles, each its own denoising loop) given as random stand-ins of DFR's outputs (latents, keyframes, audio
    latents). A tiny temporal latent upsampler; the ancestral scheduler the pipeline requires (seeded per tile).
    The carried anchors and the generated slots are appended behind the video tokens at earlier times: the forward
    passes ``video_coords`` only, and the grid is the head up to where the time goes back; the appended tokens stay
    dense."""
    from diffusers import LTX2DFRTemporalRefinePipeline, LTXEulerAncestralRFScheduler
    from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

    base = build_tiny_pipeline("ltx2.3")
    torch.manual_seed(4)
    upsampler = LTX2LatentUpsamplerModel(in_channels=8, mid_channels=32, num_blocks_per_stage=1, dims=3,
                                         spatial_upsample=False, temporal_upsample=True).eval()
    p = make(LTX2DFRTemporalRefinePipeline, base, transformer=ltx25_transformer(base),
             temporal_latent_upsampler=upsampler, scheduler=LTXEulerAncestralRFScheduler(eta=0.5))
    g = torch.Generator().manual_seed(5)
    positions = list(range(24, num_frames, 24))
    latents = torch.randn(1, 8, (num_frames - 1) // 8 + 1, 8, 32, generator=g)
    keyframes = torch.randn(1, 8, len(positions), 8, 32, generator=g)
    audio = torch.randn(1, 2, round(num_frames / 24 * 25), 2, generator=g)

    def call(p):
        out = p(**tiny_prompt_kwargs(p, valid_len=10, negative=False), latents=latents, keyframes_latents=keyframes,
                keyframe_positions=positions, audio_latents=audio, height=256, width=1024, num_frames=num_frames,
                sigmas=[1.0, 0.6], output_type="latent", generator=gen())
        return out.frames, out.keyframes
    return p, call


# ----------------------------------------------------------------------------------------------------- Cosmos family
def cosmos2_text_to_image():
    """Predict2 Text2Image: one latent frame of 8 x 32 tokens (two regions); 16 latent channels (the tiny
    Video2World transformer's config without its condition-mask channel)."""
    from diffusers import Cosmos2TextToImagePipeline

    base = build_tiny_pipeline("cosmos2-v2w")
    p = make(Cosmos2TextToImagePipeline, base, transformer=rebuilt(base.transformer, 1, in_channels=16))

    def call(p):
        return (p(**tiny_prompt_kwargs(p), **WAN_SIZE, num_inference_steps=3, guidance_scale=7.0,
                  output_type="latent", generator=gen()).images,)
    return p, call


def cosmos1(video_to_world: bool):
    """Cosmos 1.0 Text2World / Video2World (an image continued: its latent frame conditioned, 16 + 1 channels with
    the condition mask) with a tiny ``AutoencoderKLCosmos`` (8x spatial, 8x temporal: 9 frames -> 2 latent frames of
    8 x 32 tokens), the EDM Euler scheduler of the published models and Cosmos 1.0's learnable positions
    (``extra_pos_embed_type="learnable"``). No ``padding_mask`` channel (``concat_padding_mask=False``): the
    transformer resizes it with torchvision, not installed here. The pipelines refuse to run without a safety checker
    and build ``cosmos_guardrail``'s (not installed, downloads its models) when given None: the family's
    ``TinySafetyChecker`` stands in (passes every prompt and video)."""
    from diffusers import AutoencoderKLCosmos, CosmosTextToWorldPipeline, CosmosVideoToWorldPipeline, EDMEulerScheduler

    transformer = tiny_cosmos_transformer(1, 2, 2, in_channels=17 if video_to_world else 16,
                                          extra_pos_embed_type="learnable", max_size=(16, 16, 64))
    torch.manual_seed(5)
    vae = AutoencoderKLCosmos(latent_channels=16, encoder_block_out_channels=(8, 8, 8, 8),
                              decode_block_out_channels=(8, 8, 8, 8), attention_resolutions=(), resolution=128,
                              num_layers=1, latents_mean=None, latents_std=None).eval()
    scheduler = EDMEulerScheduler(sigma_min=0.002, sigma_max=80, sigma_data=0.5, sigma_schedule="karras",
                                  num_train_timesteps=1000, prediction_type="epsilon", rho=7.0,
                                  final_sigmas_type="sigma_min")
    cls = CosmosVideoToWorldPipeline if video_to_world else CosmosTextToWorldPipeline
    p = cls(text_encoder=None, tokenizer=None, transformer=transformer, vae=vae, scheduler=scheduler,
            safety_checker=TinySafetyChecker())
    p.set_progress_bar_config(disable=True)
    extra = dict(image=rand(1, 3, 128, 512)) if video_to_world else {}

    def call(p):
        return (p(**extra, **tiny_prompt_kwargs(p), **WAN_SIZE, num_frames=9, num_inference_steps=3,
                  output_type="latent", generator=gen()).frames,)
    return p, call


# what CosmosControlNetModel.forward uses of torchvision (not installed here): resizing the all-zero padding mask
NO_TORCHVISION = types.SimpleNamespace(
    InterpolationMode=types.SimpleNamespace(NEAREST="nearest"),
    functional=types.SimpleNamespace(resize=lambda x, size, interpolation=None: F.interpolate(x, size=list(size),
                                                                                            mode="nearest")))


def cosmos25_transfer(num_frames: int):
    """Transfer2.5: the tiny Predict2.5 pipeline's transformer with a controlnet residual after every block
    (``controlnet_block_every_n=1``) and an image context (``attn2`` a ``CosmosAttention``, processor 2_5), a tiny
    ``CosmosControlNetModel`` (2 control blocks; control latents padded to 16 channels, condition and padding masks:
    18). ``CosmosControlNetModel.forward`` resizes the padding mask with torchvision, which is not installed here: a
    stand-in (nearest interpolation) is patched into its module for the call. Chunks of 5 frames (2 latent frames),
    one conditioned frame carried between chunks: 5 control frames -> one chunk, 9 -> two (each its own denoising
    loop of 2 steps, new timesteps)."""
    from diffusers import Cosmos2_5_TransferPipeline, CosmosControlNetModel
    from diffusers.models.controlnets import controlnet_cosmos

    base = build_tiny_pipeline("cosmos25")
    context = dict(img_context_dim_in=TINY_TEXT_DIM, img_context_dim_out=64)
    transformer = rebuilt(base.transformer, 1, controlnet_block_every_n=1, img_context_num_tokens=4, **context)
    torch.manual_seed(2)
    controlnet = CosmosControlNetModel(n_controlnet_blocks=2, in_channels=18, latent_channels=18, model_channels=64,
                                       num_attention_heads=2, attention_head_dim=32, mlp_ratio=2.0,
                                       text_embed_dim=TINY_TEXT_DIM, adaln_lora_dim=16, rope_scale=(1.0, 3.0, 3.0),
                                       use_crossattn_projection=True, crossattn_proj_in_channels=TINY_TEXT_DIM,
                                       encoder_hidden_states_channels=TINY_TEXT_DIM, **context).eval()
    p = make(Cosmos2_5_TransferPipeline, base, transformer=transformer, controlnet=controlnet)
    controls = rand(1, num_frames, 3, 128, 512)

    def call(p):
        with mock.patch.object(controlnet_cosmos, "transforms", NO_TORCHVISION, create=True):
            return (p(controls=controls, **tiny_prompt_kwargs(p), **WAN_SIZE, num_frames_per_chunk=5,
                      num_inference_steps=2, output_type="latent", generator=gen()).frames,)
    return p, call


# ----------------------------------------------------------------------------------------------- EasyAnimate family
EASYANIMATE_SIZE = dict(height=128, width=512, num_frames=5)  # 2 latent frames of 8 x 32 tokens


def easyanimate_inpaint():
    """EasyAnimate InP (image-to-video): the first frame kept (mask 0), the others generated (mask 255); the
    transformer takes noise, the mask resized to the latents (``resize_inpaint_mask_directly``, 1 channel) and the
    masked video's latents (4 + 1 + 4 channels, ``inpaint_latents``). CFG batched in one forward. diffusers 0.42.1's
    pipeline reads ``vae.config.cache_mag_vae`` (as ``resize_mask``'s ``process_first_frame_only``), a key
    ``AutoencoderKLMagvit`` does not register: the tiny VAE's config gets it (True, ``resize_mask``'s default)."""
    from diffusers import EasyAnimateInpaintPipeline

    base = build_tiny_pipeline("easyanimate")
    p = make(EasyAnimateInpaintPipeline, base, transformer=rebuilt(base.transformer, 1, in_channels=9))
    p.vae.register_to_config(cache_mag_vae=True)
    video = rand(1, 3, 5, 128, 512)  # [B, C, F, H, W] in [0, 1]
    mask = torch.full((1, 1, 5, 128, 512), 255.0)
    mask[:, :, 0] = 0

    def call(p):
        return (p(video=video, mask_video=mask, **tiny_prompt_kwargs(p), **EASYANIMATE_SIZE, num_inference_steps=3,
                  output_type="latent", generator=gen()).frames,)
    return p, call


def easyanimate_control():
    """EasyAnimate Control: the control video's latents and a reference image's latents (first latent frame) on the
    channels (4 + 4 + 4, ``control_latents``). diffusers 0.42.1's ``__call__`` passes ``text_encoder_index=0`` to its
    own ``encode_prompt``, which takes no such argument (every call raises ``TypeError``): the instance's
    ``encode_prompt`` drops it."""
    from diffusers import EasyAnimateControlPipeline

    base = build_tiny_pipeline("easyanimate")
    p = make(EasyAnimateControlPipeline, base, transformer=rebuilt(base.transformer, 1, in_channels=12))
    encode_prompt = p.encode_prompt
    p.encode_prompt = lambda *args, text_encoder_index=0, **kwargs: encode_prompt(*args, **kwargs)
    control, ref = rand(1, 3, 5, 128, 512), rand(1, 3, 1, 128, 512, seed=1)

    def call(p):
        return (p(control_video=control, ref_image=ref, **tiny_prompt_kwargs(p), **EASYANIMATE_SIZE,
                  num_inference_steps=3, output_type="latent", generator=gen()).frames,)
    return p, call


# ------------------------------------------------------------------------------------------------ Kandinsky 5 family
def kandinsky5_image(image_to_image: bool):
    """Kandinsky 5.0 Image T2I / I2I: the pipelines snap to their resolution list, whose smallest is 1408 x 640 (one
    latent frame of 40 x 88 tokens: many regions). Both declare a 2D ``AutoencoderKL`` (8x): a tiny one (4 latent
    channels, as the tiny transformer), which I2I encodes the image with (4 + 4 + 1 channels: ``visual_cond``)."""
    from diffusers import AutoencoderKL, Kandinsky5I2IPipeline, Kandinsky5T2IPipeline

    base = build_tiny_pipeline("kandinsky5-i2v" if image_to_image else "kandinsky5", num_layers=1)
    torch.manual_seed(7)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=4,
                        norm_num_groups=4).eval()
    p = make(Kandinsky5I2IPipeline if image_to_image else Kandinsky5T2IPipeline, base, vae=vae)
    extra = dict(image=rand(1, 3, 640, 1408)) if image_to_image else {}

    def call(p):
        return (p(**extra, **tiny_prompt_kwargs(p), height=640, width=1408, num_inference_steps=2, guidance_scale=3.5,
                  output_type="latent", generator=gen()).image,)
    return p, call


# ------------------------------------------------------------------------------------------------------------ table
@dataclass
class Case:
    build: Callable[[], tuple]  # () -> (pipeline, call); call(pipeline) -> tuple of output tensors
    fallback: str | None = None  # None: no fallback; else every listed fallback names this (and some call is dense)
    sparse: bool = True  # whether some video self-attention call runs sparse
    check: Callable | None = None  # more assertions on the pipeline inside the sparse run's `with`


CASES = [
    pytest.param(Case(wan_video_to_video), id="WanVideoToVideoPipeline"),
    pytest.param(Case(lambda: lucy_edit(True)), id="LucyEditPipeline"),
    pytest.param(Case(lambda: lucy_edit(False)), id="LucyEditPipeline-no-expand-timesteps",
                 marks=pytest.mark.slow),
    pytest.param(Case(lambda: skyreels_df("i2v", 9)), id="SkyReelsV2DiffusionForcingImageToVideoPipeline"),
    # the end image's latent frame appended behind the generated ones (on the grid: 4 latent frames)
    pytest.param(Case(lambda: skyreels_df("i2v", 9, last_image=rand(1, 3, 128, 512, seed=1))),
                 id="SkyReelsV2DiffusionForcingImageToVideoPipeline-last-image"),
    # the long-video iterations, as the video-to-video case runs them
    pytest.param(Case(lambda: skyreels_df("i2v", 17, overlap_history=5)),
                 id="SkyReelsV2DiffusionForcingImageToVideoPipeline-long-video", marks=pytest.mark.slow),
    pytest.param(Case(lambda: skyreels_df("v2v", 17)), id="SkyReelsV2DiffusionForcingVideoToVideoPipeline"),
    pytest.param(Case(hunyuan_skyreels_i2v), id="HunyuanSkyreelsImageToVideoPipeline"),
    # the image's latent frame appended at an earlier time: the grid is the head (the window's generated frames)
    pytest.param(Case(lambda: ltx_long(True, 9), check=ltx_long_grid_covers_the_window),
                 id="LTXI2VLongMultiPromptPipeline-image-1window"),
    # a denoising loop per window (new timesteps): the statistics cover both (section_loops)
    pytest.param(Case(lambda: ltx_long(False, 17)), id="LTXI2VLongMultiPromptPipeline-text-2windows"),
    pytest.param(Case(ltx2_hdr), id="LTX2HDRPipeline", marks=pytest.mark.slow),  # appended tokens: as DFR
    pytest.param(Case(lambda: ltx2_in_context(1.0)), id="LTX2InContextPipeline", marks=pytest.mark.slow),
    # [video | keyframe | reference]: the grid is the video (the sizes the forward passes), the rest dense
    pytest.param(Case(lambda: ltx2_in_context(1.0, keyframe=True), check=ltx2_in_context_grid_is_the_video),
                 id="LTX2InContextPipeline-keyframe", marks=pytest.mark.slow),
    pytest.param(Case(lambda: ltx2_in_context(0.5), fallback=NOT_KEY_PADDING, sparse=False),
                 id="LTX2InContextPipeline-attention-mask"),
    pytest.param(Case(ltx2_dfr), id="LTX2DFRPipeline"),
    # a transformer call per spatial tile and step, each on its subset of the tokens (its own grid)
    pytest.param(Case(ltx2_dfr_video_tiles, check=ltx2_dfr_grid_is_the_last_tile),
                 id="LTX2DFRPipeline-video-tiles"),
    pytest.param(Case(lambda: ltx2_dfr_temporal_refine(25)),
                 id="LTX2DFRTemporalRefinePipeline-1tile", marks=pytest.mark.slow),  # 2 tiles: default
    # a denoising loop per tile, its steps in the pipeline's own denoise(): the statistics cover both tiles
    pytest.param(Case(lambda: ltx2_dfr_temporal_refine(49)),
                 id="LTX2DFRTemporalRefinePipeline-2tiles"),
    pytest.param(Case(lambda: cosmos1(False)), id="CosmosTextToWorldPipeline"),
    pytest.param(Case(lambda: cosmos1(True)), id="CosmosVideoToWorldPipeline"),
    pytest.param(Case(lambda: cosmos25_transfer(5)), id="Cosmos2_5_TransferPipeline", marks=pytest.mark.slow),
    # each chunk sets new scheduler timesteps: a section each (section_loops), the statistics cover both
    pytest.param(Case(lambda: cosmos25_transfer(9)), id="Cosmos2_5_TransferPipeline-2chunks"),
    pytest.param(Case(cosmos2_text_to_image), id="Cosmos2TextToImagePipeline"),
    pytest.param(Case(easyanimate_inpaint), id="EasyAnimateInpaintPipeline"),
    pytest.param(Case(easyanimate_control), id="EasyAnimateControlPipeline", marks=pytest.mark.slow),
    pytest.param(Case(lambda: kandinsky5_image(False)), id="Kandinsky5T2IPipeline", marks=pytest.mark.slow),
    pytest.param(Case(lambda: kandinsky5_image(True)), id="Kandinsky5I2IPipeline", marks=pytest.mark.slow),
]


def close(outputs, reference) -> bool:
    """Equal within float32 rounding: 1e-4, relative to the output's magnitude where it is above 1."""
    return all(max_diff(a, r) <= 1e-4 * max(1.0, r.abs().max().item()) for a, r in zip(outputs, reference))


def visible(case: Case, stats: dict) -> None:
    """Sparse calls where the case says so, and every dense fallback listed (only those it expects)."""
    assert (stats["sparse_calls"] > 0) == case.sparse
    if case.fallback is None:
        assert stats["fallbacks"] == {}
    else:
        assert stats["dense_calls"] > 0 and stats["fallbacks"]
        assert all(case.fallback in message for message in stats["fallbacks"])


@pytest.mark.parametrize("case", CASES)
def test_draft_attention_in_pipeline(case):
    p, call = case.build()
    forwards = []
    handle = p.transformer.register_forward_pre_hook(lambda *args: forwards.append(1))
    reference = call(p)
    handle.remove()
    assert all(torch.isfinite(r).all() for r in reference)
    hooks = count_hooks(p.transformer)

    with draft_attention_enabled(p, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        exact = call(p)
        stats = get_draft_stats(p).summary()
    assert close(exact, reference)
    assert stats["forwards"] == len(forwards)  # the statistics cover the whole call
    visible(case, stats)

    with draft_attention_enabled(p, sparsity=0.5, dense_steps_fraction=0.0):
        assert count_hooks(p.transformer, draft_only=True) > 0
        sparse = call(p)
        stats = get_draft_stats(p).summary()
        if case.check is not None:
            case.check(p)
    assert all(torch.isfinite(s).all() for s in sparse)
    assert stats["forwards"] == len(forwards)
    visible(case, stats)
    if case.sparse:
        assert stats["mean_sparsity"] > 0.3 and not torch.equal(sparse[0], reference[0])
    else:
        assert close(sparse, reference)
    assert count_hooks(p.transformer) == hooks and count_hooks(p.transformer, draft_only=True) == 0

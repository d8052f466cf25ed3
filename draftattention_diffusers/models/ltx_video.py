"""LTX-Video (``LTXVideoTransformer3DModel``, 0.9.x 2B and 13B): T2V, I2V and the condition pipeline. Only
``transformer_blocks.<i>.attn1`` (video self-attention) becomes sparse; ``attn2`` (text) runs diffusers'
``LTXVideoAttnProcessor`` unchanged.

The latents arrive packed ``[B, S, C]`` (patch size 1: one token per latent pixel), so the token grid comes from the
forward's ``video_coords`` (what RoPE uses when given: the condition pipelines) or else its ``num_frames`` /
``height`` / ``width`` (latent sizes). The condition pipeline prepends the tokens of a condition at ``frame_index >
0``: the grid is then the sequence's tail (``video_start``), the condition tokens stay dense, and those forwards
gather tiles per call instead of running in tile order. The long multi-prompt pipeline appends its image's latent
frame behind the grid: dense, in place. A sequence that is not a grid runs dense, visibly in the statistics.

Tokens are put in tile order once per forward: after ``proj_in``, the RoPE tables (``rope`` output) and per-token
timesteps (image-to-video and conditioning: ``timestep [B, S]``), and back before ``proj_out``. Everything between is
per token or attention, so no hook is missing.
"""

from __future__ import annotations

import operator
import re

import torch
from diffusers.models.transformers.transformer_ltx import LTXAttention, LTXVideoAttnProcessor

from ..core.layout import VideoGrid
from .base import (IMAGE_TO_VIDEO, TINY_TEXT_DIM, LoadRecipe, ModelFamily, PipelineInput, TinyPipeline, numbered_roles,
                   permute_forward_argument, register_hook, register_tokens_back_hook, tiny_prompt_mask)

_SELF = re.compile(r"^transformer_blocks\.(\d+)\.attn1$")
# LTXVideoTransformer3DModel.forward's positional parameters, to read arguments however they were passed
_FORWARD_ARGS = ("hidden_states", "encoder_hidden_states", "timestep", "encoder_attention_mask", "num_frames",
                 "height", "width", "rope_interpolation_scale", "video_coords")


def forward_arguments(args: tuple, kwargs: dict, names: tuple[str, ...]) -> dict:
    """A transformer forward's arguments by name, positional ones included."""
    return {**dict(zip(names, args)), **kwargs}


def grid_from_coords(coords: torch.Tensor, num_tokens: int) -> VideoGrid | None:
    """The token grid of per-token positions ``coords [B, 3, S]`` (frame, row, column; any monotone scale) when they
    are exactly a frame-major, row-major grid in every batch item, else None (a host sync: eager code only)."""
    if coords.ndim != 3 or coords.shape[1] != 3 or coords.shape[2] != num_tokens:
        return None
    first = coords[0]
    axes = [torch.unique(first[i]) for i in range(3)]
    sizes = tuple(len(a) for a in axes)
    if sizes[0] * sizes[1] * sizes[2] != num_tokens:
        return None
    expected = torch.stack(torch.meshgrid(*axes, indexing="ij")).flatten(1)
    if not (torch.equal(first, expected) and torch.equal(coords, first.expand_as(coords))):
        return None
    return VideoGrid(*sizes)


def leading_tokens(coords: torch.Tensor) -> int:
    """The tokens of per-token positions ``coords [B, 3, S]`` before the time (``coords[:, 0]``) first goes back: a
    frame-major video grid with tokens appended at earlier times is its head (a host sync)."""
    frames = coords[0, 0]
    back = torch.nonzero(frames[1:] < frames[:-1])
    return int(back[0, 0]) + 1 if back.numel() else frames.numel()


def video_span(coords: torch.Tensor) -> tuple[int, VideoGrid | None]:
    """Where the video grid starts in per-token positions ``coords [B, 3, S]``, and the grid (None where none of the
    layouts below verifies; a host sync). Besides a sequence that is exactly the grid, LTX-Video's pipelines add
    tokens of their own: ``LTXConditionPipeline`` prepends the tokens of conditions at ``frame_index > 0`` (the grid
    is the tail from the first token of the earliest frame), ``LTXI2VLongMultiPromptPipeline`` appends its image's
    latent frame at an earlier time (the grid is the head, up to where the time first goes back). The larger of the
    two that is a frame-major, row-major grid is the video."""
    frames = coords[0, 0]
    tokens = frames.numel()
    head = leading_tokens(coords)
    tail = int(torch.nonzero(frames == frames.min())[0, 0]) if tokens else 0
    for start, n in sorted([(0, head), (tail, tokens - tail)], key=lambda span: -span[1]):
        grid = grid_from_coords(coords[..., start:start + n], n) if n else None
        if grid is not None:
            return start, grid
    return 0, None


def grid_from_sizes(frames, height, width, num_tokens: int) -> VideoGrid | None:
    """``VideoGrid(frames, height, width)`` when all are given and match ``num_tokens``, else None."""
    try:
        grid = VideoGrid(*(operator.index(d) for d in (frames, height, width)))
    except (TypeError, ValueError):
        return None
    return grid if grid.num_tokens == num_tokens else None


def build_tiny_ltx_video(seed: int = 0, num_layers: int = 2, heads: int = 2):
    """A tiny random-weight ``LTXPipeline``, float32 on CPU, no text encoder. Head dim 32; the VAE compresses 32x
    spatially and 8x temporally like the real one (patch 4, three scaling blocks), so ``height x width`` pixels
    give ``height/32 x width/32`` tokens per frame and ``num_frames`` (8k+1) gives ``k+1`` latent frames."""
    from diffusers import (AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline,
                           LTXVideoTransformer3DModel)

    torch.manual_seed(seed)
    vae = AutoencoderKLLTXVideo(latent_channels=8, block_out_channels=(8, 8, 8, 8),
                                decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
                                decoder_layers_per_block=(1, 1, 1, 1, 1)).eval()
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    torch.manual_seed(seed + 1)
    transformer = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, num_attention_heads=heads,
                                             attention_head_dim=32, cross_attention_dim=heads * 32,
                                             num_layers=num_layers, caption_channels=TINY_TEXT_DIM).eval()
    return LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                       transformer=transformer)


class LTXVideoFamily(ModelFamily):
    """LTX-Video 0.9.x: text only in cross-attention, tokens in tile order once per forward."""

    name = "ltx_video"
    title = "LTX-Video"
    transformer_classes = ("LTXVideoTransformer3DModel",)
    grid_locals = ("num_frames", "height", "width")
    # As diffusers' LTX-Video docs load them: every component in bfloat16; 0.9.0-0.9.5 (2B) are LTXPipeline folders,
    # 0.9.7+ (2B, 13B) LTXConditionPipeline folders (text-to-video without conditions), with VAE tiling in those docs.
    # Image-to-video: an LTXPipeline checkpoint loads as LTXImageToVideoPipeline (the same folder: diffusers' example
    # loads Lightricks/LTX-Video with it); LTXConditionPipeline takes the image itself (a condition at frame 0). Its
    # `video` argument is a list of condition videos, not one video's frames: not passed from --video.
    pipelines = {"LTXPipeline": LoadRecipe(torch.bfloat16, torch.bfloat16, torch.bfloat16,
                                           loads_as={"image": "LTXImageToVideoPipeline"}),
                 "LTXImageToVideoPipeline": LoadRecipe(torch.bfloat16, torch.bfloat16, torch.bfloat16,
                                                       inputs=IMAGE_TO_VIDEO),
                 "LTXConditionPipeline": LoadRecipe(torch.bfloat16, torch.bfloat16, torch.bfloat16, vae_tiling=True,
                                                    inputs=(PipelineInput("image", "image"),))}
    # video first; the long multi-prompt pipeline's image latents appended behind it stay dense
    text_position = "trailing"
    other_pipelines = ("LTXI2VLongMultiPromptPipeline",)
    # a denoising loop (new timesteps, its own warm-up) per temporal window
    section_loops = {"LTXI2VLongMultiPromptPipeline": "w_idx"}
    default_fps = 24  # diffusers' LTX-Video examples export at 24 fps (the pipelines condition on frame_rate=25)
    frame_step = 8  # the VAE compresses time 8x: 8k+1 frames (9, 121, 161)
    pixel_step = 32  # and space 32x, patch 1
    tiny_variants = {"tiny-ltx": TinyPipeline(build_tiny_ltx_video, "LTXPipeline")}  # --image: LTXImageToVideoPipeline

    # diffusers 0.42.1 has a plan (_cp_plan, splitting the RoPE tables): not verified with draft attention yet
    cp_unsupported_because = (
        "diffusers' context-parallel plan for it splits its RoPE tables and per-token timesteps, which was not "
        "verified with draft attention's tile order")

    def pipeline_kwargs(self, pipe, kwargs):
        # the docs' settings for a timestep-aware VAE (0.9.1+): decode at timestep 0.05; conditioning noise 0.025
        out = dict(kwargs)
        if getattr(getattr(pipe, "vae", None), "config", {}).get("timestep_conditioning", False):
            out.setdefault("decode_timestep", 0.05)
            if type(pipe).__name__ == "LTXConditionPipeline":
                out.setdefault("image_cond_noise_scale", 0.025)
        return out

    def grid(self, transformer, latents):
        raise ValueError("LTX-Video latents arrive packed [B, S, C]: the grid comes from the forward's num_frames / "
                         "height / width or video_coords (forward_grid)")

    def forward_grid(self, transformer, args, kwargs):
        given = forward_arguments(args, kwargs, _FORWARD_ARGS)
        return self._grid_of(given)

    def grid_from_locals(self, transformer, frame_locals):
        return self._grid_of(frame_locals)

    def _grid_of(self, given: dict) -> VideoGrid | None:
        tokens = given["hidden_states"].shape[1]
        coords = given.get("video_coords")
        # what RoPE uses when given (the condition and long-video pipelines); reading it syncs with the host, so a
        # whole-model compiled graph takes num_frames / height / width instead (None where they are not given)
        if coords is not None and not torch.compiler.is_compiling():
            return video_span(coords)[1] if coords.ndim == 3 else None
        return grid_from_sizes(given.get("num_frames"), given.get("height"), given.get("width"), tokens)

    def video_start(self, transformer, args, kwargs):
        return self.forward_layout(transformer, args, kwargs)[1]

    def forward_layout(self, transformer, args, kwargs):
        given = forward_arguments(args, kwargs, _FORWARD_ARGS)
        coords = given.get("video_coords")
        if coords is None or coords.ndim != 3 or torch.compiler.is_compiling():
            return self._grid_of(given), None
        # one read of the positions for both: the video may start behind the tokens LTXConditionPipeline prepends
        # (conditions at frame_index > 0)
        start, grid = video_span(coords)
        return grid, start if start and grid is not None else None

    def roles(self, transformer, current):
        return numbered_roles(transformer, current, LTXAttention, _SELF, LTXVideoAttnProcessor)

    def call_default(self, processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope, **kwargs):
        return processor(attn, hidden_states, encoder_hidden_states, attention_mask, rope, **kwargs)

    def tile_order_hooks(self, transformer, order):
        def tokens(module, args, out):  # proj_in output [B, S, D]
            return order.to_tiles(out, 1) if order.active else None

        def rope(module, args, out):  # (cos, sin), each [B, S, D]
            return tuple(order.to_tiles(t, 1) for t in out) if order.active else None

        def per_token_timestep(module, args, kwargs=None):  # image-to-video / conditioning: timestep [B, S]
            if not order.active or kwargs is None:  # (None: removed while this forward's hooks were running)
                return None
            return permute_forward_argument(args, kwargs, 2, "timestep", order, dims=(1,))

        register_hook(transformer.proj_in, "post", tokens)
        register_hook(transformer.rope, "post", rope)
        register_hook(transformer, "pre", per_token_timestep, with_kwargs=True)
        register_tokens_back_hook(transformer.proj_out, order)
        return True

    def tiny_prompt_kwargs(self, pipe, emb, text_len, valid_len, negative):
        mask = tiny_prompt_mask(text_len, valid_len)
        out = dict(prompt_embeds=emb(1, text_len, TINY_TEXT_DIM), prompt_attention_mask=mask)
        if negative:
            out.update(negative_prompt_embeds=emb(1, text_len, TINY_TEXT_DIM), negative_prompt_attention_mask=mask)
        return out

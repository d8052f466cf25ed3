"""MiniMax-H3 (``MiniMaxH3Transformer3DModel``, ~33B, video + audio): one packed sequence per request, no
cross-attention. Its pipelines (modular: ``t2va``, ``fl2va``, ``ref2va``) lay it out as ``[text | keyframe or reference
rows | target audio | target video]``; the target video rows are the sequence's contiguous tail, frame-major and
row-major. Only ``transformer_blocks.<i>.attn`` becomes sparse, over those target video rows; everything before them
(text, conditioning rows, audio) is a dense prefix (``text_position = "leading"``: its queries and keys attend and are
attended densely). The token refiner's attention (text only) is never touched. The model's own processor computes
q, k, v, norms and RoPE; draft attention replaces its ``dispatch_attention_fn`` call only.

Token grid: from the forward's ``position_ids`` ``(S, 3)`` (rotary ``t, h, w``) and ``video_indices``: the contiguous
tail of ``video_indices`` ending at the last row, cut into frames of one ``t`` each (the last frame's ``(h, w)`` a
row-major grid, every frame the same grid, ``t`` strictly increasing frame by frame, which stops at a keyframe block
anchored at the first or last frame's time). Reading it syncs with the host, so where the pre-forward hook is traced
into a whole-model graph (``fullgraph=True``) the grid is unknown and draft attention runs dense there (counted as
dense calls; no graph break); compiled by blocks (``compile_repeated_blocks``) the eager hook reads it and the blocks
run sparse. Tokens are gathered per call (no tile-order hooks yet).

Checked against diffusers 0.42.1 ``models/transformers/transformer_minimax_h3.py`` (``MiniMaxH3Attention.forward``
calls ``self.processor(self, hidden_states, rotary_emb, attention_mask)`` positionally; the blocks pass no mask;
``MiniMaxH3AttnProcessor.__call__`` ends in ``dispatch_attention_fn(query, key, value, attn_mask=attention_mask, ...,
backend=self._attention_backend, parallel_config=self._parallel_config)``) and
``modular_pipelines/minimax_h3/before_denoise.py`` (``build_packed_sequence``: the layout and its rotary grid).
"""

from __future__ import annotations

import re

import torch
from diffusers.models.transformers.transformer_minimax_h3 import MiniMaxH3Attention, MiniMaxH3AttnProcessor

from ..core.layout import VideoGrid
from .base import ModelFamily, numbered_roles

_SELF = re.compile(r"^transformer_blocks\.(\d+)\.attn$")
# MiniMaxH3Transformer3DModel.forward's positional parameters
_FORWARD_ARGS = ("hidden_states", "audio_hidden_states", "encoder_hidden_states", "timestep", "timestep_indices",
                 "token_tags", "position_ids", "video_indices", "audio_indices", "text_indices")


def target_video_grid(position_ids: torch.Tensor, video_indices: torch.Tensor) -> VideoGrid | None:
    """The grid of the target video rows of a packed MiniMax-H3 sequence (its contiguous tail of video rows), or None
    where the tail is not a frame-major, row-major grid (a host sync: eager code only)."""
    if position_ids.ndim != 2 or position_ids.shape[-1] != 3 or video_indices.ndim != 1 or video_indices.numel() == 0:
        return None
    seq = position_ids.shape[0]
    v = video_indices.to("cpu", torch.long)
    tail = int(torch.flip(v == torch.arange(seq - len(v), seq), (0,)).cumprod(0).sum())
    if tail == 0:
        return None
    pos = position_ids[seq - tail:].to("cpu", torch.float64)
    t = pos[:, 0]
    per_frame = int((t == t[-1]).flip(0).cumprod(0).sum())  # rows of the last frame
    last = pos[-per_frame:, 1:]
    rows, cols = torch.unique(last[:, 0]), torch.unique(last[:, 1])
    if len(rows) * len(cols) != per_frame or not torch.equal(
            last, torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)):
        return None
    frames, end = 0, tail
    while end >= per_frame:
        block = pos[end - per_frame:end]
        if not (torch.all(block[:, 0] == block[0, 0]) and torch.equal(block[:, 1:], last)):
            break
        if frames and not block[0, 0] < pos[end, 0]:
            break  # a keyframe block anchored at a generated frame's time: not a frame of the target video
        frames, end = frames + 1, end - per_frame
    return VideoGrid(frames, len(rows), len(cols))


def denoiser_inputs(latents: torch.Tensor, audio_latents: torch.Tensor, prompt_embeds: torch.Tensor,
                    keyframe_anchors: tuple[str, ...] = (), timestep: float = 0.7, audio_timestep: float | None = None,
                    patch_size: tuple[int, int, int] = (1, 2, 2)) -> dict:
    """The forward's arguments as ``MiniMaxH3LoopDenoiser`` passes them in one step of a ``t2va`` / ``fl2va`` request:
    the packed layout of diffusers' ``MiniMaxH3PrepareLayoutStep.build_packed_sequence`` (``[text | keyframe rows |
    target audio | target video]``) and the row timesteps of ``MiniMaxH3SetTimestepsStep.build_row_timesteps`` (target
    video rows at ``timestep``, target audio rows at ``audio_timestep`` (default: ``timestep``), keyframe rows held at
    ``max(timestep, 0.999)``, the pipeline's ``keyframe_noise_aug``). Used by the tests and scripts/benchmark_e2e.py.

    ``latents`` ``(B, C, K + F, H, W)``: the K keyframe latent frames (one per anchor, in packed order), then the F
    target frames; ``audio_latents`` ``(B, 2 * A, audio_in_channels)``: the stereo target audio rows, channel-major (A
    latents per channel); ``prompt_embeds`` ``(B, T, text_dim)``: T text rows (tagged text: no keyframe vision block in
    the prompt). The structural tensors are built on the CPU and moved to ``latents``' device (``meta`` included)."""
    from diffusers.modular_pipelines.minimax_h3.before_denoise import (MiniMaxH3PrepareLayoutStep,
                                                                        MiniMaxH3SetTimestepsStep,
                                                                        patchify_video_latents)
    from diffusers.modular_pipelines.minimax_h3.modular_pipeline import (MINIMAX_H3_AUDIO_CHANNELS,
                                                                          MINIMAX_H3_AUDIO_TAG, MINIMAX_H3_TEXT_TAG,
                                                                          MINIMAX_H3_VIDEO_TAG)

    batch, _, frames, height, width = latents.shape
    audio_rows, text_rows = audio_latents.shape[1], prompt_embeds.shape[1]
    if audio_rows % MINIMAX_H3_AUDIO_CHANNELS:
        raise ValueError(f"audio_latents: {audio_rows} rows are not {MINIMAX_H3_AUDIO_CHANNELS} channels of latents")
    position_ids, tags, video_idx, audio_idx, text_idx, cond_video, cond_audio = \
        MiniMaxH3PrepareLayoutStep.build_packed_sequence(
            torch.full((text_rows,), MINIMAX_H3_TEXT_TAG, dtype=torch.long), frames - len(keyframe_anchors), height,
            width, audio_rows // MINIMAX_H3_AUDIO_CHANNELS, tuple(patch_size), MINIMAX_H3_AUDIO_CHANNELS,
            audio_tag=MINIMAX_H3_AUDIO_TAG, video_tag=MINIMAX_H3_VIDEO_TAG, keyframe_anchors=tuple(keyframe_anchors))
    timesteps, step_of_row = MiniMaxH3SetTimestepsStep.build_row_timesteps(
        video_idx, audio_idx, cond_video, cond_audio, text_rows, timestep,
        timestep if audio_timestep is None else audio_timestep, max(timestep, 0.999), 1.0)
    rows = patchify_video_latents(latents, tuple(patch_size))  # frame-major, row-major: keyframe frames first
    device = latents.device
    return dict(hidden_states=rows.reshape(batch, -1, rows.shape[-1]), audio_hidden_states=audio_latents,
                encoder_hidden_states=prompt_embeds, timestep=timesteps.to(device),
                timestep_indices=step_of_row.to(device), token_tags=tags.to(device),
                position_ids=position_ids.to(device), video_indices=video_idx.to(device),
                audio_indices=audio_idx.to(device), text_indices=text_idx.to(device), return_dict=False)


class MiniMaxH3Family(ModelFamily):
    """MiniMax-H3: one packed sequence, the target video its tail, everything before it a dense prefix."""

    name = "minimax_h3"
    title = "MiniMax-H3"
    transformer_classes = ("MiniMaxH3Transformer3DModel",)
    text_position = "leading"
    # its pipelines are modular (MiniMaxH3ModularPipeline): served through the Python API on the transformer
    pipelines = {}
    other_pipelines = ("MiniMaxH3ModularPipeline",)  # a modular pipeline: the Python API serves it
    default_fps = 24
    cp_unsupported_because = ("diffusers' context-parallel plan for it splits the packed sequence at the first block, "
                              "which was not verified with draft attention (whose video rows are the sequence's tail)")

    def grid(self, transformer, latents):
        raise ValueError("MiniMax-H3 packs its rows: the grid comes from the forward's position_ids and video_indices "
                         "(forward_grid)")

    def forward_grid(self, transformer, args, kwargs):
        given = {**dict(zip(_FORWARD_ARGS, args)), **kwargs}
        if torch.compiler.is_compiling() or given.get("position_ids") is None or given.get("video_indices") is None:
            return None
        return target_video_grid(given["position_ids"], given["video_indices"])

    def roles(self, transformer, current):
        return numbered_roles(transformer, current, MiniMaxH3Attention, _SELF, MiniMaxH3AttnProcessor)

    def call_default(self, processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope, **kwargs):
        # MiniMaxH3Attention calls processor(self, hidden_states, rotary_emb, attention_mask): its RoPE arrives in the
        # encoder_hidden_states slot and goes back there
        return processor(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)

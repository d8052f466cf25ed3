"""Helios (``HeliosTransformer3DModel``, ``HeliosPipeline``): 14B autoregressive video in chunks. Each chunk is
denoised with self-attention over ``[long history | mid history | short history | current chunk]``: the history
latents are patch-embedded at three compressions (``patch_long``, ``patch_mid``, ``patch_short``) and prepended to the
chunk's tokens. Only ``blocks.<i>.attn1`` becomes sparse, and only over the current chunk: the history prefix is a
dense prefix (``text_position = "leading"``: the router moves it behind the video tokens, where draft attention keeps
every tile holding it, as rows and as columns). ``attn2`` (text; with ``guidance_cross_attn`` only the chunk's
tokens) runs ``HeliosAttnProcessor`` unchanged. The history key amplification (``is_amplify_history``) is the
processor's own code before its ``dispatch_attention_fn`` call, so it is kept.

Facts (diffusers 0.42.1, ``transformer_helios.py``): the grid is the current chunk's, from the 5-D latents and
``config.patch_size``; ``HeliosAttention.forward`` calls its processor with six positional arguments, the last being
``original_context_length`` (the chunk's token count, an int), which ``DraftAttnProcessor.__call__`` receives in its
sixth parameter (``image_rotary_emb``) and hands on as ``key_rope`` (next to the RoPE table) or, for cross-attention
(no RoPE), as ``rope``; :meth:`HeliosFamily.call_default` puts it back in its place.

Tokens are gathered per call (no tile-order hooks): the model's RoPE module also builds the history tables, and its
output norm slices the chunk's tokens by position. ``HeliosPipeline`` resets its scheduler per chunk, so every chunk
has its own dense warm-up steps; the statistics cover the whole call, chunk by chunk (``section_loops``: its chunk
index is its ``k``). ``HeliosPyramidPipeline`` resets it per stage of each chunk too (section = chunk x stages +
stage, :meth:`HeliosFamily.pipeline_section`); the modular Helios pipelines run the same loops in blocks, which
``section_loops`` names too.
"""

from __future__ import annotations

import re

import torch
from diffusers.models.transformers.transformer_helios import HeliosAttention, HeliosAttnProcessor

from ..core.layout import VideoGrid
from .base import TINY_TEXT_DIM, LoadRecipe, ModelFamily, PipelineInput, TinyPipeline, numbered_roles
from .wan import tiny_wan_vae

_SELF = re.compile(r"^blocks\.(\d+)\.attn1$")


def build_tiny_helios(seed: int = 0, num_layers: int = 2, heads: int = 2):
    """A tiny random-weight ``HeliosPipeline`` (head dim 32, RoPE split 12/10/10 over frames, rows, columns; the
    history key amplification on) with a one-stage HeliosScheduler (HeliosPipeline gives it its sigmas; the
    pyramid pipeline uses the stages), float32 on CPU, no text encoder; Wan's tiny VAE."""
    from diffusers import HeliosPipeline, HeliosScheduler, HeliosTransformer3DModel

    torch.manual_seed(seed + 1)
    transformer = HeliosTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=32, in_channels=16, out_channels=16,
        text_dim=TINY_TEXT_DIM, freq_dim=32, ffn_dim=64, num_layers=num_layers, rope_dim=(12, 10, 10),
        is_amplify_history=True).eval()
    return HeliosPipeline(tokenizer=None, text_encoder=None, vae=tiny_wan_vae(seed),
                          scheduler=HeliosScheduler(stages=1), transformer=transformer)


class HeliosFamily(ModelFamily):
    """Helios T2V / I2V / V2V (Helios-Base, -Mid, -Distilled)."""

    name = "helios"
    title = "Helios"
    transformer_classes = ("HeliosTransformer3DModel",)
    text_position = "leading"  # the history prefix (routed families: everything before the video tokens)
    processor_class = HeliosAttnProcessor
    # as HeliosPipeline's docstring example loads it: float32 VAE, bfloat16 rest; --image (I2V) and --video (V2V) are
    # optional inputs of the same pipeline
    pipelines = {"HeliosPipeline": LoadRecipe(torch.bfloat16, torch.float32, torch.bfloat16,
                                              inputs=(PipelineInput("image", "image"),
                                                      PipelineInput("video", "video")))}
    other_pipelines = ("HeliosPyramidPipeline", "HeliosModularPipeline")
    # the chunk loop (for k in range(num_latent_chunk)) sets new timesteps per chunk and, in the pyramid pipelines,
    # per stage (for stage_idx / i_s in range(pyramid_num_stages)); modular pipelines run those loops in blocks
    section_loops = {"HeliosPipeline": "k", "HeliosPyramidPipeline": "k", "HeliosChunkLoopWrapper": "k",
                     "HeliosPyramidChunkDenoiseInner": "k", "HeliosPyramidDistilledChunkDenoiseInner": "k"}
    default_fps = 24
    # HeliosPipeline generates whole chunks of 4 (num_latent_frames_per_chunk - 1) + 1 = 33 frames (its default 9
    # latent frames a chunk) and cuts the video to 4k + 1 frames: 32k + 1 frames (33, 65, 129) come out as asked
    frame_step = 32
    tiny_variants = {"tiny-helios": TinyPipeline(build_tiny_helios, "HeliosPipeline")}
    # one chunk of 2 latent frames (5 frames) of 8 x 32 tokens, two 8x16 regions side by side, after a 640-token
    # history prefix (short 2 x 8 x 32, mid 1 x 4 x 16, long 4 x 2 x 8)
    tiny_call = dict(height=128, width=512, num_frames=5, num_latent_frames_per_chunk=2)

    # diffusers 0.42.1 has a plan for it (the blocks' attention and FFN inputs split over the ranks), but it was not
    # run with draft attention, whose leading history prefix a split sequence would cut
    cp_unsupported_because = ("diffusers' context-parallel plan for it splits the [history | chunk] sequence over the "
                              "ranks, which has not been verified with draft attention's dense history prefix")

    def pipeline_section(self, owner, owner_locals):
        # a pyramid chunk denoises in stages, each a loop with new timesteps: section = chunk x stages + stage
        chunk = super().pipeline_section(owner, owner_locals)
        stage = next((owner_locals[n] for n in ("stage_idx", "i_s") if type(owner_locals.get(n)) is int), None)
        stages = owner_locals.get("pyramid_num_stages")
        if chunk is None or stage is None or type(stages) is not int:
            return chunk
        return chunk * stages + stage

    def grid(self, transformer, latents):  # the current chunk [B, C, T, H, W]
        p_t, p_h, p_w = transformer.config.patch_size
        _, _, t, h, w = latents.shape
        return VideoGrid(t // p_t, h // p_h, w // p_w)

    def roles(self, transformer, current):
        return numbered_roles(transformer, current, HeliosAttention, _SELF, HeliosAttnProcessor)

    def call_default(self, processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope, **kwargs):
        # HeliosAttention.forward passes (rotary_emb, original_context_length) positionally; see the module docstring
        if "key_rope" in kwargs:
            rotary, length = rope, kwargs.pop("key_rope")
        elif isinstance(rope, torch.Tensor):
            rotary, length = rope, None
        else:
            rotary, length = None, rope
        return processor(attn, hidden_states, encoder_hidden_states, attention_mask, rotary, length, **kwargs)

    def tiny_prompt_kwargs(self, pipe, emb, text_len, valid_len, negative):
        out = dict(prompt_embeds=emb(1, text_len, TINY_TEXT_DIM))
        if negative:
            out["negative_prompt_embeds"] = emb(1, text_len, TINY_TEXT_DIM)
        return out

"""End-to-end transformer benchmark: full-size Wan2.1 / HunyuanVideo transformers (published configs, random
weights, bf16) on the GPU, one forward per attention setting, and the projected 50-step time.

Settings timed per model: diffusers' default attention (PyTorch SDPA), cuDNN SDPA
(``transformer.set_attention_backend("_native_cudnn")``), flash-attn-4 dense through our processor
(``dense_steps_fraction=1, dense_backend="fa4"``), and draft attention at each sparsity (``dense_steps_fraction=0``,
all video self-attention sparse). Random weights give the same compute as real ones; the output values are
meaningless. Projection: 50 steps, ``ceil(0.25 * 50) = 13`` dense steps on the fastest dense path, the rest sparse;
Wan runs two transformer calls per step (CFG), HunyuanVideo one (guidance-distilled).

``--fp8`` then quantizes the blocks' linear layers in place with torchao float8 (what ``enable_fast_stack(fp8=True)``
applies) and times the same settings again ("fp8 ..."), with the largest difference of the fp8 default forward
from the bf16 one. ``--profile`` adds, for every draft setting, one profiled forward and its CUDA kernel time by kind
(matmuls, attention kernels, the rest): where the time goes.

Every timed setting first runs at least one untimed warm-up forward at its own shape (``--warmup``, >= 1), so the
JIT compiles of flash-attn-4 / FlexAttention / torch.compile never land in a timing whatever the run order; the first
(compile-including) forward of each setting is reported separately as "first call".

Examples:
    python scripts/benchmark_e2e.py --models wan1.3b-480p wan14b-720p hunyuan-720p --out /tmp/e2e.md
    python scripts/benchmark_e2e.py --models wan1.3b-480p --compile regional       # torch.compile gain and breaks
    python scripts/benchmark_e2e.py --models wan14b-720p --fp8 --profile             # float8 linears, where time goes
    python scripts/benchmark_e2e.py --tiny                                           # CPU dry run, tiny configs
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from draftattention_diffusers import (disable_draft_attention, enable_draft_attention,  # noqa: E402
                                      get_draft_stats)

WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
WAN_14B = dict(WAN_1_3B, num_attention_heads=40, ffn_dim=13824, num_layers=40)
HUNYUAN = dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
               num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
               qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768,
               rope_theta=256.0, rope_axes_dim=(16, 56, 56))
# LTX-Video 0.9.x: diffusers' scripts/convert_ltx_to_diffusers.py (get_transformer_config: 2B for 0.9.0-0.9.5, 13B
# for 0.9.7) and LTXVideoTransformer3DModel's defaults; patch size 1, so the latent grid is the token grid
LTX_2B = dict(in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32,
              attention_head_dim=64, cross_attention_dim=2048, num_layers=28, caption_channels=4096)
LTX_13B = dict(LTX_2B, attention_head_dim=128, cross_attention_dim=4096, num_layers=48)
# LTX-2 19B (2.0, audio + video): diffusers' scripts/convert_ltx2_to_diffusers.py (get_ltx2_transformer_config "2.0",
# whose other values are LTX2VideoTransformer3DModel's defaults)
LTX2_19B = dict(in_channels=128, out_channels=128, num_attention_heads=32, attention_head_dim=128,
                cross_attention_dim=4096, audio_in_channels=128, audio_out_channels=128, audio_num_attention_heads=32,
                audio_attention_head_dim=64, audio_cross_attention_dim=2048, num_layers=48, caption_channels=3840,
                rope_type="split", perturbed_attn=False)
# LTX-2.3 22B: the same script's "2.3" config (gated attention, cross-attention AdaLN, perturbed attention for STG,
# prompts projected by the text connectors: encoder states arrive at the model's widths)
LTX23_22B = dict(LTX2_19B, gated_attn=True, cross_attn_mod=True, audio_gated_attn=True, audio_cross_attn_mod=True,
                 use_prompt_embeddings=False, perturbed_attn=True)
# CogVideoX: diffusers' scripts/convert_cogvideox_to_diffusers.py (5B: 42 layers, 48 heads, RoPE; 2B: 30 layers, 30
# heads, sincos positions; get_transformer_init_kwargs for 1.0 / 1.5) and CogVideoXTransformer3DModel's defaults
COGVIDEOX_5B = dict(num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512,
                    text_embed_dim=4096, num_layers=42, sample_height=60, sample_width=90, sample_frames=49,
                    patch_size=2, max_text_seq_length=226, use_rotary_positional_embeddings=True)
COGVIDEOX_2B = dict(COGVIDEOX_5B, num_attention_heads=30, num_layers=30, use_rotary_positional_embeddings=False)
COGVIDEOX15_5B = dict(COGVIDEOX_5B, patch_size_t=2, patch_bias=False, sample_height=300, sample_width=300,
                      sample_frames=81)
# HunyuanVideo-1.5 (8.3B; 480p and 720p checkpoints share it): HunyuanVideo15Transformer3DModel's defaults (diffusers
# docs, api/models/hunyuan_video15_transformer_3d); patch size 1 on a 16x VAE, so the latent grid is the token grid
HUNYUAN15 = dict(in_channels=65, out_channels=32, num_attention_heads=16, attention_head_dim=128, num_layers=54,
                 num_refiner_layers=2, mlp_ratio=4.0, patch_size=1, patch_size_t=1, qk_norm="rms_norm",
                 text_embed_dim=3584, text_embed_2_dim=1472, image_embed_dim=1152, rope_theta=256.0,
                 rope_axes_dim=(16, 56, 56), target_size=960, task_type="t2v")
# Wan2.1-VACE-14B: diffusers' scripts/convert_wan_to_diffusers.py ("Wan-VACE-14B"): Wan 14B plus a VACE block at every
# 5th layer; its control input is 96 channels (inactive + reactive video latents 2 x 16, the 8x8 mask folded to 64)
WAN_VACE_14B = dict(WAN_14B, vace_layers=[0, 5, 10, 15, 20, 25, 30, 35], vace_in_channels=96)
# SkyReels-V2 14B 720P (T2V-14B-720P and DF-14B-720P share it): diffusers' scripts/convert_skyreelsv2_to_diffusers.py,
# Wan 14B's shape without sample-info (fps) injection
SKYREELS_V2_14B = dict(WAN_14B, inject_sample_info=False)
# ChronoEdit-14B: a Wan2.1-I2V-14B transformer (its README: "a Wan2.1-I2V backbone"; ChronoEditTransformer3DModel's
# defaults): noise + mask + image latents (36 channels), CLIP ViT-H image tokens (1280 wide) through added K/V
CHRONOEDIT_14B = dict(WAN_14B, in_channels=36, image_dim=1280, added_kv_proj_dim=5120, rope_temporal_skip_len=8)
# AnyFlow-Wan2.1-T2V-14B: diffusers' scripts/convert_anyflow_to_diffusers.py builds it from Wan2.1-T2V-14B's transformer
# config with gate_value=0.25, deltatime_type="r"
# Wan2.2-Animate-14B: its diffusers config.json (Wan-AI/Wan2.2-Animate-14B-Diffusers): a Wan2.1-I2V-14B transformer
# (36 input channels, CLIP image tokens through added K/V) with WanAnimateTransformer3DModel's motion/face defaults
WAN_ANIMATE_14B = dict(WAN_14B, in_channels=36, latent_channels=16, image_dim=1280, added_kv_proj_dim=5120)
# Helios 14B (Helios-Base / -Mid / -Distilled): HeliosTransformer3DModel's defaults (a Wan-14B-sized transformer,
# RoPE split 44/42/42, guidance cross-attention, zero history timestep, multi-term memory patches; no history key
# amplification, as the Helios team's training kwargs set it)
HELIOS_14B = dict({k: v for k, v in WAN_14B.items() if k != "rope_max_seq_len"}, rope_dim=(44, 42, 42),
                  guidance_cross_attn=True, zero_history_timestep=True, has_multi_term_memory_patch=True,
                  is_amplify_history=False)
ANYFLOW_14B = dict({k: v for k, v in WAN_14B.items() if k != "qk_norm"}, gate_value=0.25, deltatime_type="r")
# Cosmos-Predict2.5 2B / 14B: diffusers' scripts/convert_cosmos_to_diffusers.py (TRANSFORMER_CONFIGS
# "Cosmos-2.5-Predict-Base-2B" / "-14B"); the prompt is Qwen2.5-VL's 28 hidden layers concatenated (100352 wide),
# projected by crossattn_proj. concat_padding_mask is off here: the model resizes its padding mask with torchvision,
# which the benchmark does not need; that only drops one input channel of the patch embedding (attention identical)
COSMOS25_2B = dict(in_channels=16 + 1, out_channels=16, num_attention_heads=16, attention_head_dim=128, num_layers=28,
                   mlp_ratio=4.0, text_embed_dim=1024, adaln_lora_dim=256, max_size=(128, 240, 240),
                   patch_size=(1, 2, 2), rope_scale=(1.0, 3.0, 3.0), concat_padding_mask=False,
                   extra_pos_embed_type=None, use_crossattn_projection=True, crossattn_proj_in_channels=100352,
                   encoder_hidden_states_channels=1024)
COSMOS25_14B = dict(COSMOS25_2B, num_attention_heads=40, num_layers=36)
# Motif-Video 2B: 12 dual-stream + 16 single-stream + 8 DDT decoder blocks (diffusers' Motif-Video docs), head dim 128
# with RoPE 16/56/56 and 12 heads (Motif's ComfyUI loader: attention_head_dim 128, rope_axes_dim [16, 56, 56],
# num_decoder_layers 8; 12 heads is the 2B model: 2.15B parameters with the shared text cross-attention in every
# block); noise + condition latents + mask (33 channels). The T5Gemma2 text width (text_embed_dim) was not read from
# the checkpoint: it only sizes the text projection, not the attention
MOTIF_VIDEO_2B = dict(in_channels=33, out_channels=16, num_attention_heads=12, attention_head_dim=128, num_layers=12,
                      num_single_layers=24, num_decoder_layers=8, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
                      text_embed_dim=2304, rope_axes_dim=(16, 56, 56), enable_text_cross_attention_dual=True,
                      enable_text_cross_attention_single=True)
# HunyuanVideo FramePack (FramePackI2V_HY, FramePack-F1): HunyuanVideo 13B's transformer with FramePack's history
# patch embedder and a projection of FlowRedux's SigLIP image tokens (1152 wide; the has_clean_x_embedder /
# has_image_proj / image_proj_dim arguments of HunyuanVideoFramepackTransformer3DModel)
FRAMEPACK = dict(HUNYUAN, has_image_proj=True, image_proj_dim=1152, has_clean_x_embedder=True)

# ConsisID (ConsisID-preview): CogVideoX-5B-I2V's transformer shape (noise + image latents, RoPE, learned positions),
# which ConsisID builds on, plus its face modules at ConsisIDTransformer3DModel's defaults (a perceiver cross-attention
# every 2nd block); diffusers has no ConsisID conversion script and the checkpoint's config.json was not read here
CONSISID = dict(COGVIDEOX_5B, in_channels=32, use_learned_positional_embeddings=True, is_train_face=True,
                cross_attn_interval=2)
# Mochi 1 preview (10B): MochiTransformer3DModel's defaults are its published config (48 layers, 24 heads of 128,
# 12 latent channels, T5-XXL text of 256 tokens); 2x2 patches on an 8x spatial, 6x temporal VAE
MOCHI = dict(patch_size=2, num_attention_heads=24, attention_head_dim=128, num_layers=48, pooled_projection_dim=1536,
             in_channels=12, text_embed_dim=4096, time_embed_dim=256, max_sequence_length=256)
# EasyAnimateV5.1 12B: the transformer config.json of alibaba-pai/EasyAnimateV5.1-12b-zh-InP (48 MMDiT blocks, 48
# heads of 64, Qwen2-VL-7B text of 3584 through an RMSNorm, add_norm_text_encoder) with the T2V input width (16 latent
# channels; the InP checkpoint adds 17 for the mask and masked video); 2x2 patches on an 8x spatial, 4x temporal VAE
EASYANIMATE_12B = dict(num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16, patch_size=2,
                       sample_width=90, sample_height=60, num_layers=48, mmdit_layers=48, time_embed_dim=512,
                       add_norm_text_encoder=True, text_embed_dim=3584, text_embed_dim_t5=None)
# Allegro (2.8B): AllegroTransformer3DModel's defaults, written for rhymes-ai/Allegro (32 layers, 24 heads of 96,
# T5-XXL captions of 4096, 2x2 patches on an 8x spatial, 4x temporal VAE, RoPE interpolation 2.2 / 2.0 / 2.0)
ALLEGRO = dict(patch_size=2, patch_size_t=1, num_attention_heads=24, attention_head_dim=96, in_channels=4,
               out_channels=4, num_layers=32, cross_attention_dim=2304, attention_bias=True, sample_height=90,
               sample_width=160, sample_frames=22, caption_channels=4096, interpolation_scale_t=2.2,
               interpolation_scale_h=2.0, interpolation_scale_w=2.0)
# Kandinsky 5.0 Video Lite (2B; T2V sft/pretrain/nocfg/distilled 5 s) and Pro (19B; T2V/I2V sft 5 s): the dit_params of
# the Kandinsky team's inference configs (github.com/ai-forever/Kandinsky-5 configs/config_5s_sft.yaml for Lite,
# github.com/kandinskylab/kandinsky-5 configs/k5_pro_t2v_5s_sft_sd.yaml / _hd.yaml for Pro; diffusers has no
# conversion script for it). visual_cond is set on the T2V checkpoints too: Kandinsky5T2VPipeline feeds zero image
# latents and a zero mask (2 x 16 + 1 channels). Lite: 2.008B parameters, Pro: 19.31B (counted on the meta device).
# attention_type stays "regular" (full attention: the 5 s Lite configs' "flash"); draft attention refuses "nabla"
KANDINSKY5_LITE = dict(in_visual_dim=16, out_visual_dim=16, in_text_dim=3584, in_text_dim2=768, time_dim=512,
                       patch_size=(1, 2, 2), model_dim=1792, ff_dim=7168, num_text_blocks=2, num_visual_blocks=32,
                       axes_dims=(16, 24, 24), visual_cond=True)
KANDINSKY5_PRO = dict(KANDINSKY5_LITE, time_dim=1024, model_dim=4096, ff_dim=16384, num_text_blocks=4,
                      num_visual_blocks=60, axes_dims=(32, 48, 48))
# Kandinsky 6.0: Kandinsky6Transformer3DModel's defaults (60 fused video+audio blocks of 4096, head dim 32+48+48 =
# 128, audio branch as wide as the video one: 48B parameters, 96 GB in bf16, an H200 job) with the flags its docstring
# says the released checkpoints set (ca_rope, cross_gates, fix_modulation; two visual token types for I2V). The
# checkpoints' transformer/config.json was not readable here: the Pro / Lite sizes may differ
KANDINSKY6 = dict(in_visual_dim=16, out_visual_dim=16, in_text_dim=3584, in_text_dim2=768, time_dim=1024,
                  patch_size=(1, 2, 2), model_dim=4096, ff_dim=16384, num_text_blocks=4, num_visual_blocks=60,
                  axes_dims=(32, 48, 48), visual_cond=True, in_audio_dim=20, out_audio_dim=20, text_token_padding=True,
                  ca_rope=True, cross_gates=True, fix_modulation=True, visual_token_type_num_embeddings=2)
# MiniMax-H3 (the t2va / fl2va transformer/ partition): MiniMaxH3Transformer3DModel's defaults, which its docstring and
# diffusers' docs (api/models/minimax_h3_transformer3d, api/pipelines/minimax_h3) give as the released checkpoint's: 50
# blocks of 5376 (56 heads of 128), 24 video latent channels in (1, 2, 2) patches on a 16x spatial VAE, 32 audio latent
# channels, Qwen3-VL text of 5120 (hidden_states[50]); 33.12B parameters, 61.7 GiB in bf16
MINIMAX_H3 = dict(num_attention_heads=56, attention_head_dim=128, hidden_size=5376, num_layers=50,
                  num_refiner_layers=2, ffn_dim=14336, in_channels=24, audio_in_channels=32, patch_size=(1, 2, 2),
                  text_dim=5120, freq_dim=256, time_embed_hidden_dim=5376, time_embed_dim=2688, rope_freq_dim=16,
                  rope_theta=10000.0)

# name: (family, config, (latent frames, latent height, latent width), transformer calls per step, label)
MODELS = {
    # ConsisID at its example's 480x720, 49 frames (13 latent frames of 30x45 tokens, 226 text tokens first); CFG as a
    # batch of 2 in one call (counted as 2 calls)
    "consisid-480p": ("consisid", CONSISID, (13, 60, 90), 2, "ConsisID (CogVideoX-5B-I2V), 480x720, 49 frames"),
    # Mochi 1 at its native 480x848, 163 frames (5.4 s at 30 fps: 28 latent frames of 30x53 tokens); CFG as a batch of
    # 2 in one call (counted as 2 calls)
    "mochi-480p": ("mochi", MOCHI, (28, 60, 106), 2, "Mochi 1 (10B), 480x848, 163 frames"),
    # EasyAnimateV5.1 12B at EasyAnimatePipeline's default 512x512 and at 1024x1024 (its largest training size), 49
    # frames (13 latent frames of 32x32 / 64x64 tokens, after 256 text tokens); CFG as a batch of 2 in one call
    "easyanimate-12b-512p": ("easyanimate", EASYANIMATE_12B, (13, 64, 64), 2,
                             "EasyAnimateV5.1 12B, 512x512, 49 frames"),
    "easyanimate-12b-1024p": ("easyanimate", EASYANIMATE_12B, (13, 128, 128), 2,
                              "EasyAnimateV5.1 12B, 1024x1024, 49 frames"),
    # Allegro at its pipeline's defaults: 720x1280, 88 frames (22 latent frames of 45x80 tokens: 79,200 tokens, video
    # only; the prompt enters through cross-attention); CFG as a batch of 2 in one call
    "allegro-720p": ("allegro", ALLEGRO, (22, 90, 160), 2, "Allegro 2.8B, 720x1280, 88 frames"),
    "wan1.3b-480p": ("wan", WAN_1_3B, (21, 60, 104), 2, "Wan2.1 1.3B, 480x832, 81 frames"),
    "wan14b-720p": ("wan", WAN_14B, (21, 90, 160), 2, "Wan2.1 14B, 720x1280, 81 frames"),
    "hunyuan-720p": ("hunyuan", HUNYUAN, (33, 90, 160), 1, "HunyuanVideo, 720x1280, 129 frames"),
    # LTX-Video at its native 704x1216 (VAE: 32x spatial, 8x temporal -> 22x38 tokens per frame); CFG runs as a batch
    # of 2 in one call (counted as 2 calls); 121 frames -> 16 latent frames, 161 -> 21
    "ltx2b-704p": ("ltx", LTX_2B, (16, 22, 38), 2, "LTX-Video 0.9.x 2B, 704x1216, 121 frames"),
    "ltx13b-704p": ("ltx", LTX_13B, (16, 22, 38), 2, "LTX-Video 0.9.7 13B, 704x1216, 121 frames"),
    "ltx13b-704p-161f": ("ltx", LTX_13B, (21, 22, 38), 2, "LTX-Video 0.9.7 13B, 704x1216, 161 frames"),
    # LTX-2 at 704x1280 (22x40 tokens per frame, 121 frames at 24 fps -> 16 latent frames and 126 audio tokens); with
    # LTX2Pipeline's defaults a step is CFG as a batch of 2, plus one STG and one modality-isolation call: 4
    "ltx2-19b-704p": ("ltx2", LTX2_19B, (16, 22, 40), 4, "LTX-2 19B (audio+video), 704x1280, 121 frames"),
    "ltx2.3-22b-704p": ("ltx2", LTX23_22B, (16, 22, 40), 4, "LTX-2.3 22B (audio+video), 704x1280, 121 frames"),
    # CogVideoX at the model cards' sizes (VAE: 8x spatial, 4x temporal; 2x2 patches, 1.5 also 2 frames); CFG runs as
    # a batch of 2 in one call (counted as 2 calls); 49 frames -> 13 latent frames, 81 -> 21 padded to 22 for 1.5
    "cogvideox2b-480p": ("cogvideox", COGVIDEOX_2B, (13, 60, 90), 2, "CogVideoX-2B, 480x720, 49 frames"),
    "cogvideox5b-480p": ("cogvideox", COGVIDEOX_5B, (13, 60, 90), 2, "CogVideoX-5B, 480x720, 49 frames"),
    "cogvideox1.5-5b-768p": ("cogvideox", COGVIDEOX15_5B, (22, 96, 170), 2, "CogVideoX1.5-5B, 768x1360, 81 frames"),
    # HunyuanVideo-1.5 720p T2V (VAE: 16x spatial, 4x temporal; 121 frames -> 31 latent frames); its guider runs CFG
    # as two calls per step (guidance 6.0)
    "hunyuan15-720p": ("hunyuan15", HUNYUAN15, (31, 45, 80), 2, "HunyuanVideo-1.5, 720x1280, 121 frames"),
    # Wan2.1 VACE 14B at Wan's 720p (81 frames -> 21 latent frames); the VACE blocks' self-attention runs over the
    # control tokens on the same grid; CFG as two calls per step (WanVACEPipeline, guidance 5.0)
    "wan-vace14b-720p": ("wan_vace", WAN_VACE_14B, (21, 90, 160), 2, "Wan2.1 VACE 14B, 720x1280, 81 frames"),
    # SkyReels-V2 14B 720P: the diffusers SkyReels-V2 docs give 720x1280 and 121 frames (base_num_frames) for the 720P
    # models (121 frames -> 31 latent frames); CFG as two calls per step (SkyReelsV2Pipeline, guidance 6.0)
    "skyreels-v2-14b-720p": ("skyreels_v2", SKYREELS_V2_14B, (31, 90, 160), 2,
                             "SkyReels-V2 14B, 720x1280, 121 frames"),
    # ChronoEdit-14B at 720x1280: 5 frames (2 latent frames) as its pipeline runs by default, and 29 frames (8 latent
    # frames) with enable_temporal_reasoning (the ChronoEdit repository's setting); CFG as two calls per step
    "chronoedit-14b-720p": ("chronoedit", CHRONOEDIT_14B, (2, 90, 160), 2, "ChronoEdit-14B, 720x1280, 5 frames"),
    "chronoedit-14b-720p-29f": ("chronoedit", CHRONOEDIT_14B, (8, 90, 160), 2,
                                "ChronoEdit-14B, 720x1280, 29 frames (temporal reasoning)"),
    # AnyFlow 14B T2V: its docstring example (480x832, 33 frames -> 9 latent frames, 4 steps) and Wan's 720p 81 frames;
    # guidance 1.0 (CFG folded into the weights): one call per step
    "anyflow14b-480p": ("anyflow", ANYFLOW_14B, (9, 60, 104), 1, "AnyFlow Wan2.1 14B, 480x832, 33 frames"),
    "anyflow14b-720p": ("anyflow", ANYFLOW_14B, (21, 90, 160), 1, "AnyFlow Wan2.1 14B, 720x1280, 81 frames"),
    # Cosmos-Predict2.5 at its pipeline's defaults: 704x1280, 93 frames (Wan VAE -> 24 x 88 x 160 latents, 2x2 patches:
    # 24 x 44 x 80 = 84,480 tokens); CFG (guidance 7.0) as two calls per step. Both fit one 80 GB GPU in bf16 (14B: 28 GB
    # of weights)
    "cosmos2.5-2b-704p": ("cosmos", COSMOS25_2B, (24, 88, 160), 2, "Cosmos-Predict2.5 2B, 704x1280, 93 frames"),
    "cosmos2.5-14b-704p": ("cosmos", COSMOS25_14B, (24, 88, 160), 2, "Cosmos-Predict2.5 14B, 704x1280, 93 frames"),
    # Wan2.2-Animate-14B at WanAnimatePipeline's defaults: 720x1280, one 77-frame segment (the reference latent frame
    # + 20 latent frames), guidance 1.0: one call per step
    "wan-animate14b-720p": ("wan_animate", WAN_ANIMATE_14B, (21, 90, 160), 1,
                            "Wan2.2-Animate-14B, 720x1280, 77-frame segment"),
    # Helios 14B at HeliosPipeline's defaults: 384x640, one chunk of 9 latent frames (8,640 tokens) after its
    # history prefix (short 2 x 24 x 40, mid 1 x 12 x 20, long 4 x 6 x 10: 2,400 tokens, kept dense); CFG
    # (guidance 5.0) as two calls per step. Times one chunk's forward (a 132-frame video is 4 chunks)
    "helios14b-384p": ("helios", HELIOS_14B, (9, 48, 80), 2, "Helios 14B, 384x640, one 33-frame chunk"),
    # Motif-Video 2B at its docs' 736x1280, 121 frames (Wan VAE -> 31 x 92 x 160 latents, 2x2 patches: 31 x 46 x 80 =
    # 114,080 tokens); guidance through its guider: two calls per step
    "motif-video-2b-736p": ("motif_video", MOTIF_VIDEO_2B, (31, 92, 160), 2, "Motif-Video 2B, 736x1280, 121 frames"),
    # FramePack: one section's forward (HunyuanVideoFramepackPipeline's default window of 9 latent frames; the video is
    # several sections) at the pipeline's default 720x1280 (window 9 x 45 x 80 = 32,400 tokens after a 9,080-token
    # dense history prefix: clean 2 x 45 x 80, 2x 1 x 23 x 40, 4x 4 x 12 x 20) and at the docs' 512x512 (9 x 32 x 32
    # after 2,560); guidance-distilled (true_cfg_scale 1): one call per step
    "framepack-720p": ("framepack", FRAMEPACK, (9, 90, 160), 1,
                       "HunyuanVideo FramePack, 720x1280, one 9-latent-frame section"),
    "framepack-512p": ("framepack", FRAMEPACK, (9, 64, 64), 1,
                       "HunyuanVideo FramePack, 512x512, one 9-latent-frame section"),
    # Kandinsky 5.0 Video Lite at Kandinsky5T2VPipeline.__call__'s defaults, which its docs example and this package's
    # kandinsky5-lite-t2v-512p preset also use: 512x768, 121 frames (HunyuanVideo VAE, 8x spatial / 4x temporal: 31
    # latent frames of 64x96, 2x2 patches: 31 x 32 x 48 = 47,616 video tokens; the prompt only in cross-attention);
    # guidance 5.0 with the pipeline's default negative prompt: two calls per step. Pro at its docs' T2V example
    # 768x1024, 121 frames (31 x 48 x 64 = 95,232 tokens; 38.6 GB of bf16 weights): full attention as configured
    # here; the Kandinsky team's HD Pro config runs NABLA at this size (their 512 SD config runs full attention)
    "kandinsky5-lite-512p": ("kandinsky5", KANDINSKY5_LITE, (31, 64, 96), 2,
                             "Kandinsky 5.0 Video Lite 2B, 512x768, 121 frames"),
    "kandinsky5-pro-768p": ("kandinsky5", KANDINSKY5_PRO, (31, 96, 128), 2,
                            "Kandinsky 5.0 Video Pro 19B (full attention), 768x1024, 121 frames"),
    # Kandinsky 6.0 at its pipeline example's 480x864, 121 frames (31 latent frames of 30x54 tokens: 50,220 video
    # tokens, video-only self-attention) with 218 audio tokens; the distilled checkpoints run guidance 1.0: one call
    "kandinsky6-480p": ("kandinsky6", KANDINSKY6, (31, 60, 108), 1,
                        "Kandinsky 6.0 (class defaults, video+audio), 480x864, 121 frames"),
    # the same with 40 of its 60 fused blocks (32.8B, 61 GiB in bf16, as MiniMax-H3's 33B that ran on one 80 GB H100):
    # what fits an H100 where no H200 is lent; every block is the same, so the per-forward ratios are the full model's
    # up to the embeddings' and output layer's small share
    "kandinsky6-480p-40blocks": ("kandinsky6", dict(KANDINSKY6, num_visual_blocks=40), (31, 60, 108), 1,
                                 "Kandinsky 6.0, 40 of its 60 blocks (fits one 80 GB H100), 480x864, 121 frames"),
    # MiniMax-H3 t2va at its modular pipeline's defaults (MiniMaxH3PrepareLayoutStep): the 16:9 canvas of its
    # canvas_short_edge 768 / canvas_max_pixels 768 * 1344 (768x1344), 124 frames at 24 fps (17n + 5 -> 5n + 2 = 37
    # latent frames of 48x84, 2x2 patches: 37 x 24 x 42 = 37,296 video tokens) after the prompt's `text_tokens` rows
    # (no padding) and 2 x 207 stereo audio rows, all one packed sequence in every block's self-attention (the video
    # tail sparse, the rest a dense prefix). Guidance-distilled: one call per step (its num_inference_steps counts sigma
    # points: 50 drive 49 forwards). The bf16 weights (61.7 GiB; build() makes them in bf16, as float32 would not fit)
    # and one forward fit one 80 GB H100 (docs/benchmarks.md section 14)
    "minimax-h3-768p": ("minimax_h3", MINIMAX_H3, (37, 48, 84), 1,
                        "MiniMax-H3 33B (video+audio), 768x1344, 124 frames"),
    # tiny configs for a CPU dry run of this script
    "tiny-minimax-h3": ("minimax_h3", dict(MINIMAX_H3, num_attention_heads=2, attention_head_dim=32, hidden_size=64,
                                           num_layers=2, num_refiner_layers=1, ffn_dim=64, in_channels=4,
                                           audio_in_channels=4, text_dim=32, freq_dim=32, time_embed_hidden_dim=32,
                                           time_embed_dim=32, rope_freq_dim=4),
                        (2, 16, 64), 1, "tiny MiniMax-H3 (CPU dry run)"),
    "tiny-kandinsky5": ("kandinsky5", dict(KANDINSKY5_LITE, in_text_dim=32, in_text_dim2=16, time_dim=32, model_dim=64,
                                           ff_dim=64, num_text_blocks=1, num_visual_blocks=2, axes_dims=(8, 12, 12)),
                        (2, 16, 64), 2, "tiny Kandinsky 5.0 Video (CPU dry run)"),
    "tiny-kandinsky6": ("kandinsky6", dict(KANDINSKY6, in_text_dim=32, in_text_dim2=16, time_dim=32, model_dim=64,
                                           ff_dim=64, num_text_blocks=1, num_visual_blocks=2, axes_dims=(8, 12, 12)),
                        (2, 16, 64), 1, "tiny Kandinsky 6.0 (CPU dry run)"),
    "tiny-consisid": ("consisid", dict(CONSISID, num_attention_heads=2, attention_head_dim=48, num_layers=2,
                                       time_embed_dim=32, text_embed_dim=32, cross_attn_interval=1,
                                       cross_attn_dim_head=16, cross_attn_num_heads=2, LFE_id_dim=16, LFE_vit_dim=16,
                                       LFE_depth=2, LFE_dim_head=8, LFE_num_heads=2, LFE_num_id_token=2,
                                       LFE_num_querie=4, LFE_output_dim=64, LFE_ff_mult=1, LFE_num_scale=2,
                                       sample_height=32, sample_width=64, sample_frames=5),
                      (2, 32, 64), 2, "tiny ConsisID (CPU dry run)"),
    "tiny-mochi": ("mochi", dict(MOCHI, num_attention_heads=2, attention_head_dim=32, num_layers=2,
                                 pooled_projection_dim=16, text_embed_dim=32, time_embed_dim=8),
                   (2, 32, 64), 2, "tiny Mochi (CPU dry run)"),
    "tiny-easyanimate": ("easyanimate", dict(EASYANIMATE_12B, num_attention_heads=2, attention_head_dim=32,
                                             num_layers=2, mmdit_layers=1, time_embed_dim=32, text_embed_dim=32),
                         (2, 16, 64), 2, "tiny EasyAnimate (CPU dry run)"),
    "tiny-allegro": ("allegro", dict(ALLEGRO, num_attention_heads=2, attention_head_dim=48, num_layers=2,
                                     cross_attention_dim=96, caption_channels=32), (2, 16, 64), 2,
                     "tiny Allegro (CPU dry run)"),
    "tiny-wan": ("wan", dict(WAN_1_3B, num_attention_heads=2, attention_head_dim=64, ffn_dim=64, num_layers=2,
                             text_dim=32, freq_dim=32), (2, 32, 64), 2, "tiny Wan (CPU dry run)"),
    "tiny-hunyuan": ("hunyuan", dict(HUNYUAN, num_attention_heads=2, attention_head_dim=16, num_layers=1,
                                     num_single_layers=1, num_refiner_layers=1, text_embed_dim=32,
                                     pooled_projection_dim=16, rope_axes_dim=(4, 6, 6)),
                     (2, 32, 64), 1, "tiny HunyuanVideo (CPU dry run)"),
    "tiny-ltx": ("ltx", dict(LTX_2B, num_attention_heads=2, attention_head_dim=32, cross_attention_dim=64, num_layers=2,
                             caption_channels=32), (2, 8, 40), 2, "tiny LTX-Video (CPU dry run)"),
    "tiny-ltx2": ("ltx2", dict(LTX2_19B, in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=32,
                               cross_attention_dim=64, audio_in_channels=4, audio_out_channels=4,
                               audio_num_attention_heads=2, audio_attention_head_dim=8, audio_cross_attention_dim=16,
                               num_layers=2, caption_channels=32), (2, 8, 40), 4, "tiny LTX-2 (CPU dry run)"),
    "tiny-ltx2.3": ("ltx2", dict(LTX23_22B, in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=32,
                                 cross_attention_dim=64, audio_in_channels=4, audio_out_channels=4,
                                 audio_num_attention_heads=2, audio_attention_head_dim=8, audio_cross_attention_dim=16,
                                 num_layers=2, caption_channels=32), (2, 8, 40), 4, "tiny LTX-2.3 (CPU dry run)"),
    "tiny-cogvideox": ("cogvideox", dict(COGVIDEOX_5B, num_attention_heads=2, attention_head_dim=32, num_layers=2,
                                         time_embed_dim=32, text_embed_dim=32), (2, 32, 64), 2,
                       "tiny CogVideoX (CPU dry run)"),
    "tiny-cogvideox1.5": ("cogvideox", dict(COGVIDEOX15_5B, num_attention_heads=2, attention_head_dim=32, num_layers=2,
                                            time_embed_dim=32, text_embed_dim=32), (4, 32, 64), 2,
                          "tiny CogVideoX 1.5 (CPU dry run)"),
    "tiny-hunyuan15": ("hunyuan15", dict(HUNYUAN15, in_channels=9, out_channels=4, num_attention_heads=2,
                                         attention_head_dim=16, num_layers=1, num_refiner_layers=1, text_embed_dim=32,
                                         text_embed_2_dim=16, image_embed_dim=16, rope_axes_dim=(4, 6, 6)),
                       (2, 16, 32), 2, "tiny HunyuanVideo-1.5 (CPU dry run)"),
    "tiny-wan-vace": ("wan_vace", dict(WAN_VACE_14B, num_attention_heads=2, attention_head_dim=64, ffn_dim=64,
                                       num_layers=2, text_dim=32, freq_dim=32, vace_layers=[0, 1]),
                      (2, 32, 64), 2, "tiny Wan VACE (CPU dry run)"),
    "tiny-skyreels-v2": ("skyreels_v2", dict(SKYREELS_V2_14B, num_attention_heads=2, attention_head_dim=64, ffn_dim=64,
                                             num_layers=2, text_dim=32, freq_dim=32),
                         (2, 32, 64), 2, "tiny SkyReels-V2 (CPU dry run)"),
    "tiny-chronoedit": ("chronoedit", dict(CHRONOEDIT_14B, num_attention_heads=2, attention_head_dim=64, ffn_dim=64,
                                           num_layers=2, text_dim=32, freq_dim=32, image_dim=32, added_kv_proj_dim=128),
                        (2, 32, 64), 2, "tiny ChronoEdit (CPU dry run)"),
    "tiny-cosmos": ("cosmos", dict(COSMOS25_2B, num_attention_heads=2, attention_head_dim=32, num_layers=2,
                                   adaln_lora_dim=16, text_embed_dim=32, crossattn_proj_in_channels=32,
                                   encoder_hidden_states_channels=32), (2, 16, 64), 2, "tiny Cosmos (CPU dry run)"),
    "tiny-anyflow": ("anyflow", dict(ANYFLOW_14B, num_attention_heads=2, attention_head_dim=64, ffn_dim=64,
                                     num_layers=2, text_dim=32, freq_dim=32), (2, 32, 64), 1,
                     "tiny AnyFlow (CPU dry run)"),
    "tiny-wan-animate": ("wan_animate", dict(WAN_ANIMATE_14B, num_attention_heads=2, attention_head_dim=64,
                                             ffn_dim=64, num_layers=2, text_dim=32, freq_dim=32, image_dim=32,
                                             added_kv_proj_dim=128, motion_encoder_size=16,
                                             motion_encoder_channel_sizes={"16": 8, "8": 8, "4": 8},
                                             motion_style_dim=16, motion_dim=4, motion_encoder_dim=16,
                                             face_encoder_hidden_dim=16, face_encoder_num_heads=2,
                                             inject_face_latents_blocks=1),
                         (3, 32, 64), 1, "tiny Wan-Animate (CPU dry run)"),
    "tiny-helios": ("helios", dict(HELIOS_14B, num_attention_heads=2, attention_head_dim=32, ffn_dim=64, num_layers=2,
                                   text_dim=32, freq_dim=32, rope_dim=(12, 10, 10)), (2, 32, 64), 2,
                    "tiny Helios (CPU dry run)"),
    "tiny-motif-video": ("motif_video", dict(MOTIF_VIDEO_2B, num_attention_heads=2, attention_head_dim=32, num_layers=1,
                                             num_single_layers=2, num_decoder_layers=1, text_embed_dim=32,
                                             rope_axes_dim=(8, 12, 12)), (2, 32, 64), 2,
                         "tiny Motif-Video (CPU dry run)"),
    "tiny-framepack": ("framepack", dict(FRAMEPACK, num_attention_heads=2, attention_head_dim=16, num_layers=1,
                                         num_single_layers=1, num_refiner_layers=1, text_embed_dim=32,
                                         pooled_projection_dim=16, rope_axes_dim=(4, 6, 6), image_proj_dim=32),
                       (2, 16, 64), 1, "tiny HunyuanVideo FramePack (CPU dry run)"),
}
DEFAULT_MODELS = ["wan1.3b-480p", "wan14b-720p", "hunyuan-720p"]
# --tiny without --models
TINY_MODELS = ["tiny-wan", "tiny-hunyuan", "tiny-wan-vace", "tiny-skyreels-v2", "tiny-chronoedit"]
STEPS, DENSE_FRACTION = 50, 0.25


def _wan_inputs(config: dict, latents: torch.Tensor, rnd, text_tokens: int) -> dict:
    return dict(hidden_states=latents, timestep=torch.tensor([500], device=latents.device),
                encoder_hidden_states=rnd(1, 512, config["text_dim"]), return_dict=False)


def _wan_vace_inputs(config: dict, latents: torch.Tensor, rnd, text_tokens: int) -> dict:
    # as WanVACEPipeline calls it: Wan's inputs plus the control latents (video latents and mask, vace_in_channels) on
    # the same latent grid, and conditioning_scale 1.0 per VACE layer in the transformer's dtype
    _, _, f, h, w = latents.shape
    return dict(_wan_inputs(config, latents, rnd, text_tokens),
                control_hidden_states=rnd(1, config["vace_in_channels"], f, h, w),
                control_hidden_states_scale=torch.ones(len(config["vace_layers"]), device=latents.device,
                                                       dtype=latents.dtype))


def _chronoedit_inputs(config: dict, latents: torch.Tensor, rnd, text_tokens: int) -> dict:
    # as ChronoEditPipeline calls it: Wan's inputs (512 text tokens) plus the 257 CLIP image tokens of the input image
    return dict(_wan_inputs(config, latents, rnd, text_tokens),
                encoder_hidden_states_image=rnd(1, 257, config["image_dim"]))


def _anyflow_inputs(config: dict, latents: torch.Tensor, rnd, text_tokens: int) -> dict:
    # as AnyFlowPipeline calls it: latents [B, F, C, H, W], one source and one target timestep per latent frame
    latents = latents.transpose(1, 2).contiguous()
    f = latents.shape[1]
    t = torch.full((1, f), 500.0, device=latents.device)
    return dict(hidden_states=latents, timestep=t, r_timestep=t - 250.0,
                encoder_hidden_states=rnd(1, 512, config["text_dim"]), return_dict=False)


def _wan_animate_inputs(config: dict, latents: torch.Tensor, rnd, text_tokens: int) -> dict:
    # as WanAnimatePipeline calls it: latents of the reference frame + the segment (noise, reference and conditioning
    # latents: in_channels), pose latents of the segment's frames, the segment's face video (4 (f - 1) + 1 frames at
    # motion_encoder_size; its encoder gives f - 1 motion frames), 512 text and 257 CLIP image tokens
    _, _, f, h, w = latents.shape
    size = config.get("motion_encoder_size", 512)
    return dict(_wan_inputs(config, latents, rnd, text_tokens),
                encoder_hidden_states_image=rnd(1, 257, config["image_dim"]),
                pose_hidden_states=rnd(1, config["latent_channels"], f - 1, h, w),
                face_pixel_values=rnd(1, 3, 4 * (f - 2) + 1, size, size))


def _helios_inputs(config: dict, latents: torch.Tensor, rnd, text_tokens: int) -> dict:
    # as HeliosPipeline (keep_first_frame, history_sizes [16, 2, 1]) calls it for a chunk of f latent frames: frame
    # indices 0 (first-frame prefix), 1-16 (long), 17-18 (mid), 19 (1x) and the chunk's after them; history latents
    # at the chunk's latent size
    _, c, f, h, w = latents.shape
    idx = torch.arange(20 + f, device=latents.device).unsqueeze(0)
    return dict(hidden_states=latents, timestep=torch.tensor([500.0], device=latents.device),
                encoder_hidden_states=rnd(1, 512, config["text_dim"]), indices_hidden_states=idx[:, 20:],
                indices_latents_history_short=idx[:, [0, 19]], indices_latents_history_mid=idx[:, 17:19],
                indices_latents_history_long=idx[:, 1:17], latents_history_short=rnd(1, c, 2, h, w),
                latents_history_mid=rnd(1, c, 2, h, w), latents_history_long=rnd(1, c, 16, h, w), return_dict=False)


def _hunyuan_inputs(config: dict, latents: torch.Tensor, rnd, text_tokens: int) -> dict:
    mask = torch.zeros(1, 256, dtype=torch.bool, device=latents.device)
    mask[:, :text_tokens] = True  # a prompt of `text_tokens` tokens, the rest padding
    return dict(hidden_states=latents, timestep=torch.tensor([500], device=latents.device),
                encoder_hidden_states=rnd(1, 256, config["text_embed_dim"]), encoder_attention_mask=mask,
                pooled_projections=rnd(1, config["pooled_projection_dim"]),
                guidance=torch.tensor([6000.0], device=latents.device, dtype=latents.dtype), return_dict=False)


def _ltx_inputs(config: dict, latents: torch.Tensor, rnd, text_tokens: int) -> dict:
    _, _, f, h, w = latents.shape
    mask = torch.zeros(1, 128, dtype=torch.long, device=latents.device)
    mask[:, :text_tokens] = 1  # a T5 prompt of `text_tokens` tokens padded to the pipeline's 128
    return dict(hidden_states=latents.flatten(2).transpose(1, 2),  # packed as LTXPipeline does (patch size 1)
                encoder_hidden_states=rnd(1, 128, config["caption_channels"]), encoder_attention_mask=mask,
                timestep=torch.tensor([500.0], device=latents.device), num_frames=f, height=h, width=w,
                rope_interpolation_scale=(8 / 25, 32, 32), return_dict=False)


def _ltx2_inputs(config: dict, latents: torch.Tensor, rnd, text_tokens: int) -> dict:
    _, _, f, h, w = latents.shape
    audio_tokens = round((8 * (f - 1) + 1) / 24 * 25)  # 25 audio latents per second, video at 24 fps
    # the text connectors' output: 1024 tokens (padding replaced by learned registers), no mask; at the caption width
    # (2.0) or, where the connectors project per modality (2.3), at the model's video and audio widths
    projected = not config.get("use_prompt_embeddings", True)
    text = config["num_attention_heads"] * config["attention_head_dim"] if projected else config["caption_channels"]
    audio_text = (config["audio_num_attention_heads"] * config["audio_attention_head_dim"] if projected
                  else config["caption_channels"])
    t = torch.tensor([500.0], device=latents.device)
    return dict(hidden_states=latents.flatten(2).transpose(1, 2), audio_hidden_states=rnd(1, audio_tokens,
                config["audio_in_channels"]), encoder_hidden_states=rnd(1, 1024, text),
                audio_encoder_hidden_states=rnd(1, 1024, audio_text), timestep=t, sigma=t, num_frames=f, height=h,
                width=w, fps=24.0, audio_num_frames=audio_tokens, return_dict=False)


def _cogvideox_inputs(config: dict, latents: torch.Tensor, rnd, text_tokens: int) -> dict:
    # as CogVideoXPipeline calls it: latents [B, F, C, H, W], the prompt always padded to 226 tokens (no mask), RoPE
    # tables (5B, 1.5) from _prepare_rotary_positional_embeddings
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    latents = latents.transpose(1, 2).contiguous()
    _, f, _, h, w = latents.shape
    p, p_t = config["patch_size"], config.get("patch_size_t")
    rope = None
    if config["use_rotary_positional_embeddings"]:
        base = (config["sample_height"] // p, config["sample_width"] // p)
        grid = (h // p, w // p)
        if p_t is None:  # CogVideoX 1.0
            extra = dict(crops_coords=get_resize_crop_region_for_grid(grid, base[1], base[0]), temporal_size=f)
        else:  # 1.5: a slice of the base grid
            extra = dict(crops_coords=None, temporal_size=f // p_t, grid_type="slice", max_size=base)
        rope = get_3d_rotary_pos_embed(embed_dim=config["attention_head_dim"], grid_size=grid, device=latents.device,
                                       **extra)
    return dict(hidden_states=latents, encoder_hidden_states=rnd(1, config["max_text_seq_length"],
                                                                 config["text_embed_dim"]),
                timestep=torch.tensor([500], device=latents.device), image_rotary_emb=rope, return_dict=False)

def _hunyuan15_inputs(config: dict, latents: torch.Tensor, rnd, text_tokens: int) -> dict:
    # as HunyuanVideo15Pipeline (T2V) calls it: a Qwen2.5-VL prompt of `text_tokens` in 1000 slots, no quoted (glyph)
    # text (256 ByT5 slots, all padding), 729 zero image features (T2V: all padding)
    device = latents.device
    mask = torch.zeros(1, 1000, dtype=torch.bool, device=device)
    mask[:, :text_tokens] = True
    return dict(hidden_states=latents, timestep=torch.tensor([500.0], device=device, dtype=latents.dtype),
                encoder_hidden_states=rnd(1, 1000, config["text_embed_dim"]), encoder_attention_mask=mask,
                encoder_hidden_states_2=rnd(1, 256, config["text_embed_2_dim"]),
                encoder_attention_mask_2=torch.zeros(1, 256, dtype=torch.bool, device=device),
                image_embeds=torch.zeros(1, 729, config["image_embed_dim"], device=device, dtype=latents.dtype),
                return_dict=False)


def _cosmos_inputs(config: dict, latents: torch.Tensor, rnd, text_tokens: int) -> dict:
    # as Cosmos2_5_PredictBasePipeline (text-to-world) calls it: 16 latent channels plus the condition mask (no frame
    # conditioned), one timestep per latent frame [B, 1, T, 1, 1], the prompt's 512 Qwen2.5-VL positions (no mask)
    _, _, f, _, _ = latents.shape
    return dict(hidden_states=latents[:, :16], condition_mask=torch.zeros_like(latents[:, :1]),
                timestep=torch.full((1, 1, f, 1, 1), 0.5, device=latents.device, dtype=latents.dtype),
                encoder_hidden_states=rnd(1, 512, config["crossattn_proj_in_channels"]), return_dict=False)


def _consisid_inputs(config: dict, latents: torch.Tensor, rnd, text_tokens: int) -> dict:
    # as ConsisIDPipeline calls it: CogVideoX's inputs (noise and image latents) plus the face embeddings its helpers
    # compute (an antelopev2 embedding of LFE_id_dim, one EVA-CLIP ViT feature map of 577 tokens per face scale)
    return dict(_cogvideox_inputs(config, latents, rnd, text_tokens),
                id_cond=rnd(1, config.get("LFE_id_dim", 1280)),
                id_vit_hidden=[rnd(1, 577, config.get("LFE_vit_dim", 1024))
                               for _ in range(config.get("LFE_num_scale", 5))])


def _mochi_inputs(config: dict, latents: torch.Tensor, rnd, text_tokens: int) -> dict:
    # as MochiPipeline calls it: a T5 prompt of `text_tokens` tokens padded to 256, its boolean mask
    mask = torch.zeros(1, config["max_sequence_length"], dtype=torch.bool, device=latents.device)
    mask[:, :text_tokens] = True
    return dict(hidden_states=latents, encoder_hidden_states=rnd(1, config["max_sequence_length"],
                                                                 config["text_embed_dim"]),
                timestep=torch.tensor([500], device=latents.device), encoder_attention_mask=mask, return_dict=False)


def _motif_video_inputs(config: dict, latents: torch.Tensor, rnd, text_tokens: int) -> dict:
    # as MotifVideoPipeline (T2V) calls it: noise, zero condition latents and mask (33 channels), a T5Gemma2 prompt of
    # `text_tokens` tokens padded to the tokenizer's 512, its boolean mask
    mask = torch.zeros(1, 512, dtype=torch.bool, device=latents.device)
    mask[:, :text_tokens] = True
    return dict(hidden_states=latents, timestep=torch.tensor([500.0], device=latents.device),
                encoder_hidden_states=rnd(1, 512, config["text_embed_dim"]), encoder_attention_mask=mask,
                return_dict=False)


def _easyanimate_inputs(config: dict, latents: torch.Tensor, rnd, text_tokens: int) -> dict:
    # as EasyAnimatePipeline calls it: the Qwen2-VL prompt padded to its 256 slots (the transformer takes no mask)
    return dict(hidden_states=latents, timestep=torch.tensor([500.0], device=latents.device),
                encoder_hidden_states=rnd(1, 256, config["text_embed_dim"]), return_dict=False)


def _allegro_inputs(config: dict, latents: torch.Tensor, rnd, text_tokens: int) -> dict:
    # as AllegroPipeline calls it: a T5 prompt of `text_tokens` tokens padded to 512 with its mask, and the RoPE
    # frequencies and positions from the pipeline's own method (8x VAE)
    from types import SimpleNamespace

    from diffusers import AllegroPipeline

    _, _, f, h, w = latents.shape
    mask = torch.zeros(1, 512, device=latents.device)
    mask[:, :text_tokens] = 1
    owner = SimpleNamespace(vae_scale_factor_spatial=8, transformer=SimpleNamespace(config=SimpleNamespace(**config)))
    rope = AllegroPipeline._prepare_rotary_positional_embeddings(owner, 1, 8 * h, 8 * w, f, latents.device)
    return dict(hidden_states=latents, encoder_hidden_states=rnd(1, 1, 512, config["caption_channels"]),
                encoder_attention_mask=mask, timestep=torch.tensor([500], device=latents.device),
                image_rotary_emb=rope, return_dict=False)


def _framepack_inputs(config: dict, latents: torch.Tensor, rnd, text_tokens: int) -> dict:
    # as HunyuanVideoFramepackPipeline (inverted anti-drifting) calls it in a section: the window's noise, the clean
    # latents (image + 1 history frame), 2 frames of 2x and 16 of 4x history, their frame indices, 729 SigLIP image
    # tokens, a Llama prompt of `text_tokens` tokens (batch 1: the model cuts the padding), guidance 10
    b, c, f, h, w = latents.shape
    device = latents.device
    mask = torch.zeros(1, 256, dtype=torch.long, device=device)
    mask[:, :text_tokens] = 1
    idx = torch.arange(0, 1 + f + 19, device=device)
    return dict(hidden_states=latents, timestep=torch.tensor([500], device=device),
                encoder_hidden_states=rnd(1, 256, config["text_embed_dim"]), encoder_attention_mask=mask,
                pooled_projections=rnd(1, config["pooled_projection_dim"]),
                image_embeds=rnd(1, 729, config["image_proj_dim"]),
                indices_latents=idx[1:1 + f], guidance=torch.tensor([10000.0], device=device, dtype=latents.dtype),
                latents_clean=rnd(1, c, 2, h, w), indices_latents_clean=torch.cat([idx[:1], idx[1 + f:2 + f]]),
                latents_history_2x=rnd(1, c, 2, h, w), indices_latents_history_2x=idx[2 + f:4 + f],
                latents_history_4x=rnd(1, c, 16, h, w), indices_latents_history_4x=idx[4 + f:20 + f],
                return_dict=False)


def _kandinsky5_inputs(config: dict, latents: torch.Tensor, rnd, text_tokens: int) -> dict:
    # as Kandinsky5T2VPipeline calls it (one of its two CFG calls): channels-last noise with the zero image latents and
    # mask (visual_cond), a Qwen2.5-VL prompt of `text_tokens` tokens (one prompt: no padding) and the pooled CLIP
    # embedding; RoPE positions per latent frame and per patch row / column, and its _get_scale_factor for the pixel
    # size (HunyuanVideo VAE: 8x spatial)
    kw = _kandinsky_common_inputs(config, latents, rnd, text_tokens, visual_cond_default=False)
    _, f, h, w, _ = kw["hidden_states"].shape
    _, ph, pw = config["patch_size"]
    device = latents.device
    scale = (1, 2, 2) if all(480 <= 8 * n <= 854 for n in (h, w)) else (1, 3.16, 3.16)
    return dict(kw, visual_rope_pos=[torch.arange(n, device=device) for n in (f, h // ph, w // pw)],
                text_rope_pos=torch.arange(text_tokens, device=device), scale_factor=scale)


def _kandinsky_common_inputs(config: dict, latents: torch.Tensor, rnd, text_tokens: int,
                             visual_cond_default: bool) -> dict:
    # what Kandinsky 5 and 6 take alike: channels-last noise, with the zero conditioning latent and mask where the
    # config has visual_cond (5's class default: off, 6's: on), the prompt, the pooled CLIP embedding, timestep 500
    x = latents.permute(0, 2, 3, 4, 1)
    if config.get("visual_cond", visual_cond_default):
        x = torch.cat([x, torch.zeros_like(x), torch.zeros_like(x[..., :1])], dim=-1)
    return dict(hidden_states=x, encoder_hidden_states=rnd(1, text_tokens, config["in_text_dim"]),
                pooled_projections=rnd(1, config["in_text_dim2"]),
                timestep=torch.tensor([500.0], device=latents.device, dtype=latents.dtype), return_dict=False)


def _kandinsky6_inputs(config: dict, latents: torch.Tensor, rnd, text_tokens: int) -> dict:
    # as Kandinsky6TI2VAPipeline calls it for text-to-video with audio (its default): channels-last noise with the
    # zero conditioning latent and mask (visual_cond), audio latents for the video's length (24 fps, 44.1 kHz, a
    # 1024-sample latent hop: 218 for 121 frames), a Qwen2.5-VL prompt of `text_tokens` tokens (no padding mask) and
    # the pooled CLIP embedding
    kw = _kandinsky_common_inputs(config, latents, rnd, text_tokens, visual_cond_default=True)
    audio_len = math.ceil(((latents.shape[2] - 1) * 4 + 1) / 24 * 44100 / 1024)
    return dict(kw, audio_hidden_states=rnd(1, audio_len, config["in_audio_dim"]))


def _minimax_h3_inputs(config: dict, latents: torch.Tensor, rnd, text_tokens: int) -> dict:
    # as MiniMaxH3LoopDenoiser calls it for a t2va request (the family module's denoiser_inputs: diffusers' own packed
    # layout [text | target audio | target video] and row timesteps): the prompt verbatim (`text_tokens` Qwen3-VL rows,
    # no padding), stereo audio for the video's length (40 latents/s: 207 per channel for 124 frames at 24 fps), latents
    # as patchified rows; the latent frames are the video VAE's 5n + 2 for 17n + 5 frames
    from diffusers.modular_pipelines.minimax_h3.modular_pipeline import (MINIMAX_H3_AUDIO_CHANNELS,
                                                                          audio_latent_num_frames,
                                                                          video_latent_num_frames)

    from draftattention_diffusers.models.minimax_h3 import denoiser_inputs

    f = latents.shape[2]
    frames = (f - 2) // 5 * 17 + 5
    if video_latent_num_frames(frames, 17, 5) != f:
        raise ValueError(f"MiniMax-H3 latent frames are 5n + 2 (17n + 5 frames), got {f}")
    audio = rnd(1, MINIMAX_H3_AUDIO_CHANNELS * audio_latent_num_frames(frames), config["audio_in_channels"])
    return denoiser_inputs(latents, audio, rnd(1, text_tokens, config["text_dim"]), patch_size=config["patch_size"])


# family key of MODELS -> (diffusers transformer class, forward inputs(config, latents [B, C, F, H, W], rnd,
# text_tokens)); a new model family adds one line here and its rows in MODELS
TRANSFORMERS = {
    "consisid": ("ConsisIDTransformer3DModel", _consisid_inputs),
    "mochi": ("MochiTransformer3DModel", _mochi_inputs),
    "easyanimate": ("EasyAnimateTransformer3DModel", _easyanimate_inputs),
    "allegro": ("AllegroTransformer3DModel", _allegro_inputs),
    "wan": ("WanTransformer3DModel", _wan_inputs),
    "hunyuan": ("HunyuanVideoTransformer3DModel", _hunyuan_inputs),
    "ltx": ("LTXVideoTransformer3DModel", _ltx_inputs),
    "ltx2": ("LTX2VideoTransformer3DModel", _ltx2_inputs),
    "cogvideox": ("CogVideoXTransformer3DModel", _cogvideox_inputs),
    "hunyuan15": ("HunyuanVideo15Transformer3DModel", _hunyuan15_inputs),
    "wan_vace": ("WanVACETransformer3DModel", _wan_vace_inputs),
    # SkyReelsV2Pipeline (T2V) calls it as WanPipeline does: no diffusion forcing, no fps (inject_sample_info=False)
    "skyreels_v2": ("SkyReelsV2Transformer3DModel", _wan_inputs),
    "chronoedit": ("ChronoEditTransformer3DModel", _chronoedit_inputs),
    "anyflow": ("AnyFlowTransformer3DModel", _anyflow_inputs),
    "wan_animate": ("WanAnimateTransformer3DModel", _wan_animate_inputs),
    "helios": ("HeliosTransformer3DModel", _helios_inputs),
    "cosmos": ("CosmosTransformer3DModel", _cosmos_inputs),
    "motif_video": ("MotifVideoTransformer3DModel", _motif_video_inputs),
    "framepack": ("HunyuanVideoFramepackTransformer3DModel", _framepack_inputs),
    "kandinsky5": ("Kandinsky5Transformer3DModel", _kandinsky5_inputs),
    "kandinsky6": ("Kandinsky6Transformer3DModel", _kandinsky6_inputs),
    "minimax_h3": ("MiniMaxH3Transformer3DModel", _minimax_h3_inputs),
}


def video_tokens(config: dict, latent: tuple[int, int, int]) -> int:
    """Video tokens of a latent ``(frames, height, width)`` after the config's patching (Wan: a 3-tuple
    ``patch_size``; others: ``patch_size`` and ``patch_size_t``, 1 where absent)."""
    p = config.get("patch_size", 1)
    pt, ph, pw = p if isinstance(p, (tuple, list)) else (config.get("patch_size_t") or 1, p, p)
    f, h, w = latent
    return -(-f // pt) * (h // ph) * (w // pw)


def cast_like_from_pretrained(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Give parameters and persistent buffers the dtypes ``from_pretrained(torch_dtype=dtype)`` gives them:
    ``dtype``, except those under the class's ``_keep_in_fp32_modules`` (float32); non-persistent buffers (RoPE
    tables) keep the dtype they were built with, as when loading a checkpoint."""
    keep = list(getattr(model, "_keep_in_fp32_modules", None) or [])
    for mod_name, module in model.named_modules():
        for tensors, skip in ((module._parameters, set()), (module._buffers, module._non_persistent_buffers_set)):
            for name, t in list(tensors.items()):
                if t is None or not t.is_floating_point() or name in skip:
                    continue
                full = f"{mod_name}.{name}" if mod_name else name
                target = torch.float32 if any(k in full.split(".") for k in keep) else dtype
                if t.dtype != target:
                    t.data = t.data.to(target)
    return model


def build(name: str, device: torch.device, dtype: torch.dtype):
    """The transformer with random weights directly on ``device`` (no CPU copy of the weights)."""
    import diffusers

    family, config, _, _, _ = MODELS[name]
    cls = getattr(diffusers, TRANSFORMERS[family][0])
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    if device.type == "cuda":
        with torch.device("meta"):
            params = sum(p.numel() for p in cls(**config).parameters())
        if params * 4 > 0.9 * torch.cuda.mem_get_info(device)[0]:
            # float32 weights would not fit (MiniMax-H3 33B: 123 GiB, Kandinsky 6 48B: 180 GiB): build in `dtype`
            print(f"   {params / 1e9:.1f}B parameters: built in {dtype} (float32 would not fit)", flush=True)
            torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(**config)
    finally:
        torch.set_default_dtype(default)
    # as from_pretrained(torch_dtype=dtype): modules the class keeps in float32 (Kandinsky 5/6: time embeddings and
    # modulation, whose forward casts its input to float32) stay float32
    return cast_like_from_pretrained(model.eval().requires_grad_(False), dtype)


def inputs(name: str, device: torch.device, dtype: torch.dtype, text_tokens: int = 120) -> dict:
    family, config, (f, h, w), _, _ = MODELS[name]
    g = torch.Generator(device="cpu").manual_seed(1)
    rnd = lambda *s: torch.randn(*s, generator=g).to(device, dtype)  # noqa: E731
    latents = rnd(1, config["in_channels"] if "in_channels" in config else config["in_visual_dim"], f, h, w)
    return TRANSFORMERS[family][1](config, latents, rnd, text_tokens)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class Timing(NamedTuple):
    seconds: float  # median of the timed forwards
    first_call: float  # the first (untimed) warm-up forward at this shape: includes any JIT compile
    out: torch.Tensor  # the last output


def measure_forward(model, kwargs, device, reps: int, warmup: int) -> Timing:
    """Median seconds of one forward after ``warmup`` (>= 1) untimed warm-up forwards at the same shape, the
    seconds of the first warm-up forward ("first call", JIT compiles included), and the last output."""
    if warmup < 1:
        raise ValueError(f"warmup={warmup}: every timed setting needs >= 1 warm-up forward at its own shape")
    with torch.inference_mode():
        sync(device)
        t0 = time.perf_counter()
        out = model(**kwargs)
        sync(device)
        first = time.perf_counter() - t0
        for _ in range(warmup - 1):
            out = model(**kwargs)
        times = []
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            out = model(**kwargs)
            sync(device)
            times.append(time.perf_counter() - t0)
    times.sort()
    return Timing(times[len(times) // 2], first, out[0])


def time_forward(model, kwargs, device, reps: int, warmup: int) -> tuple[float, torch.Tensor]:
    """(median seconds, last output) of :func:`measure_forward` (also used by benchmark_e2e_multigpu.py)."""
    t = measure_forward(model, kwargs, device, reps, warmup)
    return t.seconds, t.out


KERNEL_KINDS = (  # CUDA kernel name fragments -> kind, first match wins (cuBLAS/CUTLASS GEMMs, flash/flex attention)
    ("attention", ("flash", "fmha", "attn", "attention", "flex")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "scaled_mm", "sm90", "matmul", "cublas")),
)


def kernel_breakdown(model, kwargs, device) -> dict:
    """CUDA kernel seconds of one forward (after the caller's warm-up) by kind: attention kernels, matmuls, the rest
    (norms, RoPE, float8 casts, gathers, the draft map), and the forward's wall seconds."""
    from torch.profiler import ProfilerActivity, profile

    if device.type != "cuda":
        return {}
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        sync(device)
        t0 = time.perf_counter()
        model(**kwargs)
        sync(device)
        wall = time.perf_counter() - t0
    kinds = {"attention": 0.0, "matmul": 0.0, "other": 0.0}
    for ev in prof.key_averages():
        secs = getattr(ev, "self_device_time_total", getattr(ev, "self_cuda_time_total", 0)) / 1e6
        if secs <= 0:
            continue
        name = ev.key.lower()
        kind = next((k for k, frags in KERNEL_KINDS if any(f in name for f in frags)), "other")
        kinds[kind] += secs
    out = {f"{k} s": v for k, v in kinds.items()}
    out["wall s (profiled)"] = wall
    print(f"   kernels by kind: {', '.join(f'{k} {v:.3f}' for k, v in out.items())}", flush=True)
    return out


def run_model(name: str, args, device, dtype) -> dict:
    family, _, _, calls, label = MODELS[name]
    print(f"== {name}: {label}", flush=True)
    t0 = time.perf_counter()
    model = build(name, device, dtype)
    kw = inputs(name, device, dtype)
    print(f"   built in {time.perf_counter() - t0:.1f} s", flush=True)
    res = {"model": name, "label": label, "calls_per_step": calls, "times": {}, "first_call": {}, "notes": [],
           "sparsity": {}}
    _, _, (f, h, w), _, _ = MODELS[name]
    large = video_tokens(MODELS[name][1], (f, h, w)) > 60_000
    reps, warmup = args.reps, (args.warmup_large if large and args.warmup_large is not None else args.warmup)
    res["warmup"] = warmup

    outs = {}

    def record(key, fn):
        try:
            secs, first, out = fn()
            if key in ("diffusers default", "fp8 diffusers default"):
                outs[key] = out.float()
            finite = bool(torch.isfinite(out).all())
            res["times"][key] = secs
            res["first_call"][key] = first
            print(f"   {key:<24} {secs:8.3f} s  (first call {first:.3f} s, untimed warm-up)"
                  f"{'' if finite else '  (output not finite: random weights)'}", flush=True)
        except Exception as e:  # one setting failing (OOM, a backend) must not hide the others
            res["notes"].append(f"{key}: {type(e).__name__}: {str(e)[:300]}")
            print(f"   {key:<24} FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()

    record("diffusers default", lambda: measure_forward(model, kw, device, reps, warmup))
    if device.type == "cuda" and not args.skip_cudnn:
        def cudnn():
            model.set_attention_backend("_native_cudnn")
            try:
                return measure_forward(model, kw, device, reps, warmup)
            finally:
                model.reset_attention_backend()
        record("cuDNN SDPA", cudnn)

    def draft(**cfg):
        def fn():
            enable_draft_attention(model, **cfg)
            try:
                return measure_forward(model, kw, device, reps, warmup)
            finally:
                stats = get_draft_stats(model).summary()
                disable_draft_attention(model)
                res.setdefault("stats", {})[str(cfg)] = {k: stats[k] for k in stats if k in (
                    "mean_sparsity", "sparse_calls", "dense_calls", "fallbacks", "draft_seconds")}
        return fn

    def attention_settings(prefix: str = "") -> None:
        if args.backend == "auto" or args.backend == "fa4":
            record(f"{prefix}flash-attn-4 dense", draft(dense_steps_fraction=1.0, dense_backend="fa4"))
        for s in args.sparsities:
            cfg = dict(sparsity=s, backend=args.backend, dense_steps_fraction=0.0)
            record(f"{prefix}draft {s}", draft(**cfg))
            if args.profile:
                enable_draft_attention(model, **cfg)
                try:
                    res.setdefault("profile", {})[f"{prefix}draft {s}"] = kernel_breakdown(model, kw, device)
                finally:
                    disable_draft_attention(model)

    attention_settings()
    if args.fp8:
        try:
            from draftattention_diffusers.integration.stack import quantize_fp8

            res["fp8 layers"] = len(quantize_fp8(model, args.fp8))
        except Exception as e:  # torchao missing or unable to run float8 here: say so, keep the bf16 rows
            res["notes"].append(f"fp8: {type(e).__name__}: {str(e)[:300]}")
            print(f"   fp8 FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
        else:
            record("fp8 diffusers default", lambda: measure_forward(model, kw, device, reps, warmup))
            if "diffusers default" in outs and "fp8 diffusers default" in outs:
                a, b = outs["diffusers default"], outs["fp8 diffusers default"]
                diff = (a - b).abs()
                res["fp8 diff"] = {"max abs": diff.max().item(), "mean abs": diff.mean().item(),
                                   "max abs output": a.abs().max().item(),
                                   "relative (max diff / max output)": (diff.max() / a.abs().max()).item()}
                print(f"   fp8 vs bf16 (diffusers default, one forward): {res['fp8 diff']}", flush=True)
            attention_settings("fp8 ")
    if args.compile:
        res["compile"] = compile_runs(model, kw, device, args)
    model = None  # free the weights (a `del` would make pyflakes flag the closures above as undefined names)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def compile_runs(model, kw, device, args) -> dict:
    """torch.compile (``regional``: diffusers' compile_repeated_blocks, or ``whole``) of the transformer with draft
    attention on each compile backend, and of the default model: time per forward and graph breaks."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    out = {}
    settings = [("diffusers default", None)] + [(f"draft 0.9 {b}", b) for b in args.compile_backends]
    for label, backend in settings:
        torch._dynamo.reset()
        counters.clear()
        if backend is not None:
            enable_draft_attention(model, sparsity=0.9, backend=backend, dense_steps_fraction=0.0)
        try:
            if args.compile == "regional":
                model.compile_repeated_blocks(fullgraph=False)
                target = model
            else:
                target = torch.compile(model)
            secs, first, _ = measure_forward(target, kw, device, args.reps, 1)  # first call: compile + forward
            breaks = sum(counters["graph_break"].values())
            reasons = sorted(counters["graph_break"], key=lambda r: -counters["graph_break"][r])[:5]
            out[label] = {"first call s": first, "forward s": secs, "graph breaks": breaks,
                          "top break reasons": [str(r)[:160] for r in reasons]}
            print(f"   compiled ({args.compile}) {label:<20} first {first:7.1f} s, then {secs:.3f} s, "
                  f"graph breaks {breaks}", flush=True)
        except Exception as e:
            out[label] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            print(f"   compiled {label} FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
        finally:
            if backend is not None:
                disable_draft_attention(model)
            _uncompile(model)
    return out


def _uncompile(model):
    # compile_repeated_blocks swaps each block's forward for a compiled one; put the plain ones back
    for m in model.modules():
        if hasattr(m, "_compiled_call_impl"):
            m._compiled_call_impl = None


def project(res: dict) -> dict:
    """Projected 50-step time: 13 dense steps on the fastest dense path, 37 sparse steps, times the calls/step."""
    t = res["times"]
    calls = res["calls_per_step"]
    dense_keys = [k for k in ("diffusers default", "cuDNN SDPA", "flash-attn-4 dense") if k in t]
    if not dense_keys:
        return {}
    fastest = min(dense_keys, key=t.get)
    n_dense = math.ceil(round(DENSE_FRACTION * STEPS, 9))
    out = {"fastest dense": fastest}
    base = t.get("diffusers default")
    for k in [k for k in t if k.startswith(("draft ", "fp8 draft "))]:
        # fp8 draft: its dense steps on the fastest fp8 dense path; speedups still against the bf16 baselines
        fp8_dense = [d for d in ("fp8 diffusers default", "fp8 flash-attn-4 dense") if d in t]
        dense = min(fp8_dense, key=t.get) if k.startswith("fp8 ") and fp8_dense else fastest
        total = calls * (n_dense * t[dense] + (STEPS - n_dense) * t[k])
        out[k] = {"projected s": total,
                  "speedup vs default": calls * STEPS * base / total if base else None,
                  "speedup vs fastest dense": calls * STEPS * t[fastest] / total,
                  "forward speedup vs default": base / t[k] if base else None,
                  "forward speedup vs fastest dense": t[fastest] / t[k]}
    return out


def markdown(results, meta) -> str:
    lines = [f"End-to-end: {meta['date']}, {meta['device']}, torch {meta['torch']}, diffusers {meta['diffusers']}, "
             f"{meta['dtype']}, backend {meta['backend']}, median of {meta['reps']} forward(s) per setting after "
             f"untimed warm-up forward(s) at the same shape (per model: {meta.get('warmups', '')}); first call = the "
             "first warm-up forward (includes JIT compiles), never part of the timing", ""]
    lines += ["| model | setting | forward s | first call s | vs default | vs fastest dense | projected 50 steps s | "
              "50-step speedup vs default | vs fastest dense |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        t, pr = r["times"], r.get("projection", {})
        base = t.get("diffusers default")
        fastest = t.get(pr.get("fastest dense")) if pr else None
        for k, secs in t.items():
            p = pr.get(k, {})
            f = lambda x: f"{x:.2f}x" if x else "-"  # noqa: E731
            proj = f"{p['projected s']:.1f}" if p else (f"{r['calls_per_step'] * STEPS * secs:.1f}" if True else "")
            first = r.get("first_call", {}).get(k)
            lines.append(f"| {r['label']} | {k} | {secs:.3f} | {f'{first:.3f}' if first is not None else '-'} | "
                         f"{f(base / secs if base else None)} | "
                         f"{f(fastest / secs if fastest else None)} | {proj} | "
                         f"{f(p.get('speedup vs default'))} | {f(p.get('speedup vs fastest dense'))} |")
        for n in r["notes"]:
            lines.append(f"| {r['label']} | note | {n} | | | | | | |")
    for r in results:
        if "fp8 diff" in r:
            d = r["fp8 diff"]
            lines += ["", f"{r['label']}: float8 linears ({r['fp8 layers']} layers) vs bf16, one default forward: max abs "
                      f"diff {d['max abs']:.4g}, mean {d['mean abs']:.4g}, max abs output {d['max abs output']:.4g}, "
                      f"relative {d['relative (max diff / max output)']:.4g}"]
    prof = [(r["label"], k, v) for r in results for k, v in r.get("profile", {}).items() if v]
    if prof:
        lines += ["", "Where the time goes (one profiled forward, CUDA kernel seconds by kind):", "",
                  "| model | setting | attention s | matmul s | other s | wall s |", "|---|---|---|---|---|---|"]
        for label, k, v in prof:
            lines.append(f"| {label} | {k} | {v['attention s']:.3f} | {v['matmul s']:.3f} | {v['other s']:.3f} | "
                         f"{v['wall s (profiled)']:.3f} |")
    comp = [(r["label"], k, v) for r in results for k, v in r.get("compile", {}).items()]
    if comp:
        lines += ["", "torch.compile:", "", "| model | setting | first call s | forward s | graph breaks | top reasons |",
                  "|---|---|---|---|---|---|"]
        for label, k, v in comp:
            if "error" in v:
                lines.append(f"| {label} | {k} | failed: {v['error']} | | | |")
            else:
                lines.append(f"| {label} | {k} | {v['first call s']:.1f} | {v['forward s']:.3f} | {v['graph breaks']} | "
                             f"{'; '.join(v['top break reasons'])} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", choices=list(MODELS),
                   help=f"default: {' '.join(DEFAULT_MODELS)} (with --tiny: {' '.join(TINY_MODELS)})")
    p.add_argument("--tiny", action="store_true", help="CPU dry run on tiny configs (the rows above, or --models)")
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.75, 0.9])
    p.add_argument("--backend", default="auto", help="sparse backend for draft attention (default: auto)")
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up forwards per setting at its own shape "
                   "(>= 1: the first forward at a new shape includes JIT compiles; it is reported as 'first call')")
    p.add_argument("--warmup-large", type=int, help="warm-up forwards for models over 60k video tokens (default: "
                   "--warmup; >= 1)")
    p.add_argument("--skip-cudnn", action="store_true")
    p.add_argument("--compile", choices=["regional", "whole"], help="also time torch.compile'd forwards")
    p.add_argument("--compile-backends", nargs="+", default=["fa4", "flex"])
    p.add_argument("--fp8", nargs="?", const="row", choices=["row", "tensor"],
                   help="then quantize the blocks' linears to float8 (torchao; per-row scales unless 'tensor') and "
                   "time the settings again")
    p.add_argument("--profile", action="store_true", help="CUDA kernel time by kind for each draft setting")
    p.add_argument("--out", help="write the markdown table here (and a .json beside it)")
    args = p.parse_args(argv)
    if args.warmup < 1 or (args.warmup_large is not None and args.warmup_large < 1):
        p.error("--warmup and --warmup-large must be >= 1: a setting timed on its first forward at a new shape "
                "would include flash-attn-4's / FlexAttention's JIT compile (and depend on the run order)")
    if args.models is None:
        args.models = TINY_MODELS if args.tiny else DEFAULT_MODELS
    if args.tiny:
        args.backend = "reference" if not torch.cuda.is_available() else args.backend
        if not torch.cuda.is_available() and args.compile_backends == ["fa4", "flex"]:
            args.compile_backends = ["reference"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    import diffusers

    meta = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "CPU", "backend": args.backend,
            "reps": args.reps, "warmup": args.warmup, "dtype": str(dtype).replace("torch.", "")}
    results = []
    for name in args.models:
        r = run_model(name, args, device, dtype)
        r["projection"] = project(r)
        for k, v in r["projection"].items():
            if isinstance(v, dict):
                print(f"   {k}: projected 50 steps {v['projected s']:.1f} s, speedup vs default "
                      f"{v['speedup vs default'] or 0:.2f}x, vs fastest dense ({r['projection']['fastest dense']}) "
                      f"{v['speedup vs fastest dense']:.2f}x; forward {v['forward speedup vs default'] or 0:.2f}x",
                      flush=True)
        results.append(r)
    meta["warmups"] = ", ".join(f"{r['model']} {r['warmup']}" for r in results)
    text = markdown(results, meta)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results,
                                                                   "argv": sys.argv}, indent=1, default=str))


if __name__ == "__main__":
    main()

"""Whole-pipeline benchmark: the real diffusers denoising loop of ``WanPipeline`` (Wan2.1, Wan2.2 A14B),
``HunyuanVideoPipeline`` and ``Cosmos2_5_PredictBasePipeline`` (Cosmos-Predict2.5 2B) with full-size transformers
(random weights), timed per attention / cache setting.

What runs: the transformer configs of ``scripts/benchmark_e2e.py`` (imported from it), built with random weights on
the device in bf16 (the parameters that ``from_pretrained(torch_dtype=bf16)`` keeps in float32 stay float32), the real
VAE class with its published (default) config and random weights (Wan: ``AutoencoderKLWan``, float32; HunyuanVideo:
``AutoencoderKLHunyuanVideo``, fp16 with ``enable_tiling()``), no text encoder: random prompt embeddings are passed
(Wan: ``prompt_embeds`` and ``negative_prompt_embeds`` [1, 512, 4096], CFG 5.0, two transformer calls per step;
HunyuanVideo: ``prompt_embeds`` [1, 256, 4096] with 120 live tokens, ``pooled_prompt_embeds`` [1, 768], embedded
guidance 6.0, one call per step). Schedulers: Wan ``UniPCMultistepScheduler(prediction_type="flow_prediction",
use_flow_sigmas=True, flow_shift=3.0 at 480p, 5.0 at 720p)`` = the published Wan2.1 scheduler (also the one that
MagCache's Wan ratios were calibrated with); HunyuanVideo ``FlowMatchEulerDiscreteScheduler(shift=7.0)``, its
published scheduler.
Cosmos-Predict2.5 2B (text-to-world; one of the families whose own attention processor is kept and only its
``dispatch_attention_fn`` call routed to draft attention): 704x1280, 93 frames, the pipeline's defaults of 36 steps
and CFG 7.0 (two calls per step), the published ``UniPCMultistepScheduler(use_karras_sigmas=True,
use_flow_sigmas=True, prediction_type="flow_prediction", sigma_max=200.0, sigma_min=0.01)``, ``AutoencoderKLWan`` in
bf16, random ``prompt_embeds`` / ``negative_prompt_embeds`` [1, 512, 100352] (Qwen2.5-VL's concatenated hidden
layers), the package's pass-through safety checker (the pipeline refuses to run without one; with prompt embeddings
and latent output it is only moved to the device). In diffusers 0.42.1 its transformer has neither diffusers' step
caches (no ``CacheMixin``: taylorseer, magcache and fbcache report unavailable) nor ``_repeated_blocks``
(``enable_fast_stack`` refuses compile and fp8): its settings are default, fa4-dense, draft, preset and cache-dit's
dbcache (no MagCache ratios are published for it, so dbcache-mag and the MagCache schedules report unavailable).
Its estimates are at its published 36 steps (9 dense, 27 sparse), the other models' at 50.

Timing: the denoising loop is the pipeline call with ``output_type="latent"`` (CUDA-synchronised wall clock); per-step
times come from ``callback_on_step_end``; one ``vae.decode`` of the latents is timed separately once per model
(``--no-decode`` skips it). Every setting first runs an untimed warm-up pipeline call at the same shape and with the
same settings (``--warmup-steps``, raised per setting until the warm-up computes a dense step, a sparse step and,
with a cache, also skips one), so JIT compiles (flash-attn-4, FlexAttention, torch.compile) never land in a timing;
graphs that torch.compile still builds during a timed run are counted and reported.

Settings (``--settings``, comma-separated): each setting is ONE call of the package's ``enable_fast_stack`` (draft
attention, then the cache, float8 linear layers, regional compile: the order users get) and ``disable_fast_stack``
after it; the benchmark keeps no stack of its own, it only chooses the arguments. A setting is ``default`` or parts
joined by ``+`` (any order, the stack fixes it):
    draft | preset | fa4-dense   draft attention: default config (0.9, first 25% of the steps dense) | the model's
                                 preset | dense_steps_fraction=1.0, dense_backend="fa4" (the fastest dense path)
    mild                         draft attention with the opt-in milder warm-up: its first 25% of the steps sparse
                                 at warmup_sparsity=0.75 instead of dense (issue 20 item 5; recall in docs/quality.md)
    taylorseer                   cache="taylorseer" (cache_interval=3, first cached step ceil(0.25 n), max_order=1,
                                 every block; ~115 GiB of Taylor factors at Wan 14B 720p with CFG)
    magcache                     MagCacheConfig with the magnitude ratios the MagCache authors published
    fbcache | fbcache-mag        cache="first_block" with a fixed compute_mask: TaylorSeer's interval schedule |
                                 MagCache's published schedule (random weights decide nothing; MagCache's own hooks
                                 cannot compile)
    dbcache | dbcache-mag        cache-dit's DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0) with the same
                                 two fixed masks (steps_computation_mask, static policy; needs cache-dit)
    compile                      regional compile_repeated_blocks() of every transformer (torch.compile defaults)
    fp8                          torchao float8 dynamic quantization of the blocks' linear layers (needs torchao and
                                 a GPU with compute capability >= 8.9)
    stack                        = fbcache-mag+draft+compile: the one-call stack (README), on MagCache's schedule
    stack+fp8                    the same with fp8
    stack+mild                   = fbcache-mag+mild+compile: the one-call stack with the milder warm-up
    stack+mild+fp8               the same with fp8
    name@N                       any setting with its own step count N (each timed run must hold every step class)
Combinations the stack refuses (e.g. magcache+compile: diffusers compiler-disables MagCache's hooks) are reported
as skipped with its reason. "Without draft" of a setting = the same parts without draft/preset/mild/fa4-dense or,
for a sparse setting, with fa4-dense in its place (the same stack dense on flash-attn-4), whichever measured faster.

The fastest dense path is the fastest dense setting measured (default, fa4-dense, compile, fa4-dense+compile). With
fewer than 50 steps (``--steps 8``), the dense/sparse split stays proportional (ceil(0.25 n) dense steps) and a
50-step estimate is printed: 13 x mean dense-step time + 37 x mean sparse-step time (not meaningful with a cache:
its skip schedule depends on the step count). ``--budget-s`` skips settings whose estimated time would not fit.

Examples:
    python scripts/benchmark_pipeline.py --models wan1.3b-480p                          # every setting, 50 steps
    python scripts/benchmark_pipeline.py --models wan14b-720p --steps 8 --settings default,fa4-dense,draft,preset
    python scripts/benchmark_pipeline.py --models hunyuan-720p --steps 8 --settings fa4-dense,draft --no-decode
    python scripts/benchmark_pipeline.py --models wan22-a14b-720p --steps 4 --settings default,fa4-dense,draft
    python scripts/benchmark_pipeline.py --models cosmos2.5-2b-704p --steps 8 --settings default,fa4-dense,draft
    python scripts/benchmark_pipeline.py --tiny --steps 4 --no-decode \\
        --settings default,draft,taylorseer+draft,fbcache+draft,magcache+draft,dbcache+draft,stack  # CPU
    python scripts/benchmark_pipeline.py --tiny --models tiny-cosmos --steps 4 --no-decode --settings default,draft
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from functools import partial
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_e2e import MODELS, cast_like_from_pretrained  # noqa: E402  (the transformer configs, shapes and labels)

from draftattention_diffusers import (DraftAttentionConfig, disable_draft_attention,  # noqa: E402
                                      disable_fast_stack, enable_fast_stack, get_fast_stack,
                                      get_draft_stats, load_preset)
from draftattention_diffusers.integration.stats import format_ranges as ranges  # noqa: E402

# ----------------------------------------------------------------------------------------------------------- models
# benchmark_e2e.MODELS name -> the preset of the `preset` setting (its draft-attention fields). The tiny configs use
# the preset of the model they stand in for.
PRESETS = {"wan1.3b-480p": "wan2.1-1.3b-480p", "wan14b-720p": "wan2.1-14b-720p", "hunyuan-720p": "hunyuan-720p",
           "wan22-a14b-720p": "wan2.2-a14b-720p-4step", "tiny-wan": "wan2.1-1.3b-480p", "tiny-hunyuan": "hunyuan-720p",
           "tiny-wan22": "wan2.2-a14b-720p-4step",
           # Cosmos-Predict2.5 2B has no preset of its own: Predict2 2B Video2World's (the same 2B transformer widths
           # and depth, the same 24x44x80-token grid at 704x1280, 93 frames) gives the draft-attention fields
           "cosmos2.5-2b-704p": "cosmos-predict2-2b-video2world-704p",
           "tiny-cosmos": "cosmos-predict2-2b-video2world-704p"}
# Wan2.2 T2V A14B: two Wan 14B-architecture experts switching at boundary_ratio 0.875 (its published pipeline config);
# rows for the few-step distilled schedule (run it with --steps 4 / name@4): no CFG, one transformer call per step.
MODELS = dict(MODELS)
MODELS["wan22-a14b-720p"] = ("wan", MODELS["wan14b-720p"][1], MODELS["wan14b-720p"][2], 1,
                             "Wan2.2 A14B (two 14B experts), 720x1280, 81 frames, no CFG")
MODELS["tiny-wan22"] = ("wan", MODELS["tiny-wan"][1], MODELS["tiny-wan"][2], 1, "tiny Wan2.2 two experts (CPU dry run)")
TWO_EXPERTS = {"wan22-a14b-720p": 0.875, "tiny-wan22": 0.5}  # model -> boundary_ratio
# Published sampling parameters (the model cards / diffusers docs; the same values as the presets): scheduler shift and
# guidance (Wan: CFG scale; HunyuanVideo: embedded guidance of the guidance-distilled model).
SAMPLING = {"wan1.3b-480p": dict(flow_shift=3.0, guidance_scale=5.0),
            "wan14b-720p": dict(flow_shift=5.0, guidance_scale=5.0),
            "hunyuan-720p": dict(flow_shift=7.0, guidance_scale=6.0),
            "wan22-a14b-720p": dict(flow_shift=5.0, guidance_scale=1.0)}  # the distilled preset's settings
# Cosmos-Predict2.5 2B (Cosmos2_5_PredictBasePipeline, text-to-world): the pipeline's __call__ defaults in diffusers
# 0.42.1 (704x1280, 93 frames, num_inference_steps=36, guidance_scale=7.0: CFG, two transformer calls per step; the
# docstring's "defaults to 35" is stale) and the scheduler that diffusers' scripts/convert_cosmos_to_diffusers.py
# (save_pipeline_cosmos2_5_predict) saved the published nvidia/Cosmos-Predict2.5-2B pipeline with:
# UniPCMultistepScheduler(use_karras_sigmas=True, use_flow_sigmas=True, prediction_type="flow_prediction",
# sigma_max=200.0, sigma_min=0.01), no flow shift of its own (COSMOS25_SCHEDULER). Its 36 steps are this model's
# reference step count for the step-count estimate (ceil(0.25 x 36) = 9 dense + 27 sparse), where the others use 50.
SAMPLING["cosmos2.5-2b-704p"] = dict(guidance_scale=7.0, num_inference_steps=36)
COSMOS25_SCHEDULER = dict(use_karras_sigmas=True, use_flow_sigmas=True, prediction_type="flow_prediction",
                          sigma_max=200.0, sigma_min=0.01)
SAMPLING.update({"tiny-wan": SAMPLING["wan1.3b-480p"], "tiny-hunyuan": SAMPLING["hunyuan-720p"],
                 "tiny-wan22": SAMPLING["wan22-a14b-720p"], "tiny-cosmos": SAMPLING["cosmos2.5-2b-704p"]})
FULL_MODELS = ["wan1.3b-480p", "wan14b-720p", "hunyuan-720p", "wan22-a14b-720p", "cosmos2.5-2b-704p"]
TINY_MODELS = ["tiny-wan", "tiny-hunyuan", "tiny-wan22", "tiny-cosmos"]
# Seconds per transformer forward with the default attention on one H200 (docs/benchmarks.md, section 4; Cosmos 2.5 2B:
# one H100, section 13): the time estimate of a setting before anything was measured on that model. Also rough
# VAE-decode and build priors.
PRIOR_FORWARD_S = {"wan1.3b-480p": 0.62, "wan14b-720p": 12.4, "hunyuan-720p": 32.9, "wan22-a14b-720p": 12.4,
                   "cosmos2.5-2b-704p": 3.9}
PRIOR_DECODE_S = {"wan1.3b-480p": 20.0, "wan14b-720p": 60.0, "hunyuan-720p": 150.0, "wan22-a14b-720p": 60.0,
                  "cosmos2.5-2b-704p": 70.0}
PRIOR_BUILD_S = {"wan1.3b-480p": 10.0, "wan14b-720p": 40.0, "hunyuan-720p": 40.0, "wan22-a14b-720p": 80.0,
                 "cosmos2.5-2b-704p": 15.0}
# torch.compile + kernel JIT of a full-size model over the steps' own time (docs/benchmarks.md: 66 s for Wan 1.3B
# draft; 43-66 s at Wan 14B and HunyuanVideo 720p, sections 16-17, where 150 s made the budget skip a 189 s stack)
PRIOR_COMPILE_S = 90.0
# Planned cost of a step, in default-attention steps, for time estimates: a sparse step at most half (docs, one
# forward at 0.9: 0.50 Wan 1.3B, 0.39 Wan 14B, 0.19 HunyuanVideo), a step a cache skips almost nothing.
SPARSE_STEP_COST, SKIPPED_STEP_COST = 0.5, 0.05
# Tiny VAEs (CPU dry run): same classes, a handful of channels, 16 latent channels like the tiny transformers.
TINY_VAE = {"wan": dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1),
            "hunyuan": dict(latent_channels=16, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                            norm_num_groups=4, mid_block_add_attention=False)}
TINY_VAE["cosmos"] = TINY_VAE["wan"]  # Cosmos-Predict2 / 2.5 decode with the Wan2.1 VAE
TEXT_LEN = {"wan": 512, "hunyuan": 256, "cosmos": 512}  # Cosmos: max_sequence_length, padded, no mask
DEFAULT_DENSE_FRACTION = DraftAttentionConfig().dense_steps_fraction  # 0.25
REF_STEPS = 50

# --------------------------------------------------------------------------------------------- MagCache ratios
# Per-step magnitude ratios published by the MagCache authors (github.com/Zehong-Ma/MagCache, calibrated on the real
# checkpoints with the published schedulers, 50 steps). Wan2.1 T2V (MagCache4Wan2.1/magcache_generate.py, commit
# e1862e0): [cond, uncond] interleaved, 100 values; diffusers' MagCacheConfig takes one list used by both the "cond"
# and the "uncond" cache contexts, so the cond values (even positions) are used (they differ from uncond by < 0.002).
# HunyuanVideo 720p (MagCache4HunyuanVideo/magcache_sample_video.py, commit 8715292): 50 values. The first value of
# each is padding (1.0). Their settings: Wan threshold 0.12, K=2, retention 0.2; HunyuanVideo 0.24, K=6, retention 0.2.
_WAN21_T2V_1_3B_MAG = [1.0] * 2 + [
    1.0124, 1.02213, 1.00166, 1.0041, 0.99791, 1.00061, 0.99682, 0.99762, 0.99634, 0.99685, 0.99567, 0.99586,
    0.99416, 0.99422, 0.99578, 0.99575, 0.9957, 0.99563, 0.99511, 0.99506, 0.99535, 0.99531, 0.99552, 0.99549,
    0.99541, 0.99539, 0.9954, 0.99536, 0.99489, 0.99485, 0.99518, 0.99514, 0.99484, 0.99478, 0.99481, 0.99479,
    0.99415, 0.99413, 0.99419, 0.99416, 0.99396, 0.99393, 0.99388, 0.99386, 0.99349, 0.99349, 0.99309, 0.99304,
    0.9927, 0.9927, 0.99228, 0.99226, 0.99171, 0.9917, 0.99137, 0.99135, 0.99068, 0.99063, 0.99005, 0.99003,
    0.98944, 0.98942, 0.98849, 0.98849, 0.98758, 0.98757, 0.98644, 0.98643, 0.98504, 0.98503, 0.9836, 0.98359,
    0.98202, 0.98201, 0.97977, 0.97978, 0.97717, 0.97718, 0.9741, 0.97411, 0.97003, 0.97002, 0.96538, 0.96541,
    0.9593, 0.95933, 0.95086, 0.95089, 0.94013, 0.94019, 0.92402, 0.92414, 0.90241, 0.9026, 0.86821, 0.86868,
    0.81838, 0.81939]
_WAN21_T2V_14B_MAG = [1.0] * 2 + [
    1.02504, 1.03017, 1.00025, 1.00251, 0.9985, 0.99962, 0.99779, 0.99771, 0.9966, 0.99658, 0.99482, 0.99476,
    0.99467, 0.99451, 0.99664, 0.99656, 0.99434, 0.99431, 0.99533, 0.99545, 0.99468, 0.99465, 0.99438, 0.99434,
    0.99516, 0.99517, 0.99384, 0.9938, 0.99404, 0.99401, 0.99517, 0.99516, 0.99409, 0.99408, 0.99428, 0.99426,
    0.99347, 0.99343, 0.99418, 0.99416, 0.99271, 0.99269, 0.99313, 0.99311, 0.99215, 0.99215, 0.99218, 0.99215,
    0.99216, 0.99217, 0.99163, 0.99161, 0.99138, 0.99135, 0.98982, 0.9898, 0.98996, 0.98995, 0.9887, 0.98866,
    0.98772, 0.9877, 0.98767, 0.98765, 0.98573, 0.9857, 0.98501, 0.98498, 0.9838, 0.98376, 0.98177, 0.98173,
    0.98037, 0.98035, 0.97678, 0.97677, 0.97546, 0.97543, 0.97184, 0.97183, 0.96711, 0.96708, 0.96349, 0.96345,
    0.95629, 0.95625, 0.94926, 0.94929, 0.93964, 0.93961, 0.92511, 0.92504, 0.90693, 0.90678, 0.8796, 0.87945,
    0.86111, 0.86189]
_HUNYUAN_720P_MAG = [1.0] + [
    1.0754, 1.27807, 1.11596, 1.09504, 1.05188, 1.00844, 1.05779, 1.00657, 1.04142, 1.03101, 1.00679, 1.02556,
    1.00908, 1.06949, 1.05438, 1.02214, 1.02321, 1.03019, 1.00779, 1.03381, 1.01886, 1.01161, 1.02968, 1.00544,
    1.02822, 1.00689, 1.02119, 1.0105, 1.01044, 1.01572, 1.02972, 1.0094, 1.02368, 1.0226, 0.98965, 1.01588,
    1.02146, 1.0018, 1.01687, 0.99436, 1.00283, 1.01139, 0.97122, 0.98251, 0.94513, 0.97656, 0.90943, 0.85703,
    0.75456]
# model -> (50 per-step ratios, threshold, max_skip_steps K, retention_ratio, source)
MAGCACHE = {
    "wan1.3b-480p": (_WAN21_T2V_1_3B_MAG[0::2], 0.12, 2, 0.2, "Wan2.1 T2V 1.3B (cond)"),
    "wan14b-720p": (_WAN21_T2V_14B_MAG[0::2], 0.12, 2, 0.2, "Wan2.1 T2V 14B (cond)"),
    "hunyuan-720p": (_HUNYUAN_720P_MAG, 0.24, 6, 0.2, "HunyuanVideo 720p"),
    "tiny-wan": (_WAN21_T2V_1_3B_MAG[0::2], 0.12, 2, 0.2, "Wan2.1 T2V 1.3B (cond), borrowed by the tiny model"),
    "tiny-hunyuan": (_HUNYUAN_720P_MAG, 0.24, 6, 0.2, "HunyuanVideo 720p, borrowed by the tiny model"),
    "tiny-wan22": (_WAN21_T2V_1_3B_MAG[0::2], 0.12, 2, 0.2, "Wan2.1 T2V 1.3B (cond), borrowed by the tiny model"),
}

TAYLORSEER_INTERVAL = 3
# "the fastest dense path": the fastest measured setting made of these parts only (default = none of them): every
# step computed, exact attention, bf16 linears
DENSE_PARTS = frozenset({"fa4-dense", "compile"})
DEFAULT_SETTINGS = ["default", "fa4-dense", "draft", "compile", "compile+draft", "magcache", "magcache+draft",
                    "fbcache-mag+compile", "stack"]


# ------------------------------------------------------------------------------------------------ step schedules
def dense_step_count(fraction: float, steps: int) -> int:
    """Steps ``0 .. n-1`` of draft attention run dense, ``n = ceil(fraction * steps)`` (50 steps at 0.25: 13)."""
    return min(steps, math.ceil(round(fraction * steps, 9)))


def cache_start_step(steps: int) -> int:
    """First step a cache may skip: where draft attention's default schedule turns sparse (13 of 50, 2 of 8)."""
    return dense_step_count(DEFAULT_DENSE_FRACTION, steps)


def interval_schedule(steps: int, start: int, interval: int = TAYLORSEER_INTERVAL) -> list[bool]:
    """Full-compute flag per step of diffusers' TaylorSeer rule: every step before ``start``, then the steps with
    ``(step - start - 1) % interval == 0`` (start 13, interval 3: 14, 17, ..., 47)."""
    return [s < start or (s - start - 1) % interval == 0 for s in range(steps)]


def magcache_schedule(ratios: list[float], steps: int, threshold: float, max_skip: int,
                      retention: float) -> list[bool]:
    """Full-compute flag per step of diffusers' MagCache decision (``MagCacheHeadHook``) with fixed ratios: data
    independent, so the skip pattern is known before running."""
    from diffusers.hooks.mag_cache import nearest_interp

    r = nearest_interp(torch.tensor(ratios), steps) if len(ratios) != steps else torch.tensor(ratios)
    keep = int(retention * steps + 0.5)
    acc_ratio, acc_steps, acc_err, have_residual, out = 1.0, 0, 0.0, False, []
    for s in range(steps):
        compute = True
        if s >= keep:
            acc_ratio *= float(r[s])
            acc_steps += 1
            acc_err += abs(1.0 - acc_ratio)
            if have_residual and acc_err <= threshold and acc_steps <= max_skip:
                compute = False
            else:
                acc_ratio, acc_steps, acc_err = 1.0, 0, 0.0
        have_residual = have_residual or compute
        out.append(compute)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------------ the bench
@dataclass
class Bench:
    """One model's pipeline and everything measured on it."""

    name: str
    family: str
    label: str
    device: torch.device
    dtype: torch.dtype
    pipe: Any
    call_kwargs: dict
    calls_per_step: int
    results: dict = field(default_factory=dict)  # setting -> its measured result
    config: dict = field(default_factory=dict)  # the transformer config
    latent: tuple = ()  # latent (frames, height, width)
    steps: int = REF_STEPS  # steps of the pipeline call about to run (the setting reads it)
    ref_steps: int = REF_STEPS  # the step count of the step-count estimate (the published one: 50; Cosmos 2.5: 36)
    decode_source: tuple | None = None  # (setting, latents) of the first timed run: what the VAE decode times

    @property
    def transformer(self):
        return self.pipe.transformer

    def step_estimate(self) -> tuple[float | None, str]:
        """Seconds of one default-attention denoising step, for time estimates: the largest value implied by the
        settings measured so far on this model (denoise time / planned cost), else the prior from
        docs/benchmarks.md; None on models without a prior before anything was measured."""
        measured = [r["denoise_s"] / r["planned_cost"] for r in self.results.values() if r.get("denoise_s")]
        if measured:
            return max(measured), "default-step time implied by the settings measured on this model"
        if self.name in PRIOR_FORWARD_S:
            return PRIOR_FORWARD_S[self.name] * self.calls_per_step, "default-step prior from docs/benchmarks.md"
        return None, "nothing measured yet"

    def compile_estimate(self) -> float:
        measured = [r["compile_s_est"] for r in self.results.values() if r.get("compile_s_est") is not None]
        if measured:
            return max(measured)
        return PRIOR_COMPILE_S if self.name in PRIOR_FORWARD_S else 0.0


def _build_wan(name: str, transformer, config: dict, device: torch.device, emb, text_tokens: int):
    """``WanPipeline`` (Wan2.1; Wan2.2 A14B with its second expert): ``AutoencoderKLWan`` in float32, the published
    UniPC flow-matching scheduler, CFG with random ``prompt_embeds`` / ``negative_prompt_embeds`` [1, 512, 4096]."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline

    experts = {}
    if name in TWO_EXPERTS:
        # Wan2.2 A14B: a second expert of the same architecture, a copy of the first's weights (what is timed does not
        # depend on the values; building it in float32 on the GPU beside the first in bf16 needs 86 GB: OOM on an H100)
        experts = dict(transformer_2=copy.deepcopy(transformer), boundary_ratio=TWO_EXPERTS[name])
    with torch.device(device):
        vae = AutoencoderKLWan(**(TINY_VAE["wan"] if name.startswith("tiny") else {}))
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        flow_shift=SAMPLING[name]["flow_shift"])
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=vae, scheduler=scheduler,
                       **experts)
    kwargs = dict(prompt_embeds=emb(1, TEXT_LEN["wan"], config["text_dim"]),
                  negative_prompt_embeds=emb(1, TEXT_LEN["wan"], config["text_dim"]))
    return pipe, kwargs, torch.float32


def _build_hunyuan(name: str, transformer, config: dict, device: torch.device, emb, text_tokens: int):
    """``HunyuanVideoPipeline``: ``AutoencoderKLHunyuanVideo`` in fp16 (float32 on the CPU) with tiling, the published
    ``FlowMatchEulerDiscreteScheduler(shift=7.0)``, embedded guidance; ``prompt_embeds`` [1, 256, 4096] of which
    ``text_tokens`` are live, ``pooled_prompt_embeds`` [1, 768]."""
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline

    with torch.device(device):
        vae = AutoencoderKLHunyuanVideo(**(TINY_VAE["hunyuan"] if name.startswith("tiny") else {}))
    vae.enable_tiling()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=SAMPLING[name]["flow_shift"])
    pipe = HunyuanVideoPipeline(text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                transformer=transformer, vae=vae, scheduler=scheduler)
    mask = torch.zeros(1, TEXT_LEN["hunyuan"], dtype=torch.long, device=device)
    mask[:, :text_tokens] = 1  # a prompt of `text_tokens` tokens, the rest padding
    kwargs = dict(prompt_embeds=emb(1, TEXT_LEN["hunyuan"], config["text_embed_dim"]),
                  pooled_prompt_embeds=emb(1, config["pooled_projection_dim"]), prompt_attention_mask=mask)
    return pipe, kwargs, (torch.float16 if device.type == "cuda" else torch.float32)


def _build_cosmos(name: str, transformer, config: dict, device: torch.device, emb, text_tokens: int):
    """``Cosmos2_5_PredictBasePipeline`` (Cosmos-Predict2.5, text-to-world: no image or video, so no frame is
    conditioned and the VAE does not encode): ``AutoencoderKLWan`` (the Wan2.1 VAE the published pipeline decodes
    with) in bf16 as diffusers' example loads the whole pipeline (float32 on the CPU), the published UniPC scheduler
    (``COSMOS25_SCHEDULER``), CFG with random ``prompt_embeds`` / ``negative_prompt_embeds`` [1, 512, 100352] (the
    Qwen2.5-VL text encoder's 28 hidden layers concatenated over its 512 padded positions, as ``_get_prompt_embeds``
    returns them; ``crossattn_proj`` maps them to 1024 inside the transformer).

    Safety checker: the pipeline refuses to run without one (``ValueError`` in ``__call__``; its default needs
    ``cosmos_guardrail``, which downloads its own models), so the package's pass-through stand-in is given. With
    ``prompt_embeds`` and ``output_type="latent"`` the pipeline only moves the checker to the device (it checks prompt
    strings and decoded videos, neither of which this call has), so the stand-in changes nothing that is timed."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
    from diffusers.pipelines.cosmos.pipeline_cosmos2_5_predict import Cosmos2_5_PredictBasePipeline

    from draftattention_diffusers.models.cosmos import TinySafetyChecker

    with torch.device(device):
        vae = AutoencoderKLWan(**(TINY_VAE["cosmos"] if name.startswith("tiny") else {}))
        safety_checker = TinySafetyChecker()
    pipe = Cosmos2_5_PredictBasePipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
                                         scheduler=UniPCMultistepScheduler(**COSMOS25_SCHEDULER),
                                         safety_checker=safety_checker)
    width = config["crossattn_proj_in_channels"]
    kwargs = dict(prompt_embeds=emb(1, TEXT_LEN["cosmos"], width),
                  negative_prompt_embeds=emb(1, TEXT_LEN["cosmos"], width))
    return pipe, kwargs, (torch.bfloat16 if device.type == "cuda" else torch.float32)


# family (benchmark_e2e.MODELS) -> (its transformer class in diffusers, the builder of the rest of its pipeline: VAE,
# scheduler, prompt-embedding call kwargs; returns (pipeline, call kwargs, VAE dtype))
PIPELINE_BUILDERS = {"wan": ("WanTransformer3DModel", _build_wan),
                     "hunyuan": ("HunyuanVideoTransformer3DModel", _build_hunyuan),
                     "cosmos": ("CosmosTransformer3DModel", _build_cosmos)}


def build_bench(name: str, device: torch.device, dtype: torch.dtype, text_tokens: int) -> Bench:
    """The pipeline of ``name``: transformer (random weights, built on ``device``), VAE (class default = published
    config, random weights), the published scheduler, no text encoder; and the prompt-embedding call kwargs (the
    family's builder in ``PIPELINE_BUILDERS``)."""
    import diffusers

    family, config, (f, h, w), calls, label = MODELS[name]
    if family not in PIPELINE_BUILDERS:
        raise ValueError(f"{name}: no pipeline builder for family {family!r} (have {', '.join(PIPELINE_BUILDERS)})")
    transformer_class, build_pipeline = PIPELINE_BUILDERS[family]
    torch.manual_seed(0)
    with torch.device(device):
        transformer = getattr(diffusers, transformer_class)(**config)
    cast_like_from_pretrained(transformer.eval().requires_grad_(False), dtype)
    g = torch.Generator(device="cpu").manual_seed(1)
    emb = lambda *s: torch.randn(*s, generator=g).to(device, dtype)  # noqa: E731
    pipe, kwargs, vae_dtype = build_pipeline(name, transformer, config, device, emb, text_tokens)
    # every family here: a VAE of 8x spatial, 4x temporal compression
    kwargs.update(guidance_scale=SAMPLING[name]["guidance_scale"], height=h * 8, width=w * 8,
                  num_frames=(f - 1) * 4 + 1)
    cast_like_from_pretrained(pipe.vae.eval().requires_grad_(False), vae_dtype)
    pipe.set_progress_bar_config(disable=True)
    return Bench(name, family, label, device, dtype, pipe, kwargs, calls, config=config, latent=(f, h, w),
                 ref_steps=SAMPLING[name].get("num_inference_steps", REF_STEPS))


# ------------------------------------------------------------------------------------------------ settings
# A setting is a set of tokens joined by "+"; each setting is enabled with ONE call of the package's
# enable_fast_stack (draft attention, then the cache, float8, regional compile: the order users get) and undone with
# disable_fast_stack. The benchmark only chooses the arguments and, for caches, plans and checks the skip schedule.
DRAFT_TOKENS = {"draft": "default", "preset": "preset", "fa4-dense": "fa4-dense", "mild": "mild"}
MILD_WARMUP_SPARSITY = 0.75  # the milder warm-up's sparsity (docs/quality.md: its recall on the synthetic grids)
CACHE_TOKENS = ("taylorseer", "magcache", "fbcache", "fbcache-mag", "dbcache", "dbcache-mag")
DIFFUSERS_CACHES = ("taylorseer", "magcache", "fbcache", "fbcache-mag")  # enabled through the model's enable_cache
OTHER_TOKENS = ("compile", "fp8")
ALIASES = {"stack": "fbcache-mag+draft+compile", "stack+fp8": "fbcache-mag+draft+compile+fp8",
           "stack+mild": "fbcache-mag+mild+compile", "stack+mild+fp8": "fbcache-mag+mild+compile+fp8"}
DBCACHE_FN = 1  # cache-dit DBCache: the first block always runs (like First Block Cache), Bn = 0


def setting_tokens(name: str) -> list[str]:
    """A setting's parts as written, aliases expanded: ``"stack"`` -> [fbcache-mag, draft, compile]."""
    name = ALIASES.get(name, name)
    return [] if name == "default" else name.split("+")


def parse_setting(name: str) -> tuple[str | None, str | None, bool, bool]:
    """``"magcache+draft+compile"`` -> (draft kind, cache, compile, fp8); ValueError naming the problem."""
    name = ALIASES.get(name, name)
    tokens = setting_tokens(name)
    draft = [DRAFT_TOKENS[t] for t in tokens if t in DRAFT_TOKENS]
    cache = [t for t in tokens if t in CACHE_TOKENS]
    unknown = [t for t in tokens if t not in DRAFT_TOKENS and t not in CACHE_TOKENS and t not in OTHER_TOKENS]
    if unknown or len(draft) > 1 or len(cache) > 1 or len(set(tokens)) != len(tokens) or not name:
        raise ValueError(f"setting {name!r}: expected 'default', 'stack', 'stack+fp8', 'stack+mild', 'stack+mild+fp8' or '+'-joined parts: at most one "
                         f"of {', '.join(DRAFT_TOKENS)}; at most one cache of {', '.join(CACHE_TOKENS)}; "
                         f"{', '.join(OTHER_TOKENS)} (e.g. fbcache-mag+draft+compile)")
    return (draft[0] if draft else None), (cache[0] if cache else None), "compile" in tokens, "fp8" in tokens


def without_draft(name: str) -> str | None:
    """The same setting without draft attention (None if it has none)."""
    tokens = setting_tokens(name)
    if not any(t in DRAFT_TOKENS for t in tokens):
        return None
    rest = [t for t in tokens if t not in DRAFT_TOKENS]
    return "+".join(rest) if rest else "default"


def dense_baselines(name: str) -> list[frozenset[str]]:
    """The settings a draft setting is compared with as "the same without draft attention", as parts: its other
    parts alone (the model's own attention, e.g. HunyuanVideo's masked SDPA) and, for a sparse setting, the same
    parts with ``fa4-dense`` in place of draft (the stack, dense at every step on flash-attn-4). The report takes the
    faster of those measured, so "draft adds" is never against a slower attention than the fastest dense one."""
    base = without_draft(name)
    if base is None:
        return []
    own = frozenset(setting_tokens(base))
    return [own] if parse_setting(name)[0] == "fa4-dense" else [own, own | {"fa4-dense"}]


class Setting:
    """One setting: its enable_fast_stack arguments, its planned cache schedule, and the probes that check it."""

    def __init__(self, name: str):
        self.name = ALIASES.get(name, name)
        self.draft, self.cache, self.compile, self.fp8 = parse_setting(self.name)
        self.stack = None

    is_cache = property(lambda self: self.cache is not None)
    is_compile = property(lambda self: self.compile)

    def draft_config(self, bench: Bench) -> DraftAttentionConfig | None:
        if self.draft == "preset":
            return load_preset(PRESETS[bench.name]).draft_attention
        if self.draft == "fa4-dense":
            return DraftAttentionConfig(dense_steps_fraction=1.0, dense_backend="fa4")
        if self.draft == "mild":
            return DraftAttentionConfig(warmup_sparsity=MILD_WARMUP_SPARSITY)
        return DraftAttentionConfig() if self.draft == "default" else None

    def fraction(self, bench: Bench) -> float | None:
        c = self.draft_config(bench)
        return c.dense_steps_fraction if c is not None else None

    def mag_params(self, bench: Bench):
        return MAGCACHE.get(bench.name)

    def expected(self, bench: Bench, steps: int) -> list[bool] | None:
        """Planned full-compute flag per step (None without a cache)."""
        if self.cache is None:
            return None
        if self.cache in ("magcache", "fbcache-mag", "dbcache-mag"):
            ratios, thr, k, ret, _ = self.mag_params(bench)
            return magcache_schedule(ratios, steps, thr, k, ret)
        return interval_schedule(steps, cache_start_step(steps))

    def unavailable(self, bench: Bench) -> str | None:
        if self.draft == "fa4-dense":
            why = fa4_unavailable(bench)
            if why:
                return why
        if self.cache in ("magcache", "fbcache-mag", "dbcache-mag") and self.mag_params(bench) is None:
            return f"no published MagCache ratios for {bench.name}"
        if self.cache in DIFFUSERS_CACHES and not hasattr(bench.transformer, "enable_cache"):
            import diffusers

            # Cosmos: CosmosTransformer3DModel is no CacheMixin (diffusers 0.42.1), so diffusers' step caches cannot be
            # enabled on it (enable_fast_stack would fail with an AttributeError); cache-dit's DBCache can
            return (f"{type(bench.transformer).__name__} has no diffusers step cache (no CacheMixin / enable_cache in "
                    f"diffusers {diffusers.__version__}); the dbcache settings use cache-dit instead")
        if self.fp8 and not getattr(bench.transformer, "_repeated_blocks", None):
            # enable_fast_stack's fp8 quantizes the linear layers of the _repeated_blocks classes (Cosmos: none)
            return (f"{type(bench.transformer).__name__} declares no repeated blocks, whose linear layers fp8 "
                    "quantizes")
        if self.cache == "taylorseer" and bench.device.type == "cuda":
            need = taylorseer_bytes(bench)
            free, _ = torch.cuda.mem_get_info(bench.device)
            if need + 8 * 2**30 > free:
                return (f"its Taylor factors (2 block outputs x blocks x {bench.calls_per_step} CFG contexts) need "
                        f"{need / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free")
        return None

    def stack_kwargs(self, bench: Bench) -> dict:
        """The arguments of enable_fast_stack for this setting (everything but the pipeline)."""
        kw: dict[str, Any] = dict(compile=self.compile, fp8=self.fp8)
        draft = self.draft_config(bench)
        kw["draft"] = draft if draft is not None else False
        steps = bench.steps
        if self.cache == "taylorseer":
            kw.update(cache="taylorseer", num_inference_steps=steps)
        elif self.cache == "magcache":
            from diffusers import MagCacheConfig

            ratios, thr, k, ret, _ = self.mag_params(bench)
            # the published 50 ratios as given; stack.set_num_inference_steps interpolates them to each call's steps
            kw.update(cache=MagCacheConfig(threshold=thr, max_skip_steps=k, retention_ratio=ret,
                                           num_inference_steps=len(ratios), mag_ratios=list(ratios)),
                      num_inference_steps=steps)
        elif self.cache in ("fbcache", "fbcache-mag"):
            kw.update(cache="first_block", compute_mask=partial(self.expected, bench))
        elif self.cache in ("dbcache", "dbcache-mag"):
            import cache_dit

            kw.update(cache=cache_dit.DBCacheConfig(Fn_compute_blocks=DBCACHE_FN, Bn_compute_blocks=0,
                                                    max_warmup_steps=cache_start_step(steps)),
                      compute_mask=partial(self.expected, bench), num_inference_steps=steps)
        return kw

    def describe(self, bench: Bench) -> str:
        if self.stack is not None:
            return " -> ".join(self.stack.describe()) or "diffusers' default attention"
        kw = self.stack_kwargs(bench)
        return "enable_fast_stack(pipe, " + ", ".join(f"{k}={v!r}" for k, v in kw.items() if k != "draft") + ")"

    def enable(self, bench: Bench) -> None:
        if self.name == "default":
            return
        try:
            self.stack = enable_fast_stack(bench.pipe, **self.stack_kwargs(bench))
        except ValueError as e:  # a combination the stack refuses (with its reason): recorded as such
            raise SkipSetting(f"refused by enable_fast_stack: {e}") from None

    def disable(self, bench: Bench) -> None:
        if self.stack is not None:
            self.stack = None
            disable_fast_stack(bench.pipe)

    def set_steps(self, bench: Bench, steps: int) -> None:
        bench.steps = steps
        if self.stack is not None and self.cache in ("magcache", "taylorseer", "dbcache", "dbcache-mag"):
            self.stack.set_num_inference_steps(steps)

    def computed(self, bench: Bench) -> dict[str, bool] | None:
        """Per cache context ("cond", "uncond"), read at the end of a step from the diffusers cache's state on the
        first transformer: did this step run the transformer blocks in full? (cache-dit: read after the call.)"""
        hook = {"taylorseer": "taylorseer_cache", "magcache": "mag_cache_leader_block_hook"}.get(
            self.cache, "fbc_leader_block_hook" if self.cache in ("fbcache", "fbcache-mag") else None)
        if hook is None:
            return None
        hooks = _hooks(bench.transformer, hook)
        if not hooks:
            return None
        states = dict(getattr(getattr(hooks[0], "state_manager", None), "_state_cache", {}) or {})
        if self.cache == "taylorseer":
            return {ctx: st.last_update_step == st.current_step for ctx, st in states.items()}
        return {ctx: bool(st.should_compute) for ctx, st in states.items()}

    def computed_after_run(self, bench: Bench, steps: int) -> dict[str, list[bool]] | None:
        """cache-dit: its cached steps per branch (statistics it attaches after each pipeline call)."""
        if self.cache not in ("dbcache", "dbcache-mag"):
            return None
        t = bench.transformer
        out = {"cond": [s not in getattr(t, "_cached_steps", []) for s in range(steps)]}
        if bench.calls_per_step == 2:
            out["uncond"] = [s not in getattr(t, "_cfg_cached_steps", []) for s in range(steps)]
        return out


def fa4_unavailable(bench: Bench) -> str | None:
    if bench.device.type != "cuda":
        return "flash-attn-4 needs a CUDA GPU (Hopper); this run is on the CPU"
    try:
        from draftattention_diffusers.backends import AttentionInputs, get_backend

        cc = torch.cuda.get_device_capability(bench.device)
        head_dim = bench.config["attention_head_dim"]
        reasons = get_backend("fa4").not_supported_reasons(
            AttentionInputs("cuda", cc, bench.dtype, head_dim, head_dim, 128, bench.family == "hunyuan"))
        return "fa4 cannot run: " + "; ".join(reasons) if reasons else None
    except Exception as e:  # the backend API moved: let the setting itself fail visibly instead
        print(f"   (could not check fa4 availability: {type(e).__name__}: {e})")
        return None


def taylorseer_bytes(bench: Bench) -> int:
    """Taylor factors held: 2 outputs per block and cache context (video + text tokens), bf16."""
    config, (f, h, w) = bench.config, bench.latent
    tokens = f * h * w // 4 + (TEXT_LEN["hunyuan"] if bench.family == "hunyuan" else 0)
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    blocks = config["num_layers"] + config.get("num_single_layers", 0)
    return 2 * blocks * bench.calls_per_step * tokens * dim * 2


def _hooks(transformer: torch.nn.Module, hook_name: str) -> list:
    """The diffusers hooks named ``hook_name`` on the transformer's submodules, in module order."""
    found = []
    for _, module in transformer.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook(hook_name) if registry is not None else None
        if hook is not None:
            found.append(hook)
    return found


def undo(bench: Bench, setting: Setting) -> list[str]:
    """Disable the stack, then make sure nothing is left (a stack, draft attention, compiled graphs), whatever failed
    before. Returns the errors met (printed by the caller)."""
    errors = []
    try:
        setting.disable(bench)
    except Exception as e:
        errors.append(f"disable_fast_stack: {type(e).__name__}: {e}")
    if get_fast_stack(bench.pipe) is not None:
        errors.append("a fast stack was still enabled after undo")
    try:
        disable_draft_attention(bench.pipe)
        errors.append("draft attention was still enabled after undo (disabled now)")
    except RuntimeError:
        pass  # not enabled: expected
    torch._dynamo.reset()  # no graph of this setting guards the next one
    return errors


def dense_flags(bench: Bench, setting: Setting, steps: int) -> list[bool]:
    """Which steps count as dense for the per-step means: draft attention's dense steps; for settings without
    sparse steps (no draft, fa4-dense) the same positions of the default schedule (first ceil(0.25 n))."""
    f = setting.fraction(bench)
    if f is None or not 0.0 < f < 1.0:
        f = DEFAULT_DENSE_FRACTION
    n = dense_step_count(f, steps)
    return [s < n for s in range(steps)]


def expected_compute(bench: Bench, setting: Setting, steps: int) -> list[bool]:
    """Full-compute flag per step planned by the cache (all True without a cache)."""
    return setting.expected(bench, steps) or [True] * steps


def planned_cost(bench: Bench, setting: Setting, steps: int) -> float:
    """Planned time of ``steps`` steps in default-attention steps: 1 per dense step, ``SPARSE_STEP_COST`` per
    sparse step of draft attention, ``SKIPPED_STEP_COST`` per step a cache skips (compile and fa4 dense: 1)."""
    f = setting.fraction(bench)
    n_dense = dense_step_count(f, steps) if f is not None else steps
    return sum((1.0 if s < n_dense else SPARSE_STEP_COST) if c else SKIPPED_STEP_COST
               for s, c in enumerate(expected_compute(bench, setting, steps)))


def choose_warmup_steps(bench: Bench, setting: Setting, minimum: int, cap: int = 12) -> tuple[int, str]:
    """The fewest warm-up steps >= ``minimum`` whose run computes (not cache-skips) a dense and a sparse step of
    draft attention, and skips at least one step when a cache is on: so every code path (and its JIT compile)
    of the timed run has run once."""
    f = setting.fraction(bench)
    has_sparse = f is not None and f < 1.0
    has_dense = f is not None and f > 0.0
    # compiled under a cache, step 0 and later steps need different graphs (the cache's state is in dynamo's
    # guards): two computed dense steps then (docs/benchmarks.md section 10)
    dense_needed = 2 if setting.is_cache and setting.is_compile else 1
    for w in range(max(1, minimum), cap + 1):
        dense = [s < dense_step_count(f, w) for s in range(w)] if f is not None else [True] * w
        comp = expected_compute(bench, setting, w)
        ok = ((not has_sparse or any(c and not dn for c, dn in zip(comp, dense)))
              and (not has_dense or sum(c and dn for c, dn in zip(comp, dense)) >= dense_needed)
              and (not setting.is_cache or not all(comp)))
        if ok:
            return w, ""
    return max(1, minimum), f"no warm-up of <= {cap} steps covers every path; using {max(1, minimum)}"

# ------------------------------------------------------------------------------------------------------ running
class SkipSetting(Exception):
    """A setting that cannot run here (no GPU kernel, not enough memory) or would not fit in the time budget."""


def run_pipeline(bench: Bench, setting: Setting, steps: int, seed: int) -> dict:
    """One pipeline call of ``steps`` steps to latents: wall-clock seconds (synchronised), per-step seconds (from
    ``callback_on_step_end``), the caches' observed full-compute flags per step and context, the latents."""
    setting.set_steps(bench, steps)
    device = bench.device
    marks, computed = [], []

    def on_step_end(pipe, i, t, callback_kwargs):
        sync(device)
        marks.append(time.perf_counter())
        computed.append((i, setting.computed(bench)))
        return callback_kwargs

    generator = torch.Generator(device=device).manual_seed(seed)
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():  # the pipeline's own __call__ is no_grad too; no inference_mode, as users call it
        latents = bench.pipe(**bench.call_kwargs, num_inference_steps=steps, generator=generator,
                             output_type="latent", callback_on_step_end=on_step_end).frames
    sync(device)
    total = time.perf_counter() - t0
    step_s = [b - a for a, b in zip([t0] + marks[:-1], marks)]
    after = setting.computed_after_run(bench, steps)
    if after is not None:  # cache-dit: its statistics of the whole call
        computed = [(i, {ctx: flags[i] for ctx, flags in after.items()}) for i in range(steps)]
    return {"seconds": total, "step_s": step_s, "computed": computed, "latents": latents}


def cache_report(bench: Bench, setting: Setting, run: dict, steps: int) -> tuple[dict, list[str]]:
    """Observed vs planned full-compute steps of the cache, per cache context; lines for the log."""
    if not setting.is_cache:
        return {}, []
    out, lines = {}, []
    name = setting.cache
    expected = setting.expected(bench, steps)
    per_ctx: dict[str, list[bool]] = {}
    for i, flags in run["computed"]:
        for ctx, c in (flags or {}).items():
            per_ctx.setdefault(ctx, [None] * steps)[i] = c
    exp_idx = [s for s, c in enumerate(expected) if c]
    if not per_ctx:
        lines.append(f"{name}: cache state not readable (internals changed?); planned full compute at steps "
                     f"{ranges(exp_idx)}")
    for ctx, flags in per_ctx.items():
        idx = [s for s, c in enumerate(flags) if c]
        ok = flags == expected
        lines.append(f"{name} [{ctx}]: full compute at steps {ranges(idx)} ({len(idx)} of {steps}; "
                     f"{steps - len(idx)} skipped), planned {ranges(exp_idx)}: {'as planned' if ok else 'DIFFERS'}")
    out[name] = {"planned_compute_steps": exp_idx,
                 "observed_compute_steps": {c: [s for s, v in enumerate(f) if v] for c, f in per_ctx.items()},
                 "as_planned": all(f == expected for f in per_ctx.values()) if per_ctx else None}
    return out, lines


def draft_summary(bench: Bench, setting: Setting) -> tuple[dict | None, str | None]:
    if setting.draft is None:
        return None, None
    try:
        stats = get_draft_stats(bench.pipe)
        s = stats.summary()
        keep = ("steps", "forwards", "sparse_calls", "dense_calls", "mean_sparsity", "draft_seconds", "fallbacks")
        return {k: s[k] for k in keep if k in s}, stats.format()
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}, f"draft stats unavailable: {type(e).__name__}: {e}"


def dynamo_counts() -> tuple[int, int]:
    """(graphs compiled so far, graph breaks so far) from dynamo's counters."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"]), int(sum(counters["graph_break"].values()))


def check_budget(bench: Bench, setting: Setting, warm: int, args,
                 deadline: float | None) -> tuple[str | None, float | None]:
    """(skip reason or None, estimated seconds) of a whole setting: the planned cost of the warm-up (twice with
    torch.compile, plus a compile allowance) and of the timed run, times the default-step time."""
    step_est, basis = bench.step_estimate()
    if deadline is None or step_est is None:
        return None, None
    compiling = setting.is_compile
    cost = (2 if compiling else 1) * planned_cost(bench, setting, warm) + planned_cost(bench, setting, args.steps)
    est = cost * step_est + (bench.compile_estimate() if compiling else 0.0)
    left = deadline - time.perf_counter()
    if est > left:
        return (f"time budget: needs ~{est:.0f} s ({cost:.1f} default-step equivalents x {step_est:.2f} s, {basis}"
                f"{', + compile' if compiling else ''}), {left:.0f} s left"), est
    return None, est


def warm_up(bench: Bench, setting: Setting, warm: int, args, log) -> dict:
    """Untimed warm-up pipeline call(s) of ``warm`` steps at the same shape and settings. With torch.compile the
    call is repeated (up to ``--max-warmup-calls``) until one compiles no new graph: a graph first needed when
    a dense step follows sparse ones is then compiled here, not in the timed run."""
    compiling = setting.is_compile
    calls, total, step_s = 0, 0.0, []
    while True:
        graphs0, _ = dynamo_counts()
        w = run_pipeline(bench, setting, warm, args.seed)
        calls += 1
        total += w["seconds"]
        step_s.append(w["step_s"])
        new_graphs = dynamo_counts()[0] - graphs0
        if not compiling or new_graphs == 0 or calls >= args.max_warmup_calls:
            break
    ds, _ = draft_summary(bench, setting)
    modes = (ds or {}).get("steps") or {}
    computed = [s for s, c in enumerate(expected_compute(bench, setting, warm)) if c]
    log(f"   warm-up (untimed): {calls} call(s) of {warm} steps in {total:.2f} s; draft modes "
        f"{', '.join(f'{s}:{m}' for s, m in sorted(modes.items())) or '-'}; full compute at {ranges(computed)}"
        + (f"; graphs compiled in the last call: {new_graphs}" if compiling else ""))
    for line in cache_report(bench, setting, w, warm)[1]:
        log(f"   warm-up {line}")
    return {"steps": warm, "calls": calls, "seconds": total, "step_s": step_s, "computed_steps": computed,
            "draft_steps": modes, "graphs_compiled_last_call": new_graphs if compiling else None}


def timed_run(bench: Bench, setting: Setting, args) -> tuple[dict, torch.Tensor, list[str]]:
    """The timed pipeline call: denoise seconds, per-step times and their dense/sparse means, peak memory,
    graphs compiled inside it, cache schedule check, draft statistics. Returns (result, latents, log lines)."""
    graphs0, _ = dynamo_counts()
    if bench.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(bench.device)
    run = run_pipeline(bench, setting, args.steps, args.seed)
    graphs1, breaks1 = dynamo_counts()
    res: dict[str, Any] = {"denoise_s": run["seconds"], "step_s": run["step_s"],
                           "latents_finite": bool(torch.isfinite(run["latents"]).all())}
    if bench.device.type == "cuda":
        res["peak_gib"] = torch.cuda.max_memory_allocated(bench.device) / 2**30
    dense = dense_flags(bench, setting, args.steps)
    d_s = [t for t, dn in zip(run["step_s"], dense) if dn]
    s_s = [t for t, dn in zip(run["step_s"], dense) if not dn]
    res["dense_step_mean_s"] = sum(d_s) / len(d_s) if d_s else None
    res["sparse_step_mean_s"] = sum(s_s) / len(s_s) if s_s else None
    res["dense_steps"], res["sparse_steps"] = len(d_s), len(s_s)
    # step classes of this run and of the reference schedule (50 steps; Cosmos 2.5: its published 36), for the
    # step-count estimate (estimate_50; the keys keep their "50" name)
    res["classes"] = step_classes(dense, expected_compute(bench, setting, args.steps))
    ref = bench.ref_steps
    res["ref_steps"] = ref
    res["classes_50"] = step_classes(dense_flags(bench, setting, ref), expected_compute(bench, setting, ref))
    frac = setting.fraction(bench)
    res["has_draft"] = frac is not None and 0.0 < frac < 1.0
    if setting.is_compile:
        res["graphs_compiled_in_timed_run"] = graphs1 - graphs0
        res["graph_breaks_total"] = breaks1
    res["cache"], cache_lines = cache_report(bench, setting, run, args.steps)
    res["draft_stats"], stats_text = draft_summary(bench, setting)

    f = lambda x: "-" if x is None else f"{x:.3f} s"  # noqa: E731
    lines = [f"denoise: {args.steps} steps in {res['denoise_s']:.3f} s | dense-step mean {f(res['dense_step_mean_s'])} "
             f"({len(d_s)}) | sparse-step mean {f(res['sparse_step_mean_s'])} ({len(s_s)})"
             + (f" | peak {res['peak_gib']:.1f} GiB" if "peak_gib" in res else "")
             + ("" if res["latents_finite"] else " | latents not finite (random weights)"),
             f"per-step s: {' '.join(f'{t:.3f}' for t in res['step_s'])}"]
    lines += cache_lines
    if stats_text:
        lines += stats_text.splitlines()
        modes = (res["draft_stats"] or {}).get("steps") or {}
        planned = {s: ("dense" if dn else "sparse") for s, dn in enumerate(dense)}
        modes = {k: ("dense" if m == "warmup" else m) for k, m in modes.items()}  # the milder warm-up's steps
        if modes and res["has_draft"] and {int(k): v for k, v in modes.items()} != planned:
            lines.append(f"note: draft modes per step differ from the planned split "
                         f"({ranges([s for s, m in planned.items() if m == 'dense'])} dense)")
    return res, run["latents"], lines


def split_setting(text: str, default_steps: int) -> tuple[str, int]:
    """``"magcache+draft@8"`` -> ("magcache+draft", 8); without ``@``: the run's ``--steps``."""
    name, _, steps = text.partition("@")
    parse_setting(name)  # raises naming the problem
    if steps and not (steps.isdigit() and int(steps) > 0):
        raise ValueError(f"setting {text!r}: @<steps> must be a positive integer (e.g. draft@4)")
    return name, int(steps) if steps else default_steps


def run_setting(bench: Bench, name: str, args, deadline: float | None, log) -> dict:
    """Configure, warm up, time and undo one setting. Never raises: an error is recorded, printed with the setting
    name and its traceback, and the pipeline is restored for the next setting."""
    name, steps = split_setting(name, args.steps)
    args = argparse.Namespace(**{**vars(args), "steps": steps})  # this setting's own step count
    setting = Setting(name)
    bench.steps = args.steps
    res: dict[str, Any] = {"setting": name, "steps": args.steps}
    log(f"-- {name}")
    try:
        reason = setting.unavailable(bench)
        if reason:
            raise SkipSetting(reason)
        warm, warm_note = choose_warmup_steps(bench, setting, args.warmup_steps)
        if warm_note:
            log(f"   note: {warm_note}")
        reason, res["estimate_s"] = check_budget(bench, setting, warm, args, deadline)
        if reason:
            raise SkipSetting(reason)
        t0 = time.perf_counter()
        setting.enable(bench)  # one enable_fast_stack call
        res["configure_s"] = time.perf_counter() - t0
        res["description"] = setting.describe(bench)
        log(f"   {res['description']}")
        res["warmup"] = warm_up(bench, setting, warm, args, log)
        res["planned_cost"] = planned_cost(bench, setting, args.steps)
        step_est = bench.step_estimate()[0] or res["warmup"]["seconds"] / (res["warmup"]["calls"]
                                                                           * planned_cost(bench, setting, warm))
        left = deadline - time.perf_counter() if deadline is not None else math.inf
        if res["planned_cost"] * step_est > left:
            raise SkipSetting(f"time budget: after the warm-up, the {args.steps} timed steps need "
                              f"~{res['planned_cost'] * step_est:.0f} s, {left:.0f} s left (timed run skipped)")
        timed, latents, lines = timed_run(bench, setting, args)
        res.update(timed)
        if setting.is_compile:
            per_call = res["warmup"]["seconds"] / res["warmup"]["calls"]
            res["compile_s_est"] = max(0.0, res["warmup"]["seconds"] - res["warmup"]["calls"] * warm
                                       * res["denoise_s"] / args.steps)
            n = res["graphs_compiled_in_timed_run"]
            lines.append(f"torch.compile: warm-up {res['warmup']['seconds']:.1f} s ({res['warmup']['calls']} call(s), "
                         f"{per_call:.1f} s each) incl. compile (~{res['compile_s_est']:.1f} s over the steps' own "
                         f"time); graphs compiled during the timed run: {n}"
                         f"{' (RECOMPILES INSIDE THE TIMING)' if n else ''}; graph breaks so far: "
                         f"{res['graph_breaks_total']}")
        for line in lines:
            log(f"   {line}")
        bench.results[name] = res
        if bench.decode_source is None:
            bench.decode_source = (name, latents)
        del latents
    except SkipSetting as e:
        res["skipped"] = str(e)
        log(f"   SKIPPED: {e}")
    except Exception as e:  # one failing setting (a backend, OOM, draft + cache composition) must not hide the rest
        res["error"] = f"{type(e).__name__}: {e}"
        log(f"   FAILED [{name}]: {type(e).__name__}: {e}")
        for line in traceback.format_exc().rstrip().splitlines()[-12:]:
            log(f"     | {line}")
    finally:
        for err in undo(bench, setting):
            log(f"   undo [{name}]: {err}")
        gc.collect()
        if bench.device.type == "cuda":
            torch.cuda.empty_cache()
    return res


def decode_once(bench: Bench, latents: torch.Tensor, log) -> dict:
    """Time one ``vae.decode`` of denoised latents (the pipeline's own latent scaling first), a single call."""
    vae = bench.pipe.vae
    lat = latents.to(bench.device, vae.dtype)
    if bench.family in ("wan", "cosmos"):  # AutoencoderKLWan: the pipelines' latents_mean / latents_std
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(lat)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(lat)
        lat = lat / inv_std + mean
    else:
        lat = lat / vae.config.scaling_factor
    sync(bench.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        video = vae.decode(lat, return_dict=False)[0]
    sync(bench.device)
    secs = time.perf_counter() - t0
    out = {"seconds": secs, "shape": list(video.shape), "dtype": str(vae.dtype).replace("torch.", ""),
           "tiling": bool(getattr(vae, "use_tiling", False)), "finite": bool(torch.isfinite(video).all())}
    log(f"   VAE decode ({type(vae).__name__}, {out['dtype']}{', tiling' if out['tiling'] else ''}; one call, not "
        f"warmed up): {secs:.2f} s -> {tuple(video.shape)}{'' if out['finite'] else ' (not finite: random weights)'}")
    return out


# ---------------------------------------------------------------------------------------------------- summaries
def step_classes(dense: list[bool], computed: list[bool]) -> list[str]:
    """Class of each step for the 50-step estimate: "dense" / "sparse" (draft attention's split, computed in full)
    or "skipped" (a cache skipped the transformer blocks)."""
    return [("dense" if d else "sparse") if c else "skipped" for d, c in zip(dense, computed)]


def estimate_50(res: dict) -> tuple[float | None, str]:
    """50-step estimate of a setting from its own timed run: the mean time of each step class (dense, sparse,
    skipped; :func:`step_classes`) in the run, times the number of such steps in the 50-step schedule (draft
    attention's ceil(0.25 x 50) = 13 dense steps; a cache's fixed 50-step schedule). A model with another published
    step count (``Bench.ref_steps``; Cosmos-Predict2.5: 36) gets its estimate at that count instead. None, with the
    reason, when the reference schedule has a class the run did not have."""
    if res.get("denoise_s") is None or "classes" not in res:
        return None, "not measured"
    times: dict[str, list[float]] = {}
    for c, t in zip(res["classes"], res["step_s"]):
        times.setdefault(c, []).append(t)
    mean = {c: sum(v) / len(v) for c, v in times.items()}
    if "dense" in mean and "sparse" not in mean and "sparse" in res["classes_50"] and not res.get("has_draft"):
        mean["sparse"] = mean["dense"]  # without draft attention the two classes are the same computation
    if "sparse" in mean and "dense" not in mean and not res.get("has_draft"):
        mean["dense"] = mean["sparse"]
    missing = sorted(set(res["classes_50"]) - set(mean))
    if missing:
        return None, f"the timed run had no {'/'.join(missing)} step"
    return sum(mean[c] for c in res["classes_50"]), ""


def summarize(model_res: dict) -> list[dict]:
    """Speedups of every measured setting of one model: vs default, vs the fastest dense setting, vs the same
    stack without draft attention; and the 50-step estimates."""
    settings = model_res["settings"]
    t = {k: v["denoise_s"] for k, v in settings.items() if v.get("denoise_s")}
    # the fastest dense path by its 50-step estimate (settings may have run different step counts)
    dense = {k: t[k] for k in t if set(setting_tokens(k)) <= DENSE_PARTS}
    est_why = {k: estimate_50(v) for k, v in settings.items()}
    est = {k: e for k, (e, _) in est_why.items()}
    fastest = min(dense, key=lambda k: est[k] or math.inf) if dense else None
    measured = {frozenset(setting_tokens(k)): k for k in t}  # "the same without draft" is matched by its parts
    rows = []
    for k, v in settings.items():
        row = {"setting": k, **{x: v.get(x) for x in ("denoise_s", "dense_step_mean_s", "sparse_step_mean_s",
                                                      "skipped", "error", "steps")}}
        row["warmup_s"] = (v.get("warmup") or {}).get("seconds")
        row["ref_steps"] = v.get("ref_steps", REF_STEPS)  # the step count of the est50_* fields
        if k in t:
            same = lambda other: settings[other].get("steps") == v.get("steps")  # noqa: E731
            row["vs_default"] = t["default"] / t[k] if "default" in t and same("default") else None
            row["fastest_dense"] = fastest
            row["vs_fastest_dense"] = dense[fastest] / t[k] if fastest and same(fastest) else None
            bases = [measured[b] for b in dense_baselines(k) if b in measured]
            base = min(bases, key=lambda b: est.get(b) or math.inf) if bases else without_draft(k)
            row["without_draft"] = base
            row["vs_without_draft"] = t[base] / t[k] if base in t and same(base) else None
            row["est50_vs_without_draft"] = est[base] / est[k] if base in t and est.get(base) and est[k] else None
            row["est50_s"], row["est50_note"] = est_why[k]
            row["est50_vs_default"] = est["default"] / est[k] if est.get("default") and est[k] else None
            fe = est.get(fastest) if fastest else None
            row["est50_vs_fastest_dense"] = fe / est[k] if fe and est[k] else None
        rows.append(row)
    return rows


def cell(text: str, limit: int = 140) -> str:
    """A message as one markdown table cell: one line, no column separators, shortened."""
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def markdown(all_results: list[dict], meta: dict) -> str:
    """The short table printed last."""
    x = lambda v: f"{v:.2f}x" if v else "-"  # noqa: E731
    s = lambda v, p=3: f"{v:.{p}f}" if v is not None else "-"  # noqa: E731
    other = {m["label"]: m["ref_steps"] for m in all_results if m.get("ref_steps", REF_STEPS) != REF_STEPS}
    est = "50-step" if not other else "Reference-step"
    counts = "" if not other else (" (" + "; ".join(
        f"{m['label']}: {n} steps, {dense_step_count(DEFAULT_DENSE_FRACTION, n)} dense"
        for m in all_results for n in [m.get("ref_steps", REF_STEPS)]) + ")")
    lines = [f"Pipeline benchmark {meta['date']}, {meta['device']}, torch {meta['torch']}, diffusers "
             f"{meta['diffusers']}, {meta['dtype']} transformer, {meta['steps']} steps (warm-up untimed, >= "
             f"{meta['warmup_steps']} steps per setting). Step means: dense = draft's dense steps (first "
             f"ceil(0.25 n)). {est} estimate{counts}: each step class (dense, sparse, skipped by a cache) at its mean "
             f"time in the setting's own run, times its count in the {est.lower()} schedule "
             f"({'13 dense' if not other else 'first ceil(0.25 n) dense'}; the cache's fixed schedule). "
             "Measured-run ratios only between settings of equal step counts.", "",
             "| model | setting | steps | denoise s | dense-step s | sparse-step s | warm-up s | vs default | "
             f"vs fastest dense | vs same w/o draft | {est.lower()} est. s | est. vs default | est. vs fastest dense | "
             "est. vs same w/o draft |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    blank = " | " * 11
    for m in all_results:
        label = m["label"]
        if m.get("skipped") or m.get("error"):
            lines.append(f"| {label} | (model {'skipped' if m.get('skipped') else 'FAILED'}) | "
                         f"{cell(m.get('skipped') or m.get('error'))}{blank}|")
            continue
        for r in m.get("summary", []):
            if r.get("denoise_s") is None:
                why = r.get("skipped") or r.get("error") or "not measured"
                lines.append(f"| {label} | {r['setting']} | {'skipped' if r.get('skipped') else 'FAILED'}: "
                             f"{cell(why)}{blank}|")
                continue
            fd = f" ({r['fastest_dense']})" if r.get("fastest_dense") else ""
            wd = f" ({r['without_draft']})" if r.get("without_draft") else ""
            lines.append(f"| {label} | {r['setting']} | {r.get('steps')} | {s(r['denoise_s'])} | "
                         f"{s(r['dense_step_mean_s'])} | {s(r['sparse_step_mean_s'])} | {s(r['warmup_s'], 1)} | "
                         f"{x(r.get('vs_default'))} | {x(r.get('vs_fastest_dense'))}{fd} | "
                         f"{x(r.get('vs_without_draft'))}{wd if r.get('vs_without_draft') else ''} | "
                         f"{s(r.get('est50_s'), 1) if r.get('est50_s') else 'n/a'} | {x(r.get('est50_vs_default'))} |"
                         f" {x(r.get('est50_vs_fastest_dense'))} | "
                         f"{x(r.get('est50_vs_without_draft'))}{wd if r.get('est50_vs_without_draft') else ''} |")
        dec = m.get("decode")
        if dec and dec.get("seconds") is not None:
            lines.append(f"| {label} | VAE decode (one call) | | {dec['seconds']:.2f}{blank}|")
        elif dec:
            lines.append(f"| {label} | VAE decode | {'skipped' if dec.get('skipped') else 'FAILED'}: "
                         f"{cell(dec.get('skipped') or dec.get('error'))}{blank}|")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------- main
def run_model(name: str, settings: list[str], args, device: torch.device, dtype: torch.dtype,
              deadline: float | None, log, save: Callable[[], None], mres: dict) -> None:
    """Build one model's pipeline, run every setting (saving results after each), time one VAE decode, summarise."""
    family, _, _, calls, label = MODELS[name]
    log(f"\n== {name}: {label} ({'CFG, 2 transformer calls' if calls == 2 else '1 transformer call'} per step)")
    if deadline is not None and name in PRIOR_FORWARD_S:
        need = PRIOR_BUILD_S[name] + (args.warmup_steps + 1) * PRIOR_FORWARD_S[name] * calls
        if time.perf_counter() + need > deadline:
            mres["skipped"] = (f"time budget: the build and a few steps need ~{need:.0f} s (prior), "
                               f"{deadline - time.perf_counter():.0f} s left")
            log(f"   SKIPPED: {mres['skipped']}")
            return
    t0 = time.perf_counter()
    try:
        bench = build_bench(name, device, dtype, args.text_tokens)
    except Exception as e:
        mres["error"] = f"build failed: {type(e).__name__}: {e}"
        log(f"   FAILED to build: {type(e).__name__}: {e}")
        return
    mres["build_s"] = time.perf_counter() - t0
    mres["ref_steps"] = bench.ref_steps
    kw, sched, vae = bench.call_kwargs, bench.pipe.scheduler, bench.pipe.vae
    mres["pipeline"] = {"pipeline": type(bench.pipe).__name__, "scheduler": type(sched).__name__,
                        "scheduler_shift": sched.config.get("flow_shift", sched.config.get("shift")),
                        "vae": type(vae).__name__, "vae_dtype": str(vae.dtype).replace("torch.", ""),
                        "size": {k: kw[k] for k in ("height", "width", "num_frames")},
                        "guidance_scale": kw["guidance_scale"], "preset": PRESETS[name],
                        "reference_steps": bench.ref_steps}
    log(f"   built in {mres['build_s']:.1f} s: {type(bench.pipe).__name__}, {type(sched).__name__} (shift "
        f"{mres['pipeline']['scheduler_shift']}), {type(vae).__name__} {mres['pipeline']['vae_dtype']}, "
        f"{kw['height']}x{kw['width']}, {kw['num_frames']} frames, guidance {kw['guidance_scale']}"
        + (f", {args.text_tokens} of {TEXT_LEN['hunyuan']} prompt tokens live" if family == "hunyuan" else ""))
    for setting in settings:
        mres["settings"][split_setting(setting, args.steps)[0]] = run_setting(bench, setting, args, deadline, log)
        if not args.no_decode and "decode" not in mres and bench.decode_source is not None:
            mres["decode"] = decode_step(bench, deadline, log)
        save()
    mres["summary"] = summarize(mres)
    log_summary(name, mres["summary"], args.steps, log, bench.ref_steps)
    bench.decode_source = None
    del bench
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def decode_step(bench: Bench, deadline: float | None, log) -> dict:
    """Time one VAE decode of the first timed run's latents, if it fits in the budget (prior estimate)."""
    prior = PRIOR_DECODE_S.get(bench.name, 0.0)
    if deadline is not None and time.perf_counter() + prior > deadline:
        log(f"   VAE decode skipped: time budget (~{prior:.0f} s prior)")
        return {"skipped": f"time budget (~{prior:.0f} s prior)"}
    try:
        out = decode_once(bench, bench.decode_source[1], log) | {"latents_of": bench.decode_source[0]}
    except Exception as e:
        out = {"error": f"{type(e).__name__}: {e}"}
        log(f"   VAE decode FAILED: {type(e).__name__}: {e}")
    if bench.device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def log_summary(name: str, rows: list[dict], steps: int, log, ref_steps: int = REF_STEPS) -> None:
    """One line per setting: denoise time, speedups, the estimate at the model's reference step count (50)."""
    x = lambda v: f"{v:.2f}x" if v else "-"  # noqa: E731
    log(f"\n   summary {name} ({steps} steps):")
    for r in rows:
        if r.get("denoise_s") is None:
            why = r.get("skipped") or r.get("error")
            log(f"   {r['setting']:<26} {'skipped' if r.get('skipped') else 'FAILED'}: {why}")
            continue
        e50 = (f"{ref_steps}-step estimate {r['est50_s']:.1f} s ({x(r.get('est50_vs_default'))} vs default, "
               f"{x(r.get('est50_vs_fastest_dense'))} vs fastest dense)" if r.get("est50_s")
               else f"{ref_steps}-step estimate n/a ({r.get('est50_note')})")
        wd = f", {x(r['vs_without_draft'])} vs {r['without_draft']}" if r.get("vs_without_draft") else ""
        log(f"   {r['setting']:<26} {r['denoise_s']:8.3f} s  {x(r.get('vs_default'))} vs default, "
            f"{x(r.get('vs_fastest_dense'))} vs fastest dense ({r.get('fastest_dense') or '-'}){wd}; {e50}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=None,
                   help=f"comma list of {', '.join(FULL_MODELS + TINY_MODELS)} (default: the full-size ones, "
                        "with --tiny the tiny ones)")
    p.add_argument("--tiny", action="store_true",
                   help=f"CPU dry run on tiny configs ({', '.join(TINY_MODELS)}; --models picks some of them)")
    p.add_argument("--settings", default=",".join(DEFAULT_SETTINGS),
                   help="comma list (each optionally @<steps>, its own step count: draft@4) of 'default', 'stack', "
                        "'stack+fp8', 'stack+mild', 'stack+mild+fp8' or '+'-joined parts (see the module docstring); default: "
                        + ", ".join(DEFAULT_SETTINGS))
    p.add_argument("--steps", type=int, default=REF_STEPS, help="denoising steps of the timed run (default 50)")
    p.add_argument("--warmup-steps", type=int, default=2,
                   help="steps of the untimed warm-up call (>= 1; raised per setting until it covers a dense, a "
                        "sparse and a cache-skipped step)")
    p.add_argument("--max-warmup-calls", type=int, default=3,
                   help="with torch.compile, repeat the warm-up call until no new graph compiles, at most this often")
    p.add_argument("--no-decode", action="store_true", help="skip the VAE decode timing")
    p.add_argument("--budget-s", type=float, default=540.0,
                   help="wall-clock budget of the whole run; a setting that would not fit is skipped (<= 0: none)")
    p.add_argument("--text-tokens", type=int, default=120, help="live prompt tokens of HunyuanVideo (of 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.environ.get("OUT") or "outputs/bench",
                   help="output directory for benchmark_pipeline.{log,json,md} (default: $OUT, else outputs/bench)")
    args = p.parse_args(argv)
    if args.models is None:
        models = TINY_MODELS if args.tiny else FULL_MODELS
    else:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        if args.tiny and any(m not in TINY_MODELS for m in models):
            p.error(f"--tiny runs tiny models only: --models takes some of {', '.join(TINY_MODELS)}")
    settings = [ALIASES.get(s.strip(), s.strip()) for s in args.settings.split(",") if s.strip()]
    for m in models:
        if m not in MODELS or m not in PRESETS:
            p.error(f"unknown model {m!r}; expected some of {', '.join(FULL_MODELS + TINY_MODELS)}")
    for s in settings:
        try:
            split_setting(s, args.steps)
        except ValueError as e:
            p.error(str(e))
    if args.steps < 1 or args.warmup_steps < 1 or args.max_warmup_calls < 1:
        p.error("--steps, --warmup-steps and --max-warmup-calls must be >= 1")

    start = time.perf_counter()
    deadline = start + args.budget_s if args.budget_s > 0 else None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_file = open(out_dir / "benchmark_pipeline.log", "w")

    def log(msg: str = "") -> None:
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    import diffusers
    from importlib.metadata import PackageNotFoundError, version

    try:
        fa4 = version("flash-attn-4")
    except PackageNotFoundError:
        fa4 = "not installed"
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "flash_attn_4": fa4, "device": torch.cuda.get_device_name() if device.type == "cuda" else "CPU",
            "dtype": str(dtype).replace("torch.", ""), "steps": args.steps, "warmup_steps": args.warmup_steps,
            "budget_s": args.budget_s, "argv": sys.argv}
    log(f"benchmark_pipeline: {meta['date']} | {meta['device']} | torch {meta['torch']} | diffusers "
        f"{meta['diffusers']} | flash-attn-4 {fa4} | {meta['dtype']} | {args.steps} steps | settings: "
        f"{', '.join(settings)}")
    if args.steps != REF_STEPS:
        log(f"note: {args.steps} steps ({dense_step_count(DEFAULT_DENSE_FRACTION, args.steps)} dense at fraction 0.25);"
            f" 50-step estimates below = 13 x mean dense-step + 37 x mean sparse-step time")
    for m in models:  # models published at another step count: their estimate is at that count
        n = SAMPLING.get(m, {}).get("num_inference_steps", REF_STEPS)
        if n != REF_STEPS:
            d = dense_step_count(DEFAULT_DENSE_FRACTION, n)
            log(f"note: {m}: estimates at its published {n} steps = {d} x mean dense-step + {n - d} x mean "
                "sparse-step time")
    all_results: list[dict] = []

    def save() -> None:  # after every setting: a run killed by a time limit still leaves its results
        (out_dir / "benchmark_pipeline.json").write_text(json.dumps({"meta": meta, "models": all_results},
                                                                    indent=1, default=str))

    for name in models:
        mres: dict[str, Any] = {"model": name, "label": MODELS[name][4], "settings": {}}
        all_results.append(mres)
        run_model(name, settings, args, device, dtype, deadline, log, save, mres)
        save()

    meta["wall_s"] = time.perf_counter() - start
    save()
    table = markdown(all_results, meta)
    (out_dir / "benchmark_pipeline.md").write_text(table + "\n")
    log(f"\nwall clock {meta['wall_s']:.0f} s; log, JSON and table in {out_dir}/benchmark_pipeline.{{log,json,md}}\n")
    log(table)
    log_file.close()


if __name__ == "__main__":
    main()

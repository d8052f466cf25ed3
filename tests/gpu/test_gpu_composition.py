"""The composition cases of tests/test_composition.py on the GPU, with the flash-attn-4 and FlexAttention kernels:
step caches (both install orders) and regional torch.compile (fullgraph, inductor: no graph break, no recompile
across blocks and steps). bf16 tiny pipelines, on a grid whose tile order is not the identity."""

import pytest
import torch
from diffusers import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

from draftattention_diffusers import disable_draft_attention, draft_attention_enabled, enable_draft_attention, get_draft_stats
from draftattention_diffusers.tiny import build_tiny_pipeline, tiny_prompt_kwargs

DEVICE = "cuda"
STEPS = 6
SIZE = dict(height=128, width=512, num_frames=9)  # 8 x 32 tokens per frame: two regions side by side
BACKENDS = ["fa4", "flex"]


def tiny(family: str):
    pipe = build_tiny_pipeline(family).to(DEVICE)
    pipe.transformer.to(torch.bfloat16)
    return pipe


def run(pipe, steps: int = STEPS):
    kw = tiny_prompt_kwargs(pipe, valid_len=11) if "Hunyuan" in type(pipe).__name__ else tiny_prompt_kwargs(pipe)
    kw = {k: v.to(DEVICE) for k, v in kw.items()}
    if "Wan" in type(pipe).__name__:
        kw = {k: v.to(torch.bfloat16) for k, v in kw.items()}
        kw["guidance_scale"] = 5.0
    return pipe(**kw, **SIZE, num_inference_steps=steps, output_type="latent",
                generator=torch.Generator(DEVICE).manual_seed(0)).frames.float()


def caches(pipe):
    blocks = [r"blocks\.\d+"] if "Wan" in type(pipe).__name__ else [r"transformer_blocks\.\d+",
                                                                    r"single_transformer_blocks\.\d+"]
    return {
        "first_block": FirstBlockCacheConfig(threshold=0.3),
        "taylorseer": TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=1,
                                            taylor_factors_dtype=torch.float32, cache_identifiers=blocks),
        "magcache": MagCacheConfig(mag_ratios=[1.0] * STEPS, num_inference_steps=STEPS, threshold=0.5,
                                   max_skip_steps=2),
    }


def rel(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()


@pytest.mark.parametrize("family", ["wan", "hunyuan"])
@pytest.mark.parametrize("cache", ["first_block", "taylorseer", "magcache"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_caches_compose_with_gpu_kernels(family, cache, backend):
    pipe = tiny(family)
    pipe.transformer.enable_cache(caches(pipe)[cache])
    alone = run(pipe)
    pipe.transformer.disable_cache()
    outs = {}
    for order in ("draft_first", "cache_first"):
        for reorder in ("per_forward", "per_call"):
            cfg = dict(sparsity=0.75, dense_steps_fraction=0.25, backend=backend, reorder=reorder)
            if order == "draft_first":
                enable_draft_attention(pipe, **cfg)
                pipe.transformer.enable_cache(caches(pipe)[cache])
            else:
                pipe.transformer.enable_cache(caches(pipe)[cache])
                enable_draft_attention(pipe, **cfg)
            try:
                outs[order, reorder] = run(pipe)
                stats = get_draft_stats(pipe).summary()
            finally:
                pipe.transformer.disable_cache()
                disable_draft_attention(pipe)
            assert stats["sparse_calls"] > 0 and stats["fallbacks"] == {}
    # the cache sees one token order: tokens reordered per forward equal tokens gathered per call (bf16 rounding)
    for order in ("draft_first", "cache_first"):
        assert rel(outs[order, "per_forward"], outs[order, "per_call"]) < 3e-2
    assert torch.isfinite(alone).all()


@pytest.mark.parametrize("family", ["wan", "hunyuan"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_regional_compile_fullgraph_no_recompiles(family, backend):
    if backend == "flex" and family == "hunyuan":
        pytest.xfail("H200, torch 2.11: inductor fails to lower flex_attention inside compiled HunyuanVideo blocks "
                     "(LoweringException: 'function' object has no attribute 'graph', its mask subgraph is a lambda);"
                     " eager flex and compiled fa4 pass (docs/benchmarks.md, 2026-12-01)")
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    pipe = tiny(family)
    with draft_attention_enabled(pipe, sparsity=0.75, dense_steps_fraction=0.5, backend=backend):
        eager = run(pipe, steps=4)
        dynamo.reset()
        counters.clear()
        pipe.transformer.compile_repeated_blocks(fullgraph=True)
        try:
            with dynamo.config.patch(recompile_limit=2):  # one graph for dense, one for sparse: all blocks, steps
                run(pipe, steps=4)
                compiled = run(pipe, steps=4)
            stats = get_draft_stats(pipe).summary()
        finally:
            for m in pipe.transformer.modules():
                m._compiled_call_impl = None
            dynamo.reset()
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert stats["steps"] == {0: "dense", 1: "dense", 2: "sparse", 3: "sparse"} and stats["sparse_calls"] > 0
    assert rel(compiled, eager) < 3e-2

"""Draft attention with cache-dit's DBCache (and its TaylorSeer calibrator), in both install orders, on a grid whose
tile order is not the identity: at sparsity 0 it equals cache-dit alone, our call counts and cache-dit's statistics
agree on which forwards ran in full, a fixed compute mask is honoured, and the undo leaves nothing behind."""

import pytest
import torch
from pipeline_utils import is_wan, max_diff, run, run_tiny_call, uncompile, watch_compilation
from stack_utils import computed_forwards, diff_footprints, footprint

from draftattention_diffusers import (disable_draft_attention, disable_fast_stack, enable_draft_attention,
                                      enable_fast_stack, get_draft_stats)
from draftattention_diffusers.tiny import build_tiny_pipeline

cache_dit = pytest.importorskip("cache_dit")

STEPS = 6
MASK = [1, 1, 0, 1, 0, 1]  # computed steps; 0 = cache-dit reuses its cache (static policy)
SPARSITY_0 = dict(sparsity=0.0, dense_steps_fraction=0.0, backend="reference")


def dbcache(**kw):
    # Fn=1: the first block always runs (the tiny models have 2), the rest is cached on the masked steps
    return cache_dit.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=1,
                                   num_inference_steps=STEPS, **kw)


def masked(**kw):
    return dbcache(steps_computation_mask=list(MASK), steps_computation_policy="static", **kw)


def calibrator(name):
    return cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=1) if name == "taylorseer" else None


def cfg(pipe) -> dict:
    return dict(guidance_scale=5.0) if is_wan(pipe) else {}


@pytest.fixture(scope="module", params=["wan", "hunyuan"])
def pipe(request):
    # HunyuanVideo: cache-dit caches its dual- and single-stream block lists separately; 2 + 2 blocks leave one of
    # each to reuse with Fn=1
    return build_tiny_pipeline(request.param, num_layers=2 if request.param == "wan" else 4)


def with_cache_dit(pipe, cache_cfg, calib, draft: dict | None, order: str):
    """One run with cache-dit and/or draft attention, installed in ``order``; everything removed afterwards.
    Returns (latents, draft statistics, cache-dit's cached steps per branch)."""
    def add_cache():
        cache_dit.enable_cache(pipe, cache_config=cache_cfg, calibrator_config=calib)

    def add_draft():
        if draft is not None:
            enable_draft_attention(pipe, **draft)

    for part in (add_draft, add_cache) if order == "draft_first" else (add_cache, add_draft):
        part()
    try:
        out, _ = run(pipe, steps=STEPS, **cfg(pipe))
        stats = get_draft_stats(pipe).summary() if draft is not None else None
        t = pipe.transformer
        cached = (list(t._cached_steps), list(t._cfg_cached_steps))
    finally:
        cache_dit.disable_cache(pipe)
        if draft is not None:
            disable_draft_attention(pipe)
    return out, stats, cached


@pytest.mark.parametrize("calib", [None, "taylorseer"])
def test_dbcache_composes_in_both_orders(pipe, calib):
    plain, _ = run(pipe, steps=STEPS, **cfg(pipe))
    alone, _, cached = with_cache_dit(pipe, masked(), calibrator(calib), None, "draft_first")
    assert max_diff(alone, plain) > 0  # the cache really reused something
    assert cached[0] == [s for s, m in enumerate(MASK) if not m]  # the fixed mask is honoured
    scale = max(1.0, alone.abs().max().item())
    for order in ("draft_first", "cache_first"):
        out, stats, cached_d = with_cache_dit(pipe, masked(), calibrator(calib), SPARSITY_0, order)
        assert max_diff(out, alone) < 1e-5 * scale, (order, max_diff(out, alone))
        assert cached_d == cached
        assert stats["sparse_calls"] > 0 and stats["fallbacks"] == {}
    # sparse: tokens reordered once per forward (what the cache keeps is in tile order) = gathered per call
    per_forward, _, _ = with_cache_dit(pipe, masked(), calibrator(calib), dict(sparsity=0.75), "draft_first")
    per_call, _, _ = with_cache_dit(pipe, masked(), calibrator(calib), dict(sparsity=0.75, reorder="per_call"),
                                    "draft_first")
    assert max_diff(per_forward, per_call) < 1e-5 * scale


def test_statistics_agree_on_what_ran():
    """Our per-forward call counts say which forwards ran every block (2 self-attention calls) and which only the
    first (1 call, the rest reused by DBCache); cache-dit's cached steps (cond and uncond branches) say the same."""
    pipe = build_tiny_pipeline("wan")
    _, stats, (cached, cfg_cached) = with_cache_dit(pipe, masked(), None, dict(sparsity=0.75, dense_steps_fraction=0.25),
                                                    "draft_first")
    assert stats["forwards"] == 2 * STEPS  # CFG: two transformer calls per step, none skipped entirely
    assert cached == cfg_cached == [2, 4]
    assert computed_forwards(stats, forwards_blocks=2, first_blocks=1) == stats["forwards"] - len(cached) - len(cfg_cached)
    assert stats["steps"] == {i: "dense" if i < 2 else "sparse" for i in range(STEPS)}


def test_one_call_stack_with_dbcache_and_exact_undo():
    """enable_fast_stack with a DBCacheConfig and a compute mask (the benchmark's path) = cache-dit installed by
    hand after draft attention; disable restores the pipeline class's __call__ and every module."""
    pipe = build_tiny_pipeline("wan")
    plain, _ = run(pipe, steps=STEPS, guidance_scale=5.0)
    before = footprint(pipe)
    # by hand on an identical pipeline (cache-dit's own disable leaves attributes behind; the stack's does not)
    by_hand, _, cached = with_cache_dit(build_tiny_pipeline("wan"), masked(), None, dict(sparsity=0.75),
                                        "draft_first")
    stack = enable_fast_stack(pipe, dbcache(), compute_mask=MASK, num_inference_steps=STEPS, compile=False,
                              sparsity=0.75)
    assert type(pipe).__dict__["__call__"] is not before["pipeline_call"]  # cache-dit wraps the class's __call__
    try:
        out, _ = run(pipe, steps=STEPS, guidance_scale=5.0)
        assert (pipe.transformer._cached_steps, pipe.transformer._cfg_cached_steps) == cached
        with pytest.raises(ValueError, match="6 entries for 4 steps"):  # a fixed mask holds one step count
            stack.set_num_inference_steps(4)
        stack.compute_mask = lambda n: [1] * (n - 1) + [0]  # a function of the step count follows it
        stack.set_num_inference_steps(4)
        context_cfg = pipe.transformer.blocks._context_kwargs["cache_config"]
        assert (context_cfg.num_inference_steps, context_cfg.steps_computation_mask) == (4, [1, 1, 1, 0])
    finally:
        disable_fast_stack(pipe)
    assert torch.equal(out, by_hand)
    assert diff_footprints(before, footprint(pipe)) == []
    assert torch.equal(run(pipe, steps=STEPS, guidance_scale=5.0)[0], plain)


def test_dbcache_on_two_experts():
    pipe = build_tiny_pipeline("wan22")
    alone, _, _ = with_cache_dit(build_tiny_pipeline("wan22"), dbcache(), None, None, "draft_first")
    before = footprint(pipe)
    stack = enable_fast_stack(pipe, dbcache(), compile=False, **SPARSITY_0)
    try:
        out, _ = run(pipe, steps=STEPS, guidance_scale=5.0)
        layers = get_draft_stats(pipe).summary()["layer_sparsity"]
    finally:
        disable_fast_stack(pipe)
    assert stack.transformers == ["transformer", "transformer_2"]
    assert any(n.startswith("transformer_2.") for n in layers)
    assert max_diff(out, alone) < 1e-5 * max(1.0, alone.abs().max().item())
    assert diff_footprints(before, footprint(pipe)) == []
    with pytest.raises(ValueError, match="cache-dit counts steps per expert"):
        enable_fast_stack(pipe, dbcache(), compute_mask=MASK, num_inference_steps=STEPS, compile=False)


def test_dbcache_compiles_regionally_with_draft_attention(monkeypatch):
    """DBCache + draft + compile_repeated_blocks (aot_eager): after the documented two warm-up calls (on this model
    the first already compiled every graph: cache-dit decides outside the blocks) a call compiles nothing and runs
    attention only inside graphs; equal to the same stack uncompiled."""
    import torch._dynamo as dynamo

    pipe = build_tiny_pipeline("wan")
    kw = dict(compute_mask=MASK, num_inference_steps=STEPS, sparsity=0.5)
    enable_fast_stack(pipe, dbcache(), compile=False, **kw)
    want, _ = run(pipe, steps=STEPS, guidance_scale=5.0)
    disable_fast_stack(pipe)
    eager_calls, graphs, backend = watch_compilation(monkeypatch)  # uncompiled attention calls, graphs
    dynamo.reset()
    enable_fast_stack(pipe, dbcache(), compile_kwargs=dict(backend=backend), **kw)
    try:
        with dynamo.config.patch(fail_on_recompile_limit_hit=True):
            for _ in range(2):
                run(pipe, steps=STEPS, guidance_scale=5.0)
            warm = len(graphs)
            eager_calls.clear()
            got, _ = run(pipe, steps=STEPS, guidance_scale=5.0)
    finally:
        disable_fast_stack(pipe)
        uncompile(pipe.transformer)
    assert len(graphs) == warm and warm > 0
    assert eager_calls == []
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_undo_keeps_the_block_lists_order_for_a_later_first_block_cache():
    """cache-dit re-adds HunyuanVideo's block lists per forward (unittest.mock.patch.object), which moves them last
    among the transformer's children; the undo puts them back in order, so that diffusers' First Block Cache, which
    takes the first block list it meets as its head, works on the same pipeline afterwards (it failed before:
    'NoneType' object is not subscriptable in FBCBlockHook)."""
    pipe = build_tiny_pipeline("hunyuan", num_layers=4)
    before = footprint(pipe)
    enable_fast_stack(pipe, dbcache(), compute_mask=MASK, num_inference_steps=STEPS, compile=False, sparsity=0.75)
    try:
        run(pipe, steps=STEPS)
        assert list(pipe.transformer._modules)[-1] in ("transformer_blocks", "single_transformer_blocks")
    finally:
        disable_fast_stack(pipe)
    assert diff_footprints(before, footprint(pipe)) == []
    enable_fast_stack(pipe, "first_block", compute_mask=[True, True, False, True], compile=False, sparsity=0.75)
    try:
        out, _ = run(pipe, steps=4)
    finally:
        disable_fast_stack(pipe)
    assert torch.isfinite(out).all()
    assert diff_footprints(before, footprint(pipe)) == []


def test_one_call_stack_undoes_cache_dits_patch_functors():
    """cache-dit patches Wan VACE's transformer and block forwards (a patch functor: patched forwards, `_is_patched`,
    `_i`, `_vace_layers`) and leaves them after its own disable; the stack's undo gives every module back as it was
    (the same stack at sparsity 0 equals DBCache alone through VACE's tile order)."""
    pipe = build_tiny_pipeline("wan-vace")
    go = lambda: run_tiny_call(pipe, steps=STEPS)  # noqa: E731
    before, plain = footprint(pipe), go()
    enable_fast_stack(pipe, dbcache(), compute_mask=MASK, num_inference_steps=STEPS, compile=False, draft=False)
    alone = go()
    disable_fast_stack(pipe)
    assert diff_footprints(before, footprint(pipe)) == []
    enable_fast_stack(pipe, dbcache(), compute_mask=MASK, num_inference_steps=STEPS, compile=False, **SPARSITY_0)
    out = go()
    disable_fast_stack(pipe)
    assert diff_footprints(before, footprint(pipe)) == []
    assert max_diff(alone, plain) > 0 and max_diff(out, alone) < 1e-5 * max(1.0, alone.abs().max().item())
    assert torch.equal(go(), plain)

"""enable_fast_stack / disable_fast_stack: draft attention + a step cache + regional compile in one call, on the tiny
pipelines at a grid whose tile order is not the identity (two regions per frame row). Each check compares with the
same stack without draft attention, or with the parts installed by hand, and counts what is left after the undo."""

import pytest
import torch
from diffusers import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig
from pipeline_utils import is_wan, max_diff, run, run_tiny_call, uncompile, watch_compilation
from stack_utils import diff_footprints, footprint

from draftattention_diffusers import (DraftAttentionConfig, disable_draft_attention, disable_fast_stack,
                                      enable_draft_attention, enable_fast_stack, get_draft_stats, get_fast_stack)
from draftattention_diffusers.tiny import build_tiny_pipeline

STEPS = 6
SPARSITY_0 = dict(sparsity=0.0, dense_steps_fraction=0.0, backend="reference")


def cfg(pipe, **kw) -> dict:
    return dict(guidance_scale=5.0, **kw) if is_wan(pipe) else kw


@pytest.fixture(scope="module", params=["wan", "hunyuan"])
def pipe(request):
    return build_tiny_pipeline(request.param)


# ------------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("kwargs,match", [
    (dict(cache=MagCacheConfig(mag_ratios=[1.0] * 4, num_inference_steps=4)), "torch.compiler.disable"),
    (dict(cache="first_block", compute_mask=[1, 0]), "compute_mask has 2 entries"),
    (dict(cache=None, compute_mask=[1, 1], compile=False), "needs a cache"),
    (dict(cache="taylorseer"), "needs num_inference_steps"),
    (dict(cache=TaylorSeerCacheConfig(), compute_mask=[1, 1], compile=False), "not TaylorSeerCacheConfig"),
    (dict(cache="fastest"), "expected None, one of"),
    (dict(cache=object()), "expected None, one of"),
    (dict(fp8="int8"), "fp8='int8'"),
    (dict(draft=False, sparsity=0.5), "draft=False with draft-attention fields"),
    (dict(sparsity=1.5), "sparsity=1.5"),
    (dict(compile="yes"), "compile='yes'"),
])
def test_bad_combinations_are_refused_before_anything_changes(kwargs, match):
    pipe = build_tiny_pipeline("wan")
    kwargs = {"num_inference_steps": 4, **kwargs} if kwargs.get("cache") != "taylorseer" else kwargs
    before = footprint(pipe)
    with pytest.raises(ValueError, match=match):
        enable_fast_stack(pipe, **kwargs)
    assert diff_footprints(before, footprint(pipe)) == []
    assert get_fast_stack(pipe) is None


def test_magcache_on_two_experts_is_refused():
    pipe = build_tiny_pipeline("wan22")
    with pytest.raises(ValueError, match="transformer_2 starts counting at 0"):
        enable_fast_stack(pipe, MagCacheConfig(mag_ratios=[1.0] * 4, num_inference_steps=4), compile=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(cache="first_block", compile=False), "has no diffusers cache support"),
    (dict(cache="taylorseer", num_inference_steps=4, compile=False), "has no diffusers cache support"),
    (dict(cache=None, compile=True), "declares no repeated blocks"),
])
def test_what_a_transformer_lacks_is_refused_before_anything_changes(kwargs, match):
    """Cosmos in diffusers 0.42.1 has no CacheMixin and no _repeated_blocks: a ValueError naming what is missing,
    not an AttributeError half way through."""
    pipe = build_tiny_pipeline("cosmos")
    before = footprint(pipe)
    with pytest.raises(ValueError, match=match):
        enable_fast_stack(pipe, **kwargs)
    assert diff_footprints(before, footprint(pipe)) == []
    assert get_fast_stack(pipe) is None


@pytest.mark.parametrize("family, cache, match", [
    ("skyreels-v2", "first_block", "no block metadata for SkyReelsV2TransformerBlock"),
    ("kandinsky6", "magcache", "no block metadata for Kandinsky6FusedTransformerDecoderBlock"),
    ("framepack", "first_block", "HunyuanVideoFramepackPipeline: the pipeline does not wrap its transformer calls"),
    ("kandinsky5", "taylorseer", "Kandinsky5T2VPipeline: the pipeline does not wrap its transformer calls"),
])
def test_a_diffusers_cache_that_cannot_run_there_is_refused_before_anything_changes(family, cache, match):
    """diffusers 0.42.1 itself fails there on the first call or at enable ("Model class ... not registered", "No
    cache context is set"), with or without draft attention; the stack refuses first, naming why."""
    pipe = build_tiny_pipeline(family)
    if cache == "magcache":
        cache = MagCacheConfig(mag_ratios=[1.0] * 4, num_inference_steps=4)
    before = footprint(pipe)
    with pytest.raises(ValueError, match=match):
        enable_fast_stack(pipe, cache, compile=False, num_inference_steps=4)
    assert diff_footprints(before, footprint(pipe)) == []
    assert get_fast_stack(pipe) is None


def test_first_block_cache_needs_blocks_that_take_hidden_states_by_that_name():
    """Kandinsky 5's blocks take their input as ``visual_embed`` (diffusers registers that name), but First Block
    Cache's hooks ask for ``hidden_states`` (its pipelines set no cache context either, refused first above)."""
    from draftattention_diffusers.integration.stack import _diffusers_cache_problem

    wan, k5 = build_tiny_pipeline("wan"), build_tiny_pipeline("kandinsky5")
    why = _diffusers_cache_problem(wan, k5.transformer, FirstBlockCacheConfig())
    assert "takes it as 'visual_embed'" in why
    assert _diffusers_cache_problem(wan, k5.transformer, MagCacheConfig(mag_ratios=[1.0] * 4)) is None
    assert _diffusers_cache_problem(wan, wan.transformer, FirstBlockCacheConfig()) is None


def test_what_is_already_installed_is_refused():
    pipe = build_tiny_pipeline("wan")
    with pytest.raises(ValueError, match="takes a pipeline"):
        enable_fast_stack(pipe.transformer)
    enable_draft_attention(pipe)
    with pytest.raises(ValueError, match="draft attention is already enabled"):
        enable_fast_stack(pipe, compile=False)
    disable_draft_attention(pipe)
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.1))
    with pytest.raises(ValueError, match="already has a step cache"):
        enable_fast_stack(pipe, compile=False)
    pipe.transformer.disable_cache()
    enable_fast_stack(pipe, compile=False)
    with pytest.raises(RuntimeError, match="already enabled"):
        enable_fast_stack(pipe, compile=False)
    disable_fast_stack(pipe)
    with pytest.raises(RuntimeError, match="no fast stack"):
        disable_fast_stack(pipe)


# --------------------------------------------------------------------------- composition, exact undo
@pytest.mark.parametrize("cache", ["first_block", "taylorseer", "magcache"])
def test_stack_equals_the_same_stack_without_draft_at_sparsity_zero(pipe, cache):
    """The one call with every tile kept = the same call with draft=False (the cache alone) within rounding; dense
    warm-up steps equal it too; then disable leaves nothing and the pipeline computes what it did before."""
    caches = {"first_block": lambda: FirstBlockCacheConfig(threshold=0.3 if is_wan(pipe) else 1.0),
              "taylorseer": lambda: "taylorseer",
              "magcache": lambda: MagCacheConfig(mag_ratios=[1.0] * STEPS, num_inference_steps=STEPS, threshold=0.5,
                                                 max_skip_steps=2)}
    plain, _ = run(pipe, steps=STEPS, **cfg(pipe))
    before = footprint(pipe)
    stack = enable_fast_stack(pipe, caches[cache](), compile=False, draft=False, num_inference_steps=STEPS)
    assert stack.draft is None and stack.cache is not None
    alone, alone_steps = run(pipe, steps=STEPS, **cfg(pipe))
    disable_fast_stack(pipe)
    assert max_diff(alone, plain) > 0  # the cache really skips something
    scale = max(1.0, alone.abs().max().item())

    enable_fast_stack(pipe, caches[cache](), compile=False, num_inference_steps=STEPS, **SPARSITY_0)
    out, _ = run(pipe, steps=STEPS, **cfg(pipe))
    stats = get_draft_stats(pipe).summary()
    disable_fast_stack(pipe)
    assert max_diff(out, alone) < 1e-5 * scale
    assert stats["sparse_calls"] > 0 and stats["fallbacks"] == {}

    enable_fast_stack(pipe, caches[cache](), compile=False, num_inference_steps=STEPS, sparsity=0.9,
                      dense_steps_fraction=0.5)
    _, steps = run(pipe, steps=STEPS, **cfg(pipe))
    stats = get_draft_stats(pipe).summary()
    disable_fast_stack(pipe)
    for a, b in zip(steps[:STEPS // 2], alone_steps[:STEPS // 2]):
        assert max_diff(a, b) < 1e-5 * scale
    assert stats["steps"] == {i: ("dense" if i < STEPS // 2 else "sparse") for i in range(STEPS)}

    assert diff_footprints(before, footprint(pipe)) == []
    again, _ = run(pipe, steps=STEPS, **cfg(pipe))
    assert torch.equal(again, plain)


@pytest.mark.parametrize("family, cache", [
    *[(f, "first_block") for f in ("wan-vace", "cogvideox", "ltx", "mochi", "motif-video")],
    *[(f, "taylorseer") for f in ("skyreels-v2", "ltx2", "ltx2.3", "hunyuan15", "helios", "kandinsky6")],
])
def test_a_cache_stack_on_the_other_families_it_runs_on(family, cache):
    """Where diffusers' First Block Cache (on a fixed schedule: steps 0, 1, 3 computed) or TaylorSeer runs (the
    families above besides Wan and HunyuanVideo; README's table), the one call with every tile kept equals the same
    call without draft attention, through each family's tile order; the undo leaves the pipeline as it was."""
    pipe = build_tiny_pipeline(family)
    go = lambda: run_tiny_call(pipe, steps=4)  # noqa: E731
    kw = dict(compute_mask=[True, True, False, True]) if cache == "first_block" else dict(num_inference_steps=4)
    before, plain = footprint(pipe), go()
    enable_fast_stack(pipe, cache, compile=False, draft=False, **kw)
    alone = go()
    disable_fast_stack(pipe)
    enable_fast_stack(pipe, cache, compile=False, **kw, **SPARSITY_0)
    out = go()
    stats = get_draft_stats(pipe).summary()
    disable_fast_stack(pipe)
    assert stats["sparse_calls"] > 0 and stats["fallbacks"] == {}
    assert max_diff(alone, plain) > 0  # the cache really skipped or predicted something
    assert max_diff(out, alone) < 1e-5 * max(1.0, alone.abs().max().item())
    assert diff_footprints(before, footprint(pipe)) == []


def test_stack_equals_the_parts_installed_by_hand(pipe):
    """The one call = README's recipe by hand (draft attention first, then the cache), sparse."""
    cache = lambda: FirstBlockCacheConfig(threshold=0.3 if is_wan(pipe) else 1.0)  # noqa: E731
    enable_draft_attention(pipe, sparsity=0.75)
    pipe.transformer.enable_cache(cache())
    try:
        by_hand, _ = run(pipe, steps=STEPS, **cfg(pipe))
    finally:
        pipe.transformer.disable_cache()
        disable_draft_attention(pipe)
    enable_fast_stack(pipe, cache(), compile=False, sparsity=0.75)
    try:
        one_call, _ = run(pipe, steps=STEPS, **cfg(pipe))
    finally:
        disable_fast_stack(pipe)
    assert torch.equal(one_call, by_hand)


def test_taylorseer_shorthand_follows_the_step_count():
    pipe = build_tiny_pipeline("wan")
    stack = enable_fast_stack(pipe, "taylorseer", compile=False, num_inference_steps=8)
    try:
        hooks = [h for m in pipe.transformer.modules() if m.__dict__.get("_diffusers_hook") is not None
                 for h in [m._diffusers_hook.get_hook("taylorseer_cache")] if h is not None]
        assert hooks and {h.disable_cache_before_step for h in hooks} == {2}  # ceil(0.25 x 8): draft's first sparse
        stack.set_num_inference_steps(50)
        assert {h.disable_cache_before_step for h in hooks} == {13}
    finally:
        disable_fast_stack(pipe)


def test_first_block_cache_compute_mask_is_honoured():
    pipe = build_tiny_pipeline("wan")
    mask = [True, True, False, True, False, True]
    seen = []
    stack = enable_fast_stack(pipe, "first_block", compile=False, compute_mask=mask)
    head = pipe.transformer.blocks[0]._diffusers_hook.get_hook("fbc_leader_block_hook")
    try:
        run(pipe, steps=STEPS, callback_on_step_end=lambda p, i, t, kw: seen.append(
            {c: bool(s.should_compute) for c, s in head.state_manager._state_cache.items()}) or kw, **cfg(pipe))
    finally:
        disable_fast_stack(pipe)
    assert seen == [{"cond": m, "uncond": m} for m in mask]
    assert "with a fixed compute mask" in stack.describe()[1]


# --------------------------------------------------------------------------------------------- compile
@pytest.mark.slow  # ~10 s each; the fast suite compiles the stack in test_cache_dit.py, this mechanism in test_composition.py
@pytest.mark.parametrize("warmup_sparsity", [None, 0.25])
def test_compiled_first_block_cache_stack_needs_two_warmups_and_restores(monkeypatch, warmup_sparsity):
    """cache='first_block' + compile (regional, aot_eager here) + draft: the recompile limit is raised while enabled,
    two warm-up calls compile every graph (a third compiles none and runs every video self-attention call inside a
    graph), output = the same stack uncompiled; disable restores the limit and leaves nothing compiled. Also with
    the opt-in milder warm-up (the stack measured 5.72x at Wan 14B): its warm-up steps run sparse inside the graphs
    and the statistics say so."""
    import torch._dynamo as dynamo

    pipe = build_tiny_pipeline("wan", num_layers=3)
    mask = [True, True, True, False, True, False]
    kw = dict(compute_mask=mask, sparsity=0.5, warmup_sparsity=warmup_sparsity)
    enable_fast_stack(pipe, "first_block", compile=False, **kw)
    want, _ = run(pipe, steps=STEPS, **cfg(pipe))
    disable_fast_stack(pipe)

    eager_calls, graphs, backend = watch_compilation(monkeypatch)  # uncompiled attention calls, graphs
    before = footprint(pipe)
    limit = dynamo.config.recompile_limit
    dynamo.reset()
    stack = enable_fast_stack(pipe, "first_block", compile_kwargs=dict(backend=backend), **kw)
    try:
        assert dynamo.config.recompile_limit == max(limit, 16)
        assert stack._compiled_modules and all(type(m).__name__ == "WanTransformerBlock"
                                               for m in stack._compiled_modules)
        with dynamo.config.patch(fail_on_recompile_limit_hit=True):
            for _ in range(2):
                run(pipe, steps=STEPS, **cfg(pipe))
            warm = len(graphs)
            eager_calls.clear()
            got, _ = run(pipe, steps=STEPS, **cfg(pipe))
            steps = get_draft_stats(pipe).summary()["steps"]
    finally:
        disable_fast_stack(pipe)
    warm_mode = "dense" if warmup_sparsity is None else "warmup"  # ceil(0.25 x 6) = 2 warm-up steps
    assert steps == {0: warm_mode, 1: warm_mode, 2: "sparse", 3: "sparse", 4: "sparse", 5: "sparse"}
    assert len(graphs) == warm and warm > 0, "graphs compiled after the two warm-up calls"
    assert eager_calls == [], "video self-attention ran uncompiled"
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert dynamo.config.recompile_limit == limit
    assert diff_footprints(before, footprint(pipe)) == []
    uncompile(pipe.transformer)


# ---------------------------------------------------------------------- Wan2.2: two experts, few steps
def test_two_experts_get_every_part():
    pipe = build_tiny_pipeline("wan22")
    plain, _ = run(pipe, steps=4, guidance_scale=1.0)
    before = footprint(pipe)
    stack = enable_fast_stack(pipe, "first_block", compile=False, draft=False)
    assert stack.transformers == ["transformer", "transformer_2"]
    assert pipe.transformer.is_cache_enabled and pipe.transformer_2.is_cache_enabled
    alone, _ = run(pipe, steps=4, guidance_scale=1.0)
    disable_fast_stack(pipe)
    enable_fast_stack(pipe, "first_block", compile=False, **SPARSITY_0)
    out, _ = run(pipe, steps=4, guidance_scale=1.0)
    layers = get_draft_stats(pipe).summary()["layer_sparsity"]
    disable_fast_stack(pipe)
    assert max_diff(out, alone) < 1e-5 * max(1.0, alone.abs().max().item())
    assert any(n.startswith("transformer.") for n in layers) and any(n.startswith("transformer_2.") for n in layers)
    assert diff_footprints(before, footprint(pipe)) == []
    assert torch.equal(run(pipe, steps=4, guidance_scale=1.0)[0], plain)


@pytest.mark.parametrize("steps,dense", [(4, 1), (6, 2), (8, 2)])
def test_few_step_distilled_schedules_on_two_experts(steps, dense):
    """Wan2.2-style two experts switching at boundary_ratio, no CFG (guidance 1: one call per step): the warm-up is
    ceil(0.25 n) dense steps of the whole schedule (the step comes from the pipeline's scheduler, shared by both
    experts), so at 4-8 steps it falls entirely on the first (high-noise) expert; the rest is sparse on both."""
    pipe = build_tiny_pipeline("wan22")
    timesteps = []
    with_expert = []
    enable_fast_stack(pipe, compile=False, sparsity=0.9)
    try:
        def on_step(p, i, t, kw):
            timesteps.append(float(t))
            return kw

        run(pipe, steps=steps, guidance_scale=1.0, callback_on_step_end=on_step)
        s = get_draft_stats(pipe).summary()
    finally:
        disable_fast_stack(pipe)
    boundary = pipe.config.boundary_ratio * pipe.scheduler.config.num_train_timesteps
    with_expert = ["transformer" if t >= boundary else "transformer_2" for t in timesteps]
    assert s["steps"] == {i: "dense" if i < dense else "sparse" for i in range(steps)}
    assert s["forwards"] == steps  # no CFG: one transformer call per step
    assert set(with_expert[:dense]) == {"transformer"} and "transformer_2" in with_expert[dense:]
    sparse_layers = s["layer_sparsity"]
    assert any(n.startswith("transformer_2.") for n in sparse_layers)
    assert all(v > 0.5 for v in sparse_layers.values())  # (4 tiles on this grid: each row keeps its best tile)


def test_describe_lists_every_part_in_order():
    pipe = build_tiny_pipeline("wan")
    stack = enable_fast_stack(pipe, "first_block", compile=True, compile_kwargs=dict(backend="eager"),
                              draft=DraftAttentionConfig(sparsity=0.8))
    try:
        lines = stack.describe()
    finally:
        disable_fast_stack(pipe)
    assert lines[0].startswith("draft attention (sparsity 0.8")
    assert lines[1].startswith("diffusers FirstBlockCacheConfig(")
    assert lines[2].startswith("compile_repeated_blocks(backend='eager')")

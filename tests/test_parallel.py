"""Draft attention under diffusers' Ulysses context parallelism, on CPU: two ranks with the gloo backend.

Every case runs once in two spawned ranks and once in this process; rank 0's output must equal the single-process
output, and each rank's tiles must equal the single-process tiles of its heads. The ranks run all cases in one
spawn (starting a rank costs ~10 s of imports).
"""

from __future__ import annotations

import os
import socket
import traceback

import pytest
import torch
import torch.multiprocessing as mp

from draftattention_diffusers import (DraftAttnProcessor, disable_draft_attention, enable_draft_attention,
                                      get_draft_processor, get_draft_stats)
from draftattention_diffusers import hunyuan_video_cp_plan
from draftattention_diffusers.core import TileMask
from draftattention_diffusers.integration import parallel
from draftattention_diffusers.tiny import build_tiny_pipeline, tiny_prompt_kwargs

WORLD = 2
# 144 x 288 pixels, 9 frames -> 3 x 9 x 18 tokens (486): full 8x16 regions and edge tiles, divisible by 2.
SIZE = dict(height=144, width=288, num_frames=9)
ODD = dict(height=144, width=272, num_frames=9)  # 3 x 9 x 17 = 459 tokens: not divisible by 2
DRAFT = dict(sparsity=0.5, dense_steps_fraction=0.5, backend="reference")  # 4 steps: 0-1 dense, 2-3 sparse

# name: family, heads, size, install order, observe (capture tiles), extra ContextParallelConfig fields, prompt
CASES = {
    "wan, draft then parallelism": ("wan", 4, SIZE, "draft_first", False, {}, {}),
    "wan, parallelism then draft, observed": ("wan", 4, SIZE, "cp_first", True, {}, {}),
    "wan2.2, parallelism then draft, observed": ("wan22", 4, SIZE, "cp_first", True, {}, {}),
    "hunyuan padded prompt": ("hunyuan", 4, SIZE, "draft_first", False, {}, dict(valid_len=5)),
    "hunyuan padded prompt, observed": ("hunyuan", 4, SIZE, "cp_first", True, {}, dict(valid_len=11)),
    # transformer.set_attn_processor(DraftAttnProcessor(...)) after enable_parallelism: found at the first call
    "hunyuan, parallelism then set_attn_processor": ("hunyuan", 4, SIZE, "cp_then_set", False, {},
                                                     dict(valid_len=7)),
    # diffusers' uneven mode: 3 heads over 2 ranks (2 + 1). An uneven *sequence* needs NCCL: diffusers gathers
    # unequal shares with an all_gather that gloo refuses (tests/gpu/test_parallel_gpu.py covers it).
    "wan, 3 heads, ulysses_anything": ("wan", 3, SIZE, "draft_first", True, dict(ulysses_anything=True), {}),
}
# Settings that must fail with a clear error on every rank: name -> (family, heads, size, order, cp fields, plan)
ERRORS = {
    "ring, parallelism first": ("wan", 4, SIZE, "cp_first", dict(ring_degree=2, ulysses_degree=1), None),
    "ring, draft first": ("wan", 4, SIZE, "draft_first", dict(ring_degree=2, ulysses_degree=1), None),
    "3 heads, even split": ("wan", 3, SIZE, "cp_first", {}, None),
    "459 tokens, even split": ("wan", 4, ODD, "draft_first", {}, None),
    "hunyuan plan that does not split text": ("hunyuan", 4, SIZE, "draft_first", {}, "video_only"),
}


def _pipe_kwargs(pipe, size, prompt, steps=4):
    return dict(tiny_prompt_kwargs(pipe, **prompt), **size, num_inference_steps=steps, output_type="latent",
                generator=torch.Generator().manual_seed(0))


def _enable_parallelism(pipe, cp_fields, plan="default"):
    from diffusers import ContextParallelConfig

    fields = dict(dict(ulysses_degree=WORLD), **cp_fields)
    for t in (pipe.transformer, getattr(pipe, "transformer_2", None)):
        if t is None:
            continue
        cp_plan = None
        if type(t).__name__.startswith("HunyuanVideo"):
            cp_plan = hunyuan_video_cp_plan()
            if plan == "video_only":
                del cp_plan["context_embedder"]
        t.enable_parallelism(config=ContextParallelConfig(**fields), cp_plan=cp_plan)


def run_case(name: str, parallel_run: bool) -> dict:
    """Run ``CASES[name]``; returns the output latents, the statistics and (observed cases) the tiles per call."""
    family, heads, size, order, observe, cp_fields, prompt = CASES[name]
    pipe = build_tiny_pipeline(family, heads=heads)
    if parallel_run and order in ("cp_first", "cp_then_set"):
        _enable_parallelism(pipe, cp_fields)
    if order == "cp_then_set":
        pipe.transformer.set_attn_processor(DraftAttnProcessor(**DRAFT))
    else:
        enable_draft_attention(pipe, **DRAFT)
    if parallel_run and order == "draft_first":
        _enable_parallelism(pipe, cp_fields)
    tiles = []
    if observe:
        get_draft_processor(pipe).add_observer(
            lambda e: tiles.append((e.step, e.layer, e.dense, tuple(e.q.shape),
                                    None if e.tiles is None else e.tiles.kept.clone())))
    with torch.inference_mode():
        out = pipe(**_pipe_kwargs(pipe, size, prompt)).frames
    result = dict(out=out, stats=get_draft_stats(pipe).summary(), tiles=tiles)
    state = get_draft_processor(pipe)._cp
    if parallel_run and observe:  # the statistics' gather of per-head sparsity, on values that differ per head
        rank, local = torch.distributed.get_rank(), state.local_heads
        marked = TileMask(None, None, torch.tensor([[10.0 * rank + h for h in range(local)]]))
        result["gathered_sparsity"] = state.global_tiles(marked).video_sparsity.tolist()
    return result


def run_error(name: str) -> str:
    family, heads, size, order, cp_fields, plan = ERRORS[name]
    pipe = build_tiny_pipeline(family, heads=heads)
    try:
        if order == "cp_first":
            _enable_parallelism(pipe, cp_fields, plan)
        enable_draft_attention(pipe, **DRAFT)
        if order == "draft_first":
            _enable_parallelism(pipe, cp_fields, plan)
        with torch.inference_mode():
            pipe(**_pipe_kwargs(pipe, size, {}, steps=1))
    except ValueError as e:
        return f"ValueError: {e}"
    except Exception as e:  # noqa: BLE001 - reported to the test, which expects a ValueError
        return f"{type(e).__name__}: {e}"
    return "no error"


def run_plain_hunyuan_with_plan(parallel_run: bool) -> torch.Tensor:
    """diffusers' own HunyuanVideo processor (no draft attention) with our plan and a padded prompt."""
    pipe = build_tiny_pipeline("hunyuan", heads=4)
    if parallel_run:
        _enable_parallelism(pipe, {})
    with torch.inference_mode():
        return pipe(**_pipe_kwargs(pipe, SIZE, dict(valid_len=5), steps=1)).frames


def run_disabled_after_parallelism(parallel_run: bool) -> torch.Tensor:
    """Draft attention enabled, then parallelism, then draft attention disabled (no call in between): the restored
    processors must run diffusers' context-parallel attention."""
    pipe = build_tiny_pipeline("wan", heads=4)
    enable_draft_attention(pipe, **DRAFT)
    if parallel_run:
        _enable_parallelism(pipe, {})
    disable_draft_attention(pipe)
    with torch.inference_mode():
        return pipe(**_pipe_kwargs(pipe, SIZE, {}, steps=2)).frames


def _all_cases() -> dict:
    """What every rank runs (in one spawn: starting a rank costs ~10 s of imports), test_parallel_cache's cases
    included."""
    import test_parallel_cache

    results = {"cases": {name: run_case(name, parallel_run=True) for name in CASES}}
    results["errors"] = {name: run_error(name) for name in ERRORS}
    results["plain_hunyuan"] = run_plain_hunyuan_with_plan(parallel_run=True)
    results["disabled"] = run_disabled_after_parallelism(parallel_run=True)
    results["cache"] = test_parallel_cache.all_cases()
    return results


def _rank_main(rank: int, port: int, out_dir: str, job) -> None:
    import torch.distributed as dist

    # enable_parallelism picks the device rank % accelerator count, which is 0 on a CPU-only torch.
    torch.accelerator.device_count = lambda: 1
    # the ranks share the machine's cores: torch's default thread count in each one oversubscribes them (on 2 cores
    # the ranks run ~1.5x slower)
    torch.set_num_threads(max(1, torch.get_num_threads() // WORLD))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        results = job()
    except Exception:  # noqa: BLE001 - the parent reports it
        results = {"crash": traceback.format_exc()}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_in_ranks(job, out_dir: str) -> list[dict]:
    """Run ``job()`` (a module-level function) in ``WORLD`` gloo ranks; returns each rank's result."""
    mp.spawn(_rank_main, args=(_free_port(), out_dir, job), nprocs=WORLD, join=True)
    results = [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)]
    for r, res in enumerate(results):
        assert "crash" not in res, f"rank {r} crashed:\n{res['crash']}"
    return results


_RANK_RESULTS: list = []


def rank_results(tmp_path_factory) -> list[dict]:
    """Each rank's ``_all_cases()``, run once per session (test_parallel_cache reads its part of the same spawn)."""
    if not _RANK_RESULTS:
        _RANK_RESULTS.extend(run_in_ranks(_all_cases, str(tmp_path_factory.mktemp("ranks"))))
    return _RANK_RESULTS


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return rank_results(tmp_path_factory)


@pytest.fixture(scope="module")
def single():
    return {name: run_case(name, parallel_run=False) for name in CASES}


@pytest.mark.parametrize("name", list(CASES))
def test_rank_output_equals_single_process(ranks, single, name):
    for r in range(WORLD):  # every rank ends with the gathered output
        torch.testing.assert_close(ranks[r]["cases"][name]["out"], single[name]["out"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["wan, draft then parallelism", "hunyuan padded prompt"])
def test_the_compared_outputs_are_not_dense(single, name):
    """The outputs compared above carry sparse steps: they differ from the all-dense default."""
    family, heads, size, _, _, _, prompt = CASES[name]
    pipe = build_tiny_pipeline(family, heads=heads)
    with torch.inference_mode():
        dense = pipe(**_pipe_kwargs(pipe, size, prompt)).frames
    assert not torch.allclose(single[name]["out"], dense, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", [n for n in CASES if CASES[n][4]])
def test_each_rank_selects_the_single_process_tiles_of_its_heads(ranks, single, name):
    heads = CASES[name][1]
    ref = single[name]["tiles"]
    share = -(-heads // WORLD)
    for r in range(WORLD):
        got = ranks[r]["cases"][name]["tiles"]
        assert [g[:3] for g in got] == [s[:3] for s in ref]  # same calls: step, layer, dense or sparse
        lo, hi = r * share, min(heads, (r + 1) * share)
        sparse = 0
        for (step, layer, dense, q_shape, kept), s in zip(got, ref):
            assert q_shape[1:3] == (s[3][1], hi - lo)  # the whole sequence, this rank's heads
            if not dense:
                assert torch.equal(kept, s[4][:, lo:hi]), f"rank {r}, step {step}, {layer}"
                sparse += 1
        assert sparse > 0


@pytest.mark.parametrize("name", list(CASES))
def test_statistics_and_warm_up_equal_single_process(ranks, single, name):
    ref = single[name]["stats"]
    for r in range(WORLD):
        got = ranks[r]["cases"][name]["stats"]
        assert got["steps"] == ref["steps"] == {0: "dense", 1: "dense", 2: "sparse", 3: "sparse"}
        assert (got["sparse_calls"], got["dense_calls"], got["forwards"]) == \
            (ref["sparse_calls"], ref["dense_calls"], ref["forwards"])
        assert got["fallbacks"] == ref["fallbacks"] == {}
        # mean over all heads (gathered from both ranks), as on one GPU; "topk" keeps the same number of tiles in
        # every head, so test_statistics_gather_every_rank_heads checks the gather itself
        assert got["layer_sparsity"].keys() == ref["layer_sparsity"].keys()
        for layer, value in ref["layer_sparsity"].items():
            assert got["layer_sparsity"][layer] == pytest.approx(value, abs=1e-6)


@pytest.mark.parametrize("name", [n for n in CASES if CASES[n][4]])
def test_statistics_gather_every_rank_heads(ranks, name):
    heads = CASES[name][1]
    share = -(-heads // WORLD)
    expected = [[10.0 * r + h for r in range(WORLD) for h in range(min(share, heads - r * share))]]
    for r in range(WORLD):
        assert ranks[r]["cases"][name]["gathered_sparsity"] == expected


@pytest.mark.parametrize("name, expected", [
    ("ring, parallelism first", "supports Ulysses context parallelism only, got ring_degree=2"),
    ("ring, draft first", "supports Ulysses context parallelism only, got ring_degree=2"),
    ("3 heads, even split", "must divide the 3 attention heads"),
    ("459 tokens, even split", "must divide the 459 video tokens"),
    ("hunyuan plan that does not split text", "hunyuan_video_cp_plan()"),
])
def test_unsupported_settings_fail_clearly(ranks, name, expected):
    for r in range(WORLD):
        message = ranks[r]["errors"][name]
        assert message.startswith("ValueError") and expected in message, message


def test_disable_under_parallelism_restores_parallel_default_processors(ranks):
    torch.testing.assert_close(ranks[0]["disabled"], run_disabled_after_parallelism(parallel_run=False),
                               rtol=1e-5, atol=1e-5)


def test_diffusers_own_processor_with_the_plan_attends_padded_text(ranks):
    """Why the processor rebuilds HunyuanVideo's key mask: diffusers' own processor, given the split of the plan,
    lets padded text keys of another rank's share through (a check that the padded case is really exercised)."""
    base = run_plain_hunyuan_with_plan(parallel_run=False)
    assert not torch.allclose(ranks[0]["plain_hunyuan"], base, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------- in-process checks (no ranks)
def test_private_diffusers_api_is_the_one_we_call():
    """Guard: fails loudly when diffusers changes the private context-parallel API (a version bump)."""
    import inspect

    import diffusers
    from diffusers.models import attention_dispatch

    parallel._api_checked = False
    fn = parallel.check_diffusers_cp_api()
    assert fn is attention_dispatch._templated_context_parallel_attention
    assert tuple(inspect.signature(fn).parameters) == parallel._CP_PARAMETERS
    assert diffusers.__version__.startswith(parallel.TESTED_DIFFUSERS)
    # The Ulysses path hands forward_op the gathered (B, S, H/P, D) sequence: the class our forward_op relies on.
    assert hasattr(attention_dispatch, "TemplatedUlyssesAttention")


def test_changed_private_api_raises(monkeypatch):
    from diffusers.models import attention_dispatch

    def changed(query, key, value, attn_mask=None, *, op, _parallel_config=None):  # forward_op renamed
        raise AssertionError("must not be called")

    monkeypatch.setattr(attention_dispatch, "_templated_context_parallel_attention", changed)
    monkeypatch.setattr(parallel, "_api_checked", False)
    with pytest.raises(RuntimeError, match="private context-parallel API.*forward_op"):
        parallel.check_diffusers_cp_api()


def test_gathered_shape_that_is_not_the_full_sequence_raises():
    from draftattention_diffusers import VideoGrid

    state = object.__new__(parallel.ContextParallelState)
    state.grid, state.text_len, state.local_heads, state.rank = VideoGrid(3, 9, 18), 0, 2, 0
    state._check_gathered(torch.zeros(1, 486, 2, 8))
    with pytest.raises(RuntimeError, match="API changed"):
        state._check_gathered(torch.zeros(1, 243, 4, 8))  # a layout other than Ulysses' gathered sequence


def test_hunyuan_plan_matches_the_model():
    """The plan's expected ranks match the tiny model's tensors (a mismatch makes diffusers skip the split)."""
    pipe = build_tiny_pipeline("hunyuan", heads=4)
    t = pipe.transformer
    plan = hunyuan_video_cp_plan()
    seen = {}
    hooks = [getattr(t, name).register_forward_hook(
        lambda m, a, out, name=name: seen.__setitem__(name, out if isinstance(out, tuple) else (out,)))
        for name in plan]
    with torch.inference_mode():
        pipe(**_pipe_kwargs(pipe, SIZE, {}, steps=1))
    for h in hooks:
        h.remove()
    tokens = 3 * 9 * 18
    for name, entry in plan.items():
        outs = seen[name]
        if isinstance(entry, dict):
            for index, spec in entry.items():
                assert outs[index].dim() == spec.expected_dims
                assert outs[index].shape[spec.split_dim] in (tokens, 16)  # video tokens or text slots
        else:
            assert outs[0].dim() == entry.expected_dims and outs[0].shape[entry.gather_dim] == tokens


def test_split_sizes_match_diffusers_sharding():
    for n, parts in ((459, 2), (16, 3), (256, 4), (7, 4)):  # uneven mode: tensor_split
        assert parallel._split_sizes(n, parts) == [len(c) for c in torch.arange(n).tensor_split(parts)]
    assert parallel._split_sizes(486, 2) == [len(c) for c in torch.arange(486).chunk(2)]  # even mode: chunk

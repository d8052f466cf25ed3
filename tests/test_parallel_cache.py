"""A step cache stacked on draft attention under diffusers' Ulysses context parallelism (two gloo ranks on CPU):
every rank's output equals one process running the same stack, in both install orders, for both families.

TaylorSeer is used because its schedule does not depend on the data: caches that decide from a rank's own share of
the tokens (FirstBlockCache, MagCache) could decide differently on different ranks, which is diffusers' concern and
not draft attention's.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import TaylorSeerCacheConfig
from test_parallel import SIZE, WORLD, _enable_parallelism, _pipe_kwargs, rank_results

from draftattention_diffusers import enable_draft_attention, get_draft_stats
from draftattention_diffusers.tiny import build_tiny_pipeline

DRAFT = dict(sparsity=0.5, dense_steps_fraction=0.5, backend="reference")
# name: family, order of installing (draft attention, parallelism, cache), prompt
CASES = {
    "wan: draft, parallelism, cache": ("wan", ("draft", "cp", "cache"), {}),
    "wan: cache, parallelism, draft": ("wan", ("cache", "cp", "draft"), {}),
    "hunyuan padded: parallelism, draft, cache": ("hunyuan", ("cp", "draft", "cache"), dict(valid_len=7)),
}


def _cache(pipe) -> TaylorSeerCacheConfig:
    blocks = [r"blocks\.\d+"] if type(pipe).__name__.startswith("Wan") else [r"transformer_blocks\.\d+",
                                                                            r"single_transformer_blocks\.\d+"]
    return TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=1, taylor_factors_dtype=torch.float32,
                                 cache_identifiers=blocks)


def run_case(name: str, parallel_run: bool) -> dict:
    family, order, prompt = CASES[name]
    pipe = build_tiny_pipeline(family, heads=4)
    steps = {"draft": lambda: enable_draft_attention(pipe, **DRAFT),
             "cache": lambda: pipe.transformer.enable_cache(_cache(pipe)),
             "cp": lambda: _enable_parallelism(pipe, {}) if parallel_run else None}
    for part in order:
        steps[part]()
    with torch.inference_mode():
        out = pipe(**_pipe_kwargs(pipe, SIZE, prompt, steps=6)).frames
    return dict(out=out, stats=get_draft_stats(pipe).summary())


def all_cases() -> dict:
    """What every rank runs, inside test_parallel's spawn (starting ranks costs ~10 s of imports)."""
    return {name: run_case(name, parallel_run=True) for name in CASES}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return [r["cache"] for r in rank_results(tmp_path_factory)]


@pytest.mark.parametrize("name", list(CASES))
def test_cache_on_draft_attention_under_context_parallelism(ranks, name):
    single = run_case(name, parallel_run=False)
    assert single["stats"]["sparse_calls"] > 0 and single["stats"]["skipped_forwards"] > 0  # sparse, and cached
    for r in range(WORLD):
        got = ranks[r][name]
        torch.testing.assert_close(got["out"], single["out"], rtol=1e-5, atol=1e-5)
        assert got["stats"]["steps"] == single["stats"]["steps"]
        assert (got["stats"]["sparse_calls"], got["stats"]["dense_calls"], got["stats"]["skipped_forwards"]) == \
            (single["stats"]["sparse_calls"], single["stats"]["dense_calls"], single["stats"]["skipped_forwards"])

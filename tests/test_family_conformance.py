"""The checks every model family gets, run from the family table: a family added as its module and one table line
is checked here without a test file of its own (families with their own test modules are listed in
``OWN_TESTS``). On the family's first tiny pipeline, at its ``tiny_call`` size (several regions per frame, so the
tile order is not the identity):

* dense parity: ``dense_steps_fraction=1`` is bit-identical to never enabled, no sparse call;
* ``disable`` is bit-identical and leaves exactly the hooks there were before;
* sparsity 0 with every step sparse equals dense within float rounding, through the tile order;
* the warm-up schedule through the real pipeline: ceil(0.5 * 4) = 2 dense steps, then sparse, no fallback, and the
  achieved sparsity is that of the tiles.
"""

import pytest
import torch
from pipeline_utils import run_tiny_call

from draftattention_diffusers import (disable_draft_attention, draft_attention_enabled, enable_draft_attention,
                                      get_draft_processor, get_draft_stats)
from draftattention_diffusers.core.layout import get_layout
from draftattention_diffusers.models import families
from draftattention_diffusers.models.base import count_hooks

# families whose own test modules cover these checks (tests/test_<family>.py, test_integration, test_lifecycle)
OWN_TESTS = {"wan", "hunyuan_video", "skyreels_v2", "wan_vace", "cogvideox", "ltx_video", "ltx2", "hunyuan_video15"}
CHECKED = [f for f in families() if f.name not in OWN_TESTS and f.tiny_variants]


@pytest.fixture(scope="module", params=CHECKED, ids=[f.name for f in CHECKED])
def case(request):
    family = request.param
    pipe = next(iter(family.tiny_variants.values()))()
    return family, pipe


def test_the_tiny_grid_reorders(case):
    family, pipe = case
    with draft_attention_enabled(pipe, sparsity=0.5, dense_steps_fraction=0.0):
        run_tiny_call(pipe, steps=2)  # (MochiPipeline's sigma schedule cannot run one step)
        grid = get_draft_processor(pipe).grid
    assert grid is not None
    perm = get_layout(grid).perm
    assert not torch.equal(perm, torch.arange(len(perm))), f"{family.name}: tiny_call gives an identity tile order"


def test_dense_schedule_and_disable_are_bit_identical(case):
    _, pipe = case
    base = run_tiny_call(pipe, steps=2)
    hooks = count_hooks(pipe.transformer)
    with draft_attention_enabled(pipe, dense_steps_fraction=1.0):
        dense = run_tiny_call(pipe, steps=2)
        assert get_draft_stats(pipe).summary()["sparse_calls"] == 0
    enable_draft_attention(pipe, sparsity=0.5, dense_steps_fraction=0.0)
    sparse = run_tiny_call(pipe, steps=2)
    disable_draft_attention(pipe)
    again = run_tiny_call(pipe, steps=2)
    assert torch.equal(dense, base) and torch.equal(again, base) and not torch.equal(sparse, base)
    assert count_hooks(pipe.transformer) == hooks


def test_sparsity_zero_equals_dense_and_the_schedule(case):
    _, pipe = case
    base = run_tiny_call(pipe, steps=4)
    with draft_attention_enabled(pipe, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        out = run_tiny_call(pipe, steps=4)
        zero = get_draft_stats(pipe).summary()
    assert zero["sparse_calls"] > 0 and zero["fallbacks"] == {}
    assert (out.double() - base.double()).abs().max().item() <= 1e-4 * max(1.0, base.abs().max().item())
    with draft_attention_enabled(pipe, sparsity=0.75, dense_steps_fraction=0.5):
        run_tiny_call(pipe, steps=4)
        stats = get_draft_stats(pipe).summary()
    assert stats["steps"] == {0: "dense", 1: "dense", 2: "sparse", 3: "sparse"}
    assert stats["fallbacks"] == {} and stats["sparse_calls"] > 0 and 0.5 <= stats["mean_sparsity"] < 1.0


def test_a_deep_copy_made_right_after_enabling_runs_like_the_original(case):
    """``copy.deepcopy`` of an enabled transformer, before any forward: the copy's hooks must read its own tile
    order (a family's hooks are often closures, which ``deepcopy`` does not copy by itself)."""
    import copy

    _, pipe = case
    enable_draft_attention(pipe, sparsity=0.5, dense_steps_fraction=0.0)
    try:
        clone = copy.deepcopy(pipe.transformer)
        other = type(pipe)(**dict(pipe.components, transformer=clone))
        copied = run_tiny_call(other, steps=2)
        assert get_draft_stats(other).summary()["sparse_calls"] > 0
        original = run_tiny_call(pipe, steps=2)
    finally:
        disable_draft_attention(pipe)
    assert (copied.double() - original.double()).abs().max().item() <= 1e-5 * max(1.0, original.abs().max().item())

"""Installing, replacing and removing processors leaves exactly the hooks of what is installed now; the step always
comes from the pipeline calling now; nothing holds a pipeline. Grids where the tile order is not the identity."""

import copy

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from pipeline_utils import REORDERING_SIZE
from pipeline_utils import run as run_pipeline

from draftattention_diffusers import (DraftAttnProcessor, disable_draft_attention, enable_draft_attention,
                                      get_draft_processor, get_draft_stats)
from draftattention_diffusers.core import VideoGrid, get_layout
from draftattention_diffusers.models import require_family
from draftattention_diffusers.models.base import count_hooks
from draftattention_diffusers.tiny import build_tiny_pipeline

SPARSE = dict(sparsity=0.5, dense_steps_fraction=0.0)


def run(pipe, steps: int = 2, **kwargs):
    """Two steps: the checks compare whole outputs (every step sparse under ``SPARSE``), more steps add only time."""
    return run_pipeline(pipe, steps, **kwargs)


def test_the_test_grid_reorders_tokens():
    lay = get_layout(VideoGrid(2, 8, 32))
    assert not torch.equal(lay.perm, torch.arange(lay.perm.numel()))


def model_processors(transformer):
    roles = require_family(transformer).roles(transformer, {})
    return {f"{r.name}.processor": r.default_processor for r in roles.values()}


@pytest.fixture(scope="module", params=["wan", "hunyuan"])
def family(request):
    return request.param


@pytest.fixture(scope="module")
def reference(family):
    """Outputs of fresh pipelines: never enabled, and a fresh install of each processor kind."""
    pipe = build_tiny_pipeline(family)
    plain, _ = run(pipe)
    hooks_plain = count_hooks(pipe.transformer)
    pipe.transformer.set_attn_processor(DraftAttnProcessor(**SPARSE))
    fresh_set, _ = run(pipe)
    hooks_one = count_hooks(pipe.transformer)
    fresh = build_tiny_pipeline(family)
    enable_draft_attention(fresh, **SPARSE)
    fresh_enable, _ = run(fresh)
    return dict(plain=plain, fresh_set=fresh_set, fresh_enable=fresh_enable, hooks_plain=hooks_plain,
                hooks_one=hooks_one)


def test_replacing_processors_leaves_only_the_current_hooks(family, reference):  # issue workflow 1
    pipe = build_tiny_pipeline(family)
    t = pipe.transformer
    assert reference["hooks_one"] > reference["hooks_plain"] == count_hooks(t)
    for _ in range(3):  # the same processor kind installed again and again
        t.set_attn_processor(DraftAttnProcessor(**SPARSE))
        out, _ = run(pipe)
        assert count_hooks(t) == reference["hooks_one"]
        assert torch.equal(out, reference["fresh_set"])
    enable_draft_attention(pipe, **SPARSE)  # takes over from the set_attn_processor install
    out, _ = run(pipe)
    assert count_hooks(t) == reference["hooks_one"] and torch.equal(out, reference["fresh_enable"])
    disable_draft_attention(pipe)
    assert count_hooks(t) == reference["hooks_plain"]
    out, _ = run(pipe)
    assert torch.equal(out, reference["plain"])


def test_any_other_processor_removes_draft_attention(family, reference):
    pipe = build_tiny_pipeline(family)
    t = pipe.transformer
    t.set_attn_processor(DraftAttnProcessor(**SPARSE))
    run(pipe)
    t.set_attn_processor(model_processors(t))  # the model's own processors again
    assert count_hooks(t) == reference["hooks_plain"]  # gone at once, before any forward
    out, _ = run(pipe)
    assert torch.equal(out, reference["plain"])
    with pytest.raises(RuntimeError, match="not enabled"):
        get_draft_stats(pipe)
    enable_draft_attention(pipe, **SPARSE)  # not "already enabled"
    out, _ = run(pipe)
    assert torch.equal(out, reference["fresh_enable"])
    t.set_attn_processor(model_processors(t))  # replacing an enable_draft_attention install works the same
    assert count_hooks(t) == reference["hooks_plain"]
    with pytest.raises(RuntimeError, match="not enabled"):
        disable_draft_attention(pipe)


def test_processor_swapped_module_by_module_is_noticed_at_the_next_forward(family, reference):
    pipe = build_tiny_pipeline(family)
    enable_draft_attention(pipe, **SPARSE)
    run(pipe)
    for name, proc in model_processors(pipe.transformer).items():
        pipe.transformer.get_submodule(name.rsplit(".", 1)[0]).set_processor(proc)
    out, _ = run(pipe)
    assert torch.equal(out, reference["plain"]) and count_hooks(pipe.transformer) == reference["hooks_plain"]


def test_second_enable_raises_and_keeps_the_first(family, reference):
    pipe = build_tiny_pipeline(family)
    enable_draft_attention(pipe, **SPARSE)
    with pytest.raises(RuntimeError, match="already enabled"):
        enable_draft_attention(pipe, sparsity=0.9)
    out, _ = run(pipe)
    assert torch.equal(out, reference["fresh_enable"]) and count_hooks(pipe.transformer) == reference["hooks_one"]


def test_deepcopy_copies_the_transformer_only(family, reference):
    """Copied right after enabling (no forward yet): the copy's hooks put its tokens in its own tile order (a hook
    that read the original's would leave them in diffusers' order: a wrong result)."""
    pipe = build_tiny_pipeline(family)
    enable_draft_attention(pipe, **SPARSE)
    memo = {}
    clone = copy.deepcopy(pipe.transformer, memo)
    copied = [type(v).__name__ for v in memo.values() if isinstance(v, (DiffusionPipeline, torch.nn.Module))
              and not any(v is m for m in pipe.transformer.modules())]
    assert not any(isinstance(v, DiffusionPipeline) for v in memo.values()), copied
    assert not any(isinstance(v, torch.nn.Module) and v is pipe.vae for v in memo.values())
    # the copy works on its own, and removing its hooks leaves the original's
    other = build_tiny_pipeline(family)
    other.transformer = clone
    out, _ = run(other)
    assert torch.equal(out, reference["fresh_enable"])
    assert torch.equal(run(pipe)[0], reference["fresh_enable"])
    disable_draft_attention(clone)
    assert count_hooks(clone) == reference["hooks_plain"] and count_hooks(pipe.transformer) == reference["hooks_one"]


def steps_of(pipe) -> dict:
    return get_draft_stats(pipe).summary()["steps"]


def test_shared_transformer_follows_the_calling_pipeline(family):  # issue workflow 2
    a = build_tiny_pipeline(family)
    enable_draft_attention(a, sparsity=0.5, dense_steps_fraction=0.5)
    run(a, steps=4)
    a_forwards = get_draft_stats(a).summary()["forwards"]
    components = dict(a.components, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    b = type(a)(**components)
    _, b_steps = run(b, steps=4)
    stats = get_draft_stats(b).summary()
    want = {i: ("dense" if i < 2 else "sparse") for i in range(4)}
    assert stats["steps"] == want
    assert stats["forwards"] == a_forwards  # fresh statistics for B's call (not A's plus B's)
    # B's dense warm-up equals B without draft attention (within float rounding: the tile order is kept)
    disable_draft_attention(a)
    _, plain = run(b, steps=4)
    for i in range(2):
        torch.testing.assert_close(b_steps[i], plain[i], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(b_steps[-1], plain[-1], rtol=1e-4, atol=1e-4)


def test_from_pipe_follows_its_own_scheduler():
    from diffusers import WanPipeline

    a = build_tiny_pipeline("wan")
    enable_draft_attention(a, sparsity=0.5, dense_steps_fraction=0.5)
    run(a, steps=2)  # A's scheduler is left at its last step
    b = WanPipeline.from_pipe(a, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    run(b, steps=4)
    assert steps_of(b) == {i: ("dense" if i < 2 else "sparse") for i in range(4)}


def test_set_step_applies_only_without_a_pipeline(family):  # issue workflow 3
    pipe = build_tiny_pipeline(family)
    enable_draft_attention(pipe, sparsity=0.5, dense_steps_fraction=0.5)
    proc = get_draft_processor(pipe)
    proc.set_step(3, 4)
    run(pipe, steps=4)
    assert steps_of(pipe) == {i: ("dense" if i < 2 else "sparse") for i in range(4)}
    # a bare transformer call uses it
    stats = proc.stats
    stats.reset()
    t = pipe.transformer
    x = torch.randn(1, t.config.in_channels, 2, 8, 32)
    kw = dict(hidden_states=x, timestep=torch.tensor([500]), encoder_hidden_states=torch.randn(1, 16, 32))
    if family == "hunyuan":
        kw.update(encoder_attention_mask=torch.ones(1, 16, dtype=torch.long), pooled_projections=torch.randn(1, 16),
                  guidance=torch.tensor([1000.0]))
    t(**kw)
    assert stats.summary()["steps"] == {3: "sparse"}


@pytest.mark.parametrize("bad", [(1.5, 4), (1, 4.0), (True, 4), ("1", 4), (4, 4), (-1, 4)])
def test_set_step_takes_integers_only(bad):
    with pytest.raises(ValueError, match="set_step"):
        DraftAttnProcessor().set_step(*bad)
    DraftAttnProcessor().set_step(np.int64(1), np.int32(4))  # numpy integers are integers


def test_dense_layers_beyond_the_blocks_fail_at_enable(family):
    pipe = build_tiny_pipeline(family)  # 2 blocks with video self-attention
    with pytest.raises(ValueError, match="dense_layers"):
        enable_draft_attention(pipe, dense_layers=(2,))
    assert count_hooks(pipe.transformer) == 0  # nothing was installed
    enable_draft_attention(pipe, dense_layers=(1,))
    disable_draft_attention(pipe)


def test_size_used_here_is_the_reordering_one():
    assert REORDERING_SIZE["width"] // 16 >= 32  # two regions per frame row

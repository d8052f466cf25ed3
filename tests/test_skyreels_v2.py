"""SkyReels-V2, the family added as one module (models/skyreels_v2.py) plus one table line: the checks every family
gets, on the tiny T2V pipeline and a grid whose tile order is not the identity."""

import pytest
import torch
from pipeline_utils import max_diff, run

from draftattention_diffusers import (disable_draft_attention, draft_attention_enabled, enable_draft_attention,
                                      get_draft_stats)
from draftattention_diffusers.models.base import count_hooks
from draftattention_diffusers.tiny import build_tiny_pipeline


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline("skyreels-v2")


def test_dense_schedule_is_bit_identical(pipe):
    base, _ = run(pipe, steps=3)
    with draft_attention_enabled(pipe, dense_steps_fraction=1.0):
        dense, _ = run(pipe, steps=3)
        assert get_draft_stats(pipe).summary()["sparse_calls"] == 0
    assert torch.equal(dense, base)


def test_disable_is_bit_identical_and_leaves_no_hook(pipe):
    base, _ = run(pipe, steps=3)
    hooks = count_hooks(pipe.transformer)
    enable_draft_attention(pipe, sparsity=0.5, dense_steps_fraction=0.0)
    sparse, _ = run(pipe, steps=3)
    disable_draft_attention(pipe)
    again, _ = run(pipe, steps=3)
    assert not torch.equal(sparse, base) and torch.equal(again, base) and count_hooks(pipe.transformer) == hooks


def test_sparsity_zero_equals_dense_and_the_schedule(pipe):
    base, base_steps = run(pipe, steps=4)
    with draft_attention_enabled(pipe, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        out, _ = run(pipe, steps=4)
    assert max_diff(out, base) < 1e-4
    with draft_attention_enabled(pipe, sparsity=0.75, dense_steps_fraction=0.5):
        _, steps = run(pipe, steps=4)
        stats = get_draft_stats(pipe).summary()
    assert stats["steps"] == {0: "dense", 1: "dense", 2: "sparse", 3: "sparse"}
    assert stats["fallbacks"] == {} and stats["mean_sparsity"] > 0.5
    assert all(torch.equal(a, b) for a, b in zip(steps[:2], base_steps[:2]))  # gathered per call: exact warm-up


@pytest.mark.parametrize("mode", [dict(), dict(ar_step=1, causal_block_size=1), dict(causal_block_size=2)])
def test_diffusion_forcing_steps_and_causal_masks(pipe, mode):
    """Diffusion forcing: the step is the pipeline's loop iteration (its per-frame schedulers leave step_index
    unset); frame-block causal masks are not key-padding masks, so those calls run dense with the mask, visibly."""
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    from draftattention_diffusers.tiny import tiny_prompt_kwargs

    df = SkyReelsV2DiffusionForcingPipeline(**pipe.components)
    kw = dict(tiny_prompt_kwargs(df), prompt=None, height=128, width=512, num_frames=9, base_num_frames=9,
              num_inference_steps=4, output_type="latent", **mode)
    base = df(**kw, generator=torch.Generator().manual_seed(0)).frames
    with draft_attention_enabled(df, dense_steps_fraction=1.0):
        dense = df(**kw, generator=torch.Generator().manual_seed(0)).frames
    with draft_attention_enabled(df, sparsity=0.5, dense_steps_fraction=0.5):
        sparse = df(**kw, generator=torch.Generator().manual_seed(0)).frames
        stats = get_draft_stats(df).summary()
    pipe.transformer.register_to_config(num_frame_per_block=1)  # the pipeline leaves its causal block size behind
    assert torch.equal(dense, base)
    n = len(stats["steps"])
    assert n >= 4 and stats["steps"] == {i: ("dense" if i < -(-n // 2) else "sparse") for i in range(n)}
    if mode.get("causal_block_size", 1) > 1:
        assert stats["sparse_calls"] == 0 and any("not a key-padding suffix" in m for m in stats["fallbacks"])
        assert torch.equal(sparse, base) or max_diff(sparse, base) < 1e-5  # every call dense, with the mask
    else:
        assert stats["sparse_calls"] > 0 and stats["fallbacks"] == {}

"""Wan VACE, added as one module (models/wan_vace.py) plus one table line: video self-attention of the main and
the VACE control blocks sparse, on the tiny pipeline and a grid whose tile order is not the identity."""

import pytest
import torch
from pipeline_utils import max_diff, run

from draftattention_diffusers import (disable_draft_attention, draft_attention_enabled, enable_draft_attention,
                                      get_draft_stats)
from draftattention_diffusers.models.base import count_hooks
from draftattention_diffusers.tiny import build_tiny_pipeline


@pytest.fixture(scope="module")
def pipe():
    pipe = build_tiny_pipeline("wan-vace")
    # Each call VAE-encodes its control video (none given: zeros) twice, most of a call's time on a CPU. The VAE is
    # not what these tests check and its encoding is deterministic (the pipeline takes the mode), so each distinct
    # input is encoded once.
    encode, seen = pipe.vae.encode, []

    def encode_once(x, *args, **kwargs):
        for (x0, args0, kwargs0), out in seen:
            if x0.shape == x.shape and torch.equal(x0, x) and (args0, kwargs0) == (args, kwargs):
                return out
        out = encode(x, *args, **kwargs)
        seen.append(((x.clone(), args, kwargs), out))
        return out

    pipe.vae.encode = encode_once
    return pipe


def test_dense_schedule_and_disable_are_bit_identical(pipe):
    base, _ = run(pipe, steps=3)
    hooks = count_hooks(pipe.transformer)
    with draft_attention_enabled(pipe, dense_steps_fraction=1.0):
        dense, _ = run(pipe, steps=3)
    enable_draft_attention(pipe, sparsity=0.5, dense_steps_fraction=0.0)
    sparse, _ = run(pipe, steps=3)
    disable_draft_attention(pipe)
    again, _ = run(pipe, steps=3)
    assert torch.equal(dense, base) and torch.equal(again, base) and not torch.equal(sparse, base)
    assert count_hooks(pipe.transformer) == hooks


def test_control_blocks_are_sparse_too_and_schedule(pipe):
    base, base_steps = run(pipe, steps=4)
    with draft_attention_enabled(pipe, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        out, _ = run(pipe, steps=4)
    assert max_diff(out, base) < 1e-4
    with draft_attention_enabled(pipe, sparsity=0.75, dense_steps_fraction=0.5, dense_layers=(2,)):  # the VACE block
        _, steps = run(pipe, steps=4)
        stats = get_draft_stats(pipe).summary()
    assert stats["steps"] == {0: "dense", 1: "dense", 2: "sparse", 3: "sparse"} and stats["fallbacks"] == {}
    assert set(stats["layer_sparsity"]) == {"transformer.blocks.0.attn1", "transformer.blocks.1.attn1"}
    assert all(torch.equal(a, b) for a, b in zip(steps[:2], base_steps[:2]))
    with draft_attention_enabled(pipe, sparsity=0.75, dense_steps_fraction=0.0):
        run(pipe, steps=2)
        assert "transformer.vace_blocks.0.attn1" in get_draft_stats(pipe).summary()["layer_sparsity"]
    with pytest.raises(ValueError, match="dense_layers"):
        enable_draft_attention(pipe, dense_layers=(3,))  # 2 main blocks + 1 VACE block

"""EasyAnimate (models/easyanimate.py): what the shared family checks (tests/test_family_conformance.py, which reach
EasyAnimate from the family table) do not pin down: both block kinds run sparse (an MMDiT block with its own text
projections, and a later block projecting both streams at once), and the tile-order hooks (RoPE tables, the first
block's tokens, back before norm_final) give the run that gathering q, k, v in every call gives."""

import pytest
import torch
from pipeline_utils import max_diff, run

from draftattention_diffusers import draft_attention_enabled, get_draft_stats
from draftattention_diffusers.models import family_for, family_for_pipeline
from draftattention_diffusers.models.easyanimate import EasyAnimateFamily, build_tiny_easyanimate

SIZE = EasyAnimateFamily.tiny_call


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_easyanimate()


def test_both_block_kinds_run_sparse_and_equal_diffusers_at_sparsity_zero(pipe):
    assert family_for(pipe.transformer).name == "easyanimate" and family_for_pipeline(pipe).name == "easyanimate"
    blocks = pipe.transformer.transformer_blocks
    assert blocks[0].attn1.add_q_proj is not None and blocks[1].attn1.add_q_proj is None  # MMDiT, then not
    base, _ = run(pipe, steps=2, size=SIZE)
    with draft_attention_enabled(pipe, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        zero, _ = run(pipe, steps=2, size=SIZE)
        stats = get_draft_stats(pipe).summary()
    assert set(stats["layer_sparsity"]) == {f"transformer.transformer_blocks.{i}.attn1" for i in (0, 1)}
    assert stats["fallbacks"] == {} and max_diff(zero, base) < 1e-4


def test_tile_order_per_forward_equals_gathering_per_call(pipe):
    outs = {}
    for reorder in ("per_forward", "per_call"):
        with draft_attention_enabled(pipe, sparsity=0.6, dense_steps_fraction=0.0, reorder=reorder):
            outs[reorder], _ = run(pipe, steps=2, size=SIZE)
            assert get_draft_stats(pipe).summary()["mean_sparsity"] > 0.3
    torch.testing.assert_close(outs["per_forward"], outs["per_call"], rtol=1e-4, atol=1e-4)

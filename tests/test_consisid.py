"""ConsisID, CogVideoX's family on its own transformer class (models/consisid.py): the checks every family gets
(tests/test_family_conformance.py runs them for families with a command-line tiny model; ConsisID's pipeline needs
face embeddings, so they run here), on a tiny ConsisIDPipeline with its face modules at a grid whose tile order is
not the identity."""

import pytest
import torch
from PIL import Image
from pipeline_utils import REORDERING_SIZE, max_diff, run

from draftattention_diffusers import (disable_draft_attention, draft_attention_enabled, enable_draft_attention,
                                      get_draft_processor, get_draft_stats)
from draftattention_diffusers.core import get_layout
from draftattention_diffusers.core.layout import VideoGrid
from draftattention_diffusers.models import family_for, family_for_pipeline
from draftattention_diffusers.models.base import count_hooks
from draftattention_diffusers.models.consisid import build_tiny_consisid


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_consisid()


def _run(pipe, steps, **kw):
    g = torch.Generator().manual_seed(3)
    image = Image.fromarray((torch.rand(128, 512, 3, generator=g) * 255).to(torch.uint8).numpy())
    return run(pipe, steps=steps, image=image, **kw)


def test_family_grid_and_tile_order(pipe):
    assert family_for(pipe.transformer).name == "consisid" and family_for_pipeline(pipe).name == "consisid"
    with draft_attention_enabled(pipe, sparsity=0.5, dense_steps_fraction=0.0):
        _run(pipe, steps=1)
        grid = get_draft_processor(pipe).grid
    assert grid == VideoGrid(2, 8, 32)
    perm = get_layout(grid).perm
    assert not torch.equal(perm, torch.arange(perm.numel()))


def test_dense_schedule_and_disable_are_bit_identical(pipe):
    base, _ = _run(pipe, steps=2)
    hooks = count_hooks(pipe.transformer)
    with draft_attention_enabled(pipe, dense_steps_fraction=1.0):
        dense, _ = _run(pipe, steps=2)
        assert get_draft_stats(pipe).summary()["sparse_calls"] == 0
    enable_draft_attention(pipe, sparsity=0.5, dense_steps_fraction=0.0)
    sparse, _ = _run(pipe, steps=2)
    disable_draft_attention(pipe)
    again, _ = _run(pipe, steps=2)
    assert torch.equal(dense, base) and torch.equal(again, base) and not torch.equal(sparse, base)
    assert count_hooks(pipe.transformer) == hooks


def test_sparsity_zero_equals_dense_and_the_schedule(pipe):
    """Leading text, RoPE, the face cross-attention after every block, in tile order: with every tile kept it
    equals diffusers within float rounding; the step comes from the pipeline loop (no step_index)."""
    assert not hasattr(pipe.scheduler, "step_index")
    base, _ = _run(pipe, steps=4)
    with draft_attention_enabled(pipe, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        out, _ = _run(pipe, steps=4)
        zero = get_draft_stats(pipe).summary()
    assert zero["sparse_calls"] > 0 and zero["fallbacks"] == {}
    assert max_diff(out, base) <= 1e-4 * max(1.0, base.abs().max().item())
    with draft_attention_enabled(pipe, sparsity=0.75, dense_steps_fraction=0.5):
        _run(pipe, steps=4)
        stats = get_draft_stats(pipe).summary()
    assert stats["steps"] == {0: "dense", 1: "dense", 2: "sparse", 3: "sparse"}
    assert stats["fallbacks"] == {} and stats["sparse_calls"] > 0 and 0.5 <= stats["mean_sparsity"] < 1.0


def test_rope_passed_positionally_is_reordered(pipe):
    """ConsisID's forward takes image_rotary_emb 5th (CogVideoX: 6th): a direct call passing it positionally
    equals the keyword call in tile order."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    t = pipe.transformer
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 2, 8, 16, 64, generator=g), torch.randn(1, 16, 32, generator=g)
    rope = get_3d_rotary_pos_embed(embed_dim=48, crops_coords=((0, 0), (8, 32)), grid_size=(8, 32), temporal_size=2)
    face = dict(id_cond=torch.randn(1, 16, generator=g), id_vit_hidden=[torch.randn(1, 8, 16, generator=g)] * 2)
    with draft_attention_enabled(pipe, sparsity=0.5, dense_steps_fraction=0.0) as p:
        get_draft_processor(p).set_step(0, 1)
        by_name = t(x, text, torch.tensor([500]), image_rotary_emb=rope, return_dict=False, **face)[0]
        positional = t(x, text, torch.tensor([500]), None, rope, None, return_dict=False, **face)[0]
    assert torch.equal(by_name, positional)

"""Mochi 1 (models/mochi.py): the shared family checks, padded prompts (diffusers attends each item's valid text
tokens only and pads zero rows), and CFG as a batch of two with different masks.

Interim: ``MochiTransformer3DModel`` (diffusers 0.42.1) does not inherit diffusers' ``AttentionMixin``, so it has
no ``attn_processors`` / ``set_attn_processor``, and its ``MochiAttention`` modules have no ``get_processor`` /
``set_processor`` (a bare ``processor`` attribute), which the integration uses to install and restore processors.
Until the integration handles such transformers, the fixture below lends the classes those members (the functions
diffusers' other transformers and ``Attention`` have) and adds the family to the table for each test; it is not in
``_FAMILIES``.
"""

import pytest
import test_family_conformance as conformance
import torch
from diffusers import MochiTransformer3DModel
from diffusers.models.attention import AttentionMixin
from diffusers.models.attention_processor import Attention, MochiAttention
from pipeline_utils import max_diff

from draftattention_diffusers import draft_attention_enabled, get_draft_processor, get_draft_stats
from draftattention_diffusers import models
from draftattention_diffusers.core.layout import VideoGrid, get_layout
from draftattention_diffusers.models.mochi import MochiFamily, build_tiny_mochi
from draftattention_diffusers.tiny import tiny_prompt_kwargs

FAMILY = MochiFamily()


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    for name in ("attn_processors", "set_attn_processor"):
        if not hasattr(MochiTransformer3DModel, name):
            monkeypatch.setattr(MochiTransformer3DModel, name, getattr(AttentionMixin, name), raising=False)
    for name in ("get_processor", "set_processor"):
        if not hasattr(MochiAttention, name):
            monkeypatch.setattr(MochiAttention, name, getattr(Attention, name), raising=False)
    if models.family_for_pipeline("MochiPipeline") is None:
        monkeypatch.setattr(models, "_FAMILIES", models._FAMILIES + (FAMILY,))


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_mochi()


def test_shared_family_checks(pipe):
    """(test_the_tiny_grid_reorders runs one step, which MochiPipeline's sigma schedule cannot: two here.)"""
    case = (models.family_for(pipe.transformer), pipe)
    with draft_attention_enabled(pipe, sparsity=0.5, dense_steps_fraction=0.0):
        conformance.run(*case, steps=2)
        grid = get_draft_processor(pipe).grid
    assert grid == VideoGrid(2, 8, 32) and not torch.equal(get_layout(grid).perm, torch.arange(grid.num_tokens))
    conformance.test_dense_schedule_and_disable_are_bit_identical(case)
    conformance.test_sparsity_zero_equals_dense_and_the_schedule(case)


def _run(pipe, prompt_mask, negative_mask, **kw):
    prompts = tiny_prompt_kwargs(pipe)
    prompts.update(prompt_attention_mask=prompt_mask, negative_prompt_attention_mask=negative_mask)
    return pipe(**prompts, **FAMILY.tiny_call, num_inference_steps=2, output_type="latent",
                generator=torch.Generator().manual_seed(0), **kw).frames


@pytest.mark.parametrize("masks", ["padded", "empty negative", "not a suffix"])
def test_padded_prompts_equal_diffusers_at_sparsity_zero(pipe, masks):
    """CFG runs the two prompts as one batch of two with their own masks: per-item key lengths; an empty negative
    prompt (force_zeros_for_empty_prompt) has no valid text token; a mask that is not a suffix runs dense (visibly)
    and still equals diffusers, whose valid text rows come first in its output."""
    mask, negative = torch.zeros(1, 16, dtype=torch.bool), torch.zeros(1, 16, dtype=torch.bool)
    mask[:, :11] = True
    if masks == "padded":
        negative[:, :5] = True
    elif masks == "not a suffix":
        negative[:, 3:9] = True
    base = _run(pipe, mask, negative)
    with draft_attention_enabled(pipe, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        out = _run(pipe, mask, negative)
        stats = get_draft_stats(pipe).summary()
    assert max_diff(out, base) <= 1e-4 * max(1.0, base.abs().max().item())
    if masks == "not a suffix":
        assert stats["sparse_calls"] == 0 and any("suffix" in f for f in stats["fallbacks"])
    else:
        assert stats["sparse_calls"] > 0 and stats["fallbacks"] == {}

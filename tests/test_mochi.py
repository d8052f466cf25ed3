"""Mochi 1 (models/mochi.py): the shared family checks, padded prompts (diffusers attends each item's valid text
tokens only and pads zero rows), and CFG as a batch of two with different masks.
(The shared family checks reach Mochi from the family table: tests/test_family_conformance.py. Its transformer has
no AttentionMixin and its MochiAttention modules only a bare ``processor`` attribute: the integration walks them.)
"""

import pytest
import torch
from pipeline_utils import max_diff

from draftattention_diffusers import draft_attention_enabled, get_draft_stats
from draftattention_diffusers.models.mochi import MochiFamily, build_tiny_mochi
from draftattention_diffusers.tiny import tiny_prompt_kwargs

FAMILY = MochiFamily()


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_mochi()


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

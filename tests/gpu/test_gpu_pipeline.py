"""Whole pipelines on the GPU: the processor path (tile-order forwards, text tokens, padded prompts) with the
fastest backend, every sparse call checked against the reference backend on the same tiles."""

import pytest
import torch

from draftattention_diffusers import draft_attention_enabled, get_draft_stats
from draftattention_diffusers.backends import get_backend
from draftattention_diffusers.integration import processor as processor_module
from draftattention_diffusers.tiny import build_tiny_pipeline, tiny_prompt_kwargs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def check_pipeline(family: str, reorder: str, monkeypatch, dtype=torch.bfloat16, backend: str = "auto"):
    pipe = build_tiny_pipeline(family).to(DEVICE)
    pipe.transformer.to(dtype)
    calls = []
    real = processor_module.draft_attention

    def spy(q, k, v, grid, config, **kw):
        out, tiles = real(q, k, v, grid, config, **kw)
        calls.append((q, k, v, kw, out, tiles))
        return out, tiles

    monkeypatch.setattr(processor_module, "draft_attention", spy)
    kw = tiny_prompt_kwargs(pipe, valid_len=11) if family == "hunyuan" else tiny_prompt_kwargs(pipe)
    kw = {k: v.to(DEVICE) for k, v in kw.items()}
    if family != "hunyuan":
        kw = {k: v.to(dtype) for k, v in kw.items()}
    with draft_attention_enabled(pipe, sparsity=0.75, dense_steps_fraction=0.25, reorder=reorder, backend=backend):
        out = pipe(**kw, height=240, width=416, num_frames=9, num_inference_steps=4, output_type="latent",
                   generator=torch.Generator(DEVICE).manual_seed(0)).frames
        stats = get_draft_stats(pipe).summary()
    assert torch.isfinite(out).all()
    assert stats["fallbacks"] == {} and stats["sparse_calls"] > 0
    assert stats["steps"][0] == "dense" and stats["steps"][3] == "sparse"
    ref = get_backend("reference")
    for q, k, v, kwargs, got, tiles in calls:
        perm, inv = tiles.layout.perm, tiles.layout.inv_perm
        ordered = kwargs["in_tile_order"]
        qp, kp, vp = (x if ordered else x[:, perm] for x in (q, k, v))
        want = ref.forward(qp, kp, vp, tiles, kwargs.get("key_lengths"), kwargs["scale"])
        want = want if ordered else want[:, inv]
        err = ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()
        assert err < 2e-2, err
    return calls


@pytest.mark.parametrize("family", ["wan", "hunyuan"])
@pytest.mark.parametrize("reorder", ["per_forward", "per_call"])
def test_pipeline_sparse_calls_match_reference(family, reorder, monkeypatch):
    calls = check_pipeline(family, reorder, monkeypatch)
    assert all(c[3]["in_tile_order"] == (reorder == "per_forward") for c in calls)

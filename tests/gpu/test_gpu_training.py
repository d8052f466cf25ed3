"""Backward through the flex backend on the GPU: gradients equal the reference backend's on the same tiles (padded
keys included), and a whole tiny transformer at sparsity 0 gives diffusers' gradients (FlexAttention has no
backward on CPU, so these run here)."""

import pytest
import torch

from draftattention_diffusers import draft_attention_enabled
from draftattention_diffusers.backends import get_backend
from draftattention_diffusers.core import VideoGrid, get_layout
from draftattention_diffusers.core.selection import select_tiles
from draftattention_diffusers.tiny import build_tiny_pipeline


def test_flex_backward_equals_reference_on_the_same_tiles():
    grid, text = VideoGrid(2, 8, 32), 16
    layout = get_layout(grid, text, device="cuda")
    torch.manual_seed(0)
    base = [torch.randn(2, layout.seq_len, 2, 64, device="cuda") for _ in range(3)]
    key_lengths = torch.tensor([layout.seq_len, layout.seq_len - 5], device="cuda")
    tiles = select_tiles(base[0], base[1], layout, 0.5, "topk", key_lengths=key_lengths)
    grads = {}
    for name in ("reference", "flex"):
        q, k, v = (x.clone().requires_grad_() for x in base)
        get_backend(name).forward(q, k, v, tiles, key_lengths, 64 ** -0.5).square().sum().backward()
        grads[name] = [x.grad for x in (q, k, v)]
    for got, want in zip(grads["flex"], grads["reference"]):
        assert ((got - want).abs().max() / want.abs().max()).item() < 1e-3


@pytest.mark.parametrize("family", ["wan", "hunyuan"])
def test_transformer_gradients_with_flex_equal_diffusers_at_sparsity_zero(family):
    t = build_tiny_pipeline(family, heads=2).transformer.to("cuda").train()
    g = torch.Generator().manual_seed(1)
    kw = dict(hidden_states=torch.randn(1, t.config.in_channels, 2, 16, 64, generator=g).cuda(),
              timestep=torch.tensor([500], device="cuda"),
              encoder_hidden_states=torch.randn(1, 16, 32, generator=g).cuda(), return_dict=False)
    if family == "hunyuan":
        mask = torch.ones(1, 16, dtype=torch.long, device="cuda")
        mask[:, 11:] = 0
        kw.update(encoder_attention_mask=mask, pooled_projections=torch.randn(1, 16, generator=g).cuda(),
                  guidance=torch.tensor([1000.0], device="cuda"))

    def grads():
        t.zero_grad()
        t(**kw)[0].square().mean().backward()
        return {n: p.grad.clone() for n, p in t.named_parameters() if p.grad is not None}

    want = grads()
    with draft_attention_enabled(t, sparsity=0.0, dense_steps_fraction=0.0, backend="flex"):
        got = grads()
    for name in want:
        scale = want[name].abs().max().item()
        assert (got[name] - want[name]).abs().max().item() <= 2e-3 * max(scale, 1e-3), name

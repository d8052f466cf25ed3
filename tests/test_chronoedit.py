"""ChronoEdit (``ChronoEditTransformer3DModel``), beyond the shared family checks: with temporal reasoning the pipeline
cuts the latents to their first and last frame after ``num_temporal_reasoning_steps`` steps, so one pipeline call runs
two grids; each forward's tile order follows its own grid (equal to dense at sparsity 0, sparse on both grids)."""

import torch

from draftattention_diffusers import draft_attention_enabled, get_draft_processor, get_draft_stats
from draftattention_diffusers.models.chronoedit import ChronoEditFamily
from draftattention_diffusers.tiny import build_tiny_pipeline, tiny_prompt_kwargs


def test_temporal_reasoning_changes_the_grid_mid_call():
    pipe = build_tiny_pipeline("chronoedit", num_layers=1)
    kw = dict(tiny_prompt_kwargs(pipe), **ChronoEditFamily.tiny_call)
    kw.update(num_frames=9, enable_temporal_reasoning=True, num_temporal_reasoning_steps=1, num_inference_steps=2,
              guidance_scale=1.0, output_type="latent")

    def run():
        return pipe(**kw, generator=torch.Generator().manual_seed(0)).frames

    base = run()
    grids = []
    with draft_attention_enabled(pipe, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        get_draft_processor(pipe).add_observer(lambda e: grids.append((e.grid.frames, e.grid.height, e.grid.width)))
        zero = run()
        stats = get_draft_stats(pipe).summary()
    assert base.shape[2] == 2 and grids == [(3, 8, 32), (2, 8, 32)]  # 9 frames (3 latent), then first and last
    assert stats["sparse_calls"] == 2 and stats["fallbacks"] == {}
    assert (zero - base).abs().max().item() <= 1e-4 * max(1.0, base.abs().max().item())

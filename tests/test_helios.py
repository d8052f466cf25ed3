"""Helios (``HeliosTransformer3DModel``), beyond the shared family checks: the history prefix of each chunk's
self-attention stays dense (every tile holding history tokens kept, as rows and as columns), and a second chunk, whose
history holds the first chunk's latents, equals dense at sparsity 0 with its own warm-up."""

import pytest
import torch

from draftattention_diffusers import draft_attention_enabled, get_draft_processor, get_draft_stats
from draftattention_diffusers.tiny import build_tiny_pipeline, tiny_prompt_kwargs

# two chunks of 2 latent frames (5 frames each), 8 x 32 tokens per frame
TWO_CHUNKS = dict(height=128, width=512, num_frames=10, num_latent_frames_per_chunk=2)
HISTORY = 2 * 8 * 32 + 1 * 4 * 16 + 4 * 2 * 8  # short (prefix + 1 frame), mid (2x compressed), long (4x): 640 tokens


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline("helios", num_layers=1)


def run(pipe, steps):
    return pipe(**tiny_prompt_kwargs(pipe), **TWO_CHUNKS, num_inference_steps=steps, output_type="latent",
                generator=torch.Generator().manual_seed(0)).frames


def test_history_prefix_is_dense_and_the_second_chunk_matches(pipe):
    base = run(pipe, steps=2)
    events = []
    with draft_attention_enabled(pipe, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        zero = run(pipe, steps=2)
    with draft_attention_enabled(pipe, sparsity=0.9, dense_steps_fraction=0.5, backend="reference"):
        get_draft_processor(pipe).add_observer(events.append)
        sparse = run(pipe, steps=2)
        stats = get_draft_stats(pipe).summary()
    assert base.shape[2] == 2 + 2 and (zero - base).abs().max().item() <= 1e-4 * max(1.0, base.abs().max().item())
    assert not torch.equal(sparse, base)
    # the statistics are the last chunk's: its own warm-up (1 of 2 steps dense), then sparse
    assert stats["steps"] == {0: "dense", 1: "sparse"} and stats["fallbacks"] == {}
    sparse_events = [e for e in events if not e.dense]
    assert len(sparse_events) == 4 and len(events) == 8  # per chunk: a dense and a sparse step, two calls (CFG)
    for e in sparse_events:
        assert e.text_len == HISTORY and (e.grid.frames, e.grid.height, e.grid.width) == (2, 8, 32)
        layout = e.tiles.layout
        history_tiles = torch.arange(layout.num_tiles) >= layout.num_video_tokens // layout.tile_size
        kept = e.tiles.kept
        assert kept[..., history_tiles, :].all() and kept[..., :, history_tiles].all()
        assert e.tiles.mean_sparsity == 0.75  # the chunk's own 4 tiles: the best key tile of each query row kept

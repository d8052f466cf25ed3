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
    # every chunk its own warm-up (1 of 2 steps dense), then sparse; the statistics cover both chunks
    assert stats["steps"] == {0: "dense", 1: "sparse", 2: "dense", 3: "sparse"} and stats["fallbacks"] == {}
    assert [(s["section"], s["steps"]) for s in stats["sections"]] == [(0, {0: "dense", 1: "sparse"}),
                                                                      (1, {0: "dense", 1: "sparse"})]
    sparse_events = [e for e in events if not e.dense]
    assert len(sparse_events) == 4 and len(events) == 8  # per chunk: a dense and a sparse step, two calls (CFG)
    assert stats["sparse_calls"] == 4 and stats["dense_calls"] == 4 and stats["forwards"] == 8
    for e in sparse_events:
        assert e.text_len == HISTORY and (e.grid.frames, e.grid.height, e.grid.width) == (2, 8, 32)
        layout = e.tiles.layout
        history_tiles = torch.arange(layout.num_tiles) >= layout.num_video_tokens // layout.tile_size
        kept = e.tiles.kept
        assert kept[..., history_tiles, :].all() and kept[..., :, history_tiles].all()
        assert e.tiles.mean_sparsity == 0.75  # the chunk's own 4 tiles: the best key tile of each query row kept


def test_statistics_count_every_chunk_and_the_next_call_starts_fresh(pipe):
    # the schedule restarts per chunk, the statistics only per pipeline call: all chunks' calls, chunk by chunk,
    # each equal to what the transformer ran in that chunk (forwards x the one sparse-able layer)
    forwards = []
    handle = pipe.transformer.register_forward_pre_hook(lambda m, a: forwards.append(pipe.scheduler.timesteps))
    try:
        with draft_attention_enabled(pipe, sparsity=0.5, dense_steps_fraction=0.5):
            run(pipe, steps=2)
            stats = get_draft_stats(pipe).summary()
            chunks = [sum(t is k for t in forwards) for k in dict.fromkeys(forwards)]
            forwards.clear()
            pipe(**tiny_prompt_kwargs(pipe), **dict(TWO_CHUNKS, num_frames=5), num_inference_steps=3,
                 output_type="latent", generator=torch.Generator().manual_seed(0))  # one chunk
            again = get_draft_stats(pipe).summary()
    finally:
        handle.remove()
    assert chunks == [4, 4] and len(stats["layer_sparsity"]) == 1
    assert stats["forwards"] == sum(chunks) and stats["sparse_calls"] + stats["dense_calls"] == sum(chunks)
    assert [s["forwards"] for s in stats["sections"]] == chunks
    assert [s["sparse_calls"] + s["dense_calls"] for s in stats["sections"]] == chunks
    assert stats["sparse_calls"] == sum(s["sparse_calls"] for s in stats["sections"]) == 4
    assert stats["mean_sparsity"] == pytest.approx(sum(s["mean_sparsity"] for s in stats["sections"]) / 2)
    # the second call: one chunk of 3 steps (2 dense), nothing of the first call
    assert again["forwards"] == len(forwards) == 6 and again["sparse_calls"] + again["dense_calls"] == 6
    assert again["steps"] == {0: "dense", 1: "dense", 2: "sparse"}
    assert [(s["section"], s["forwards"]) for s in again["sections"]] == [(0, 6)]

"""HunyuanVideo FramePack (models/hunyuan_video_framepack.py): the current window sparse between the dense history
prefix and the dense image + text tokens, every section with its own warm-up steps through the real pipeline, and a
batch with padded prompts (the model's key mask, moved with the window) equal to dense at sparsity 0. (The shared
family checks reach FramePack from the family table: tests/test_family_conformance.py.)"""

import torch

from draftattention_diffusers import draft_attention_enabled, get_draft_processor, get_draft_stats
from draftattention_diffusers.models.hunyuan_video_framepack import (HunyuanVideoFramepackFamily, build_tiny_framepack,
                                                                     prefix_tokens)
from draftattention_diffusers.tiny import tiny_prompt_kwargs

# the prefix of the tiny call: clean 2 x 8 x 32, 2x history 1 x 4 x 16, 4x history 4 x 2 x 8 tokens
PREFIX = 2 * 8 * 32 + 1 * 4 * 16 + 4 * 2 * 8
IMAGE_TOKENS = 16  # the tiny SigLIP: 32x32 pixels in 8x8 patches


def test_prefix_tokens_follow_the_history_patch_embedder():
    x = lambda t, h, w: torch.zeros(1, 4, t, h, w)  # noqa: E731
    given = dict(latents_clean=x(2, 16, 64), indices_latents_clean=torch.arange(2),
                 latents_history_2x=x(2, 16, 64), indices_latents_history_2x=torch.arange(2),
                 latents_history_4x=x(16, 16, 64), indices_latents_history_4x=torch.arange(16))
    assert prefix_tokens(given) == PREFIX
    # 2x and 4x pad to their kernels (replicate), the clean embedder floors: 720x1280 at 8x VAE
    big = dict(latents_clean=x(2, 90, 160), indices_latents_clean=0, latents_history_2x=x(2, 90, 160),
               indices_latents_history_2x=0, latents_history_4x=x(16, 90, 160), indices_latents_history_4x=0)
    assert prefix_tokens(big) == 2 * 45 * 80 + 1 * 23 * 40 + 4 * 12 * 20
    assert prefix_tokens(dict(big, indices_latents_history_4x=None)) == 2 * 45 * 80 + 1 * 23 * 40  # not packed


def test_every_section_has_its_own_warm_up_and_only_the_window_is_sparse():
    pipe = build_tiny_framepack(num_layers=2)
    # 9 frames in windows of 2 latent frames (5 frames): two sections, each denoised from noise in 2 steps
    kw = dict(tiny_prompt_kwargs(pipe), image=HunyuanVideoFramepackFamily.tiny_call["image"], height=128,
              width=512, num_frames=9, latent_window_size=2, num_inference_steps=2, output_type="latent",
              generator=torch.Generator().manual_seed(0))
    base = pipe(**kw).frames[-1]  # (the history after each section; the last is the whole video)
    seen = []
    with draft_attention_enabled(pipe, sparsity=0.5, dense_steps_fraction=0.5) as p:
        get_draft_processor(p).add_observer(
            lambda e: seen.append((e.step, e.num_steps, e.dense, (e.grid.frames, e.grid.height, e.grid.width),
                                   e.text_len, e.q.shape[1])))
        out = pipe(**dict(kw, generator=torch.Generator().manual_seed(0))).frames[-1]
        stats = get_draft_stats(p).summary()
    assert stats["fallbacks"] == {}
    # two sections x two steps x two blocks: per section step 0 dense, step 1 sparse
    assert [(s, n, d) for s, n, d, *_ in seen] == [(0, 2, True)] * 2 + [(1, 2, False)] * 2 + \
        [(0, 2, True)] * 2 + [(1, 2, False)] * 2
    window = 2 * 8 * 32
    assert {(g, t, s) for *_, g, t, s in seen} == {((2, 8, 32), PREFIX + IMAGE_TOKENS + 16,
                                                     window + PREFIX + IMAGE_TOKENS + 16)}
    assert not torch.equal(out, base)


def test_statistics_cover_every_section_of_the_call_and_the_next_call_starts_fresh():
    # the schedule restarts per section (its own warm-up), the statistics do not: after a call of two sections they
    # count both sections' calls, section by section; the next call (one section) starts from nothing
    pipe = build_tiny_framepack(num_layers=2)
    kw = dict(tiny_prompt_kwargs(pipe), image=HunyuanVideoFramepackFamily.tiny_call["image"], height=128,
              width=512, latent_window_size=2, num_inference_steps=2, output_type="latent")
    forwards, events = [], []
    pipe.transformer.register_forward_pre_hook(lambda m, a: forwards.append(1))
    with draft_attention_enabled(pipe, sparsity=0.5, dense_steps_fraction=0.5) as p:
        get_draft_processor(p).add_observer(lambda e: events.append(e.dense))
        pipe(**kw, num_frames=9, generator=torch.Generator().manual_seed(0))  # two sections
        stats = get_draft_stats(p).summary()
        text = get_draft_stats(p).format()
        assert get_draft_stats(pipe).summary()["sparse_calls"] == stats["sparse_calls"]
        layers = len(stats["layer_sparsity"])  # the sparse-able layers: one dual-stream, one single-stream block
        first = dict(forwards=len(forwards), events=list(events))
        forwards.clear(), events.clear()
        pipe(**kw, num_frames=5, generator=torch.Generator().manual_seed(0))  # one section
        again = get_draft_stats(p).summary()
    assert layers == 2 and first["forwards"] == 4 and stats["fallbacks"] == {}
    assert stats["forwards"] == first["forwards"]
    assert stats["sparse_calls"] + stats["dense_calls"] == first["forwards"] * layers == len(first["events"])
    assert stats["sparse_calls"] == first["events"].count(False) == 4 and stats["dense_calls"] == 4
    assert stats["mean_sparsity"] == 0.5
    # each section its own warm-up, numbered through the call in "steps"
    assert stats["steps"] == {0: "dense", 1: "sparse", 2: "dense", 3: "sparse"}
    assert [s["section"] for s in stats["sections"]] == [0, 1]
    for sec in stats["sections"]:  # each section alone: 2 forwards, 1 dense and 1 sparse step of 2 layers
        assert sec["steps"] == {0: "dense", 1: "sparse"} and sec["forwards"] == 2
        assert sec["sparse_calls"] == sec["dense_calls"] == 2 and sec["mean_sparsity"] == 0.5
    assert "4 steps in 2 sections" in text and "section 1: 2 steps" in text
    assert again["forwards"] == len(forwards) == 2 and again["steps"] == {0: "dense", 1: "sparse"}
    assert again["sparse_calls"] + again["dense_calls"] == len(forwards) * layers == len(events)
    assert [s["section"] for s in again["sections"]] == [0]


def test_a_batch_with_padded_prompts_equals_dense_at_sparsity_zero():
    # batch 2: the model keeps the padded text and masks it ([B, 1, 1, S], ones up to each item's valid length);
    # moving the window to the front keeps that mask a key-padding suffix
    pipe = build_tiny_framepack(num_layers=2)
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    mask = torch.zeros(2, 16, dtype=torch.long)
    mask[0, :16], mask[1, :5] = 1, 1
    kw = dict(hidden_states=r(2, 4, 2, 16, 64), timestep=torch.tensor([500.0, 500.0]),
              encoder_hidden_states=r(2, 16, 32), encoder_attention_mask=mask, pooled_projections=r(2, 16),
              image_embeds=r(2, IMAGE_TOKENS, 32), indices_latents=torch.arange(3, 5),
              guidance=torch.tensor([6e3] * 2),
              latents_clean=r(2, 4, 2, 16, 64), indices_latents_clean=torch.tensor([0, 5]),
              latents_history_2x=r(2, 4, 2, 16, 64), indices_latents_history_2x=torch.arange(6, 8),
              latents_history_4x=r(2, 4, 16, 16, 64), indices_latents_history_4x=torch.arange(8, 24),
              return_dict=False)
    t = pipe.transformer
    with torch.no_grad():
        base = t(**kw)[0]
        with draft_attention_enabled(pipe, sparsity=0.0, dense_steps_fraction=0.0, backend="reference") as p:
            zero = t(**kw)[0]
            stats = get_draft_stats(p).summary()
        with draft_attention_enabled(pipe, sparsity=0.5, dense_steps_fraction=0.0) as p:
            sparse = t(**kw)[0]
            assert get_draft_stats(p).summary()["fallbacks"] == {}
    assert stats["fallbacks"] == {} and stats["sparse_calls"] == 2
    assert (zero - base).abs().max().item() <= 1e-4 * max(1.0, base.abs().max().item())
    assert not torch.equal(sparse, base)

"""Wan-Animate (``WanAnimateTransformer3DModel``): the shared family checks on a tiny ``WanAnimatePipeline`` (the family
has no tiny variant: the command line cannot pass its pose and face videos), the face adapter kept dense, and
Wan-Animate-2 refused with its reason."""

import pytest
import test_family_conformance as conformance
import torch

from draftattention_diffusers import (DraftAttnProcessor, disable_draft_attention, draft_attention_enabled,
                                      enable_draft_attention, get_draft_stats)
from draftattention_diffusers.models import family_for, require_family
from draftattention_diffusers.models.base import count_hooks
from draftattention_diffusers.models.wan_animate import WanAnimateFamily, build_tiny_wan_animate, tiny_animate_inputs
from draftattention_diffusers.tiny import tiny_prompt_kwargs


@pytest.fixture(scope="module")
def case():
    pipe = build_tiny_wan_animate()
    family = family_for(pipe.transformer)
    assert isinstance(family, WanAnimateFamily)
    return family, pipe


@pytest.mark.slow  # ~30 s on two shared cores: the pipeline VAE-encodes its image and pose video and decodes every
# segment (output_type="latent" too), ten pipeline calls
def test_shared_family_checks_through_the_pipeline(case):
    conformance.test_the_tiny_grid_reorders(case)
    conformance.test_dense_schedule_and_disable_are_bit_identical(case)
    conformance.test_sparsity_zero_equals_dense_and_the_schedule(case)


def test_statistics_cover_every_segment_and_the_next_call_starts_fresh(case):
    # WanAnimatePipeline denoises segment by segment, setting new timesteps after each (the last one too): every
    # segment has its own warm-up, the statistics count every segment's calls, segment by segment, and they are
    # still the call's after it (not empty, not the last segment's); the next call starts from nothing
    _, pipe = case
    kw = dict(tiny_prompt_kwargs(pipe), output_type="latent")
    three = dict(tiny_animate_inputs(frames=13), segment_frame_length=5)  # 3 segments of 5 frames, 1 shared
    forwards = []
    handle = pipe.transformer.register_forward_pre_hook(lambda m, a: forwards.append(pipe.scheduler.timesteps))
    try:
        with draft_attention_enabled(pipe, sparsity=0.5, dense_steps_fraction=0.5):
            pipe(**kw, **three, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
            stats = get_draft_stats(pipe).summary()
            text = get_draft_stats(pipe).format()
            segments = [sum(t is k for t in forwards) for k in dict.fromkeys(forwards)]  # forwards per schedule
            first = len(forwards)
            forwards.clear()
            pipe(**kw, **tiny_animate_inputs(), num_inference_steps=3, generator=torch.Generator().manual_seed(0))
            again = get_draft_stats(pipe).summary()
            pipe.scheduler.set_timesteps(4)  # another schedule than the call's: never its statistics
            stale = get_draft_stats(pipe).summary()
    finally:
        handle.remove()
    layers = len(stats["layer_sparsity"])
    assert segments == [2, 2, 2] and layers == 2 and stats["fallbacks"] == {}
    assert stats["forwards"] == first == 6 and stats["sparse_calls"] + stats["dense_calls"] == first * layers
    assert stats["sparse_calls"] == stats["dense_calls"] == 6 and stats["mean_sparsity"] == pytest.approx(0.5)
    assert stats["steps"] == {0: "dense", 1: "sparse", 2: "dense", 3: "sparse", 4: "dense", 5: "sparse"}
    assert [s["section"] for s in stats["sections"]] == [0, 1, 2]
    for sec, n in zip(stats["sections"], segments):  # each segment its own warm-up: 1 dense and 1 sparse step
        assert sec["steps"] == {0: "dense", 1: "sparse"} and sec["forwards"] == n
        assert sec["sparse_calls"] == sec["dense_calls"] == n // 2 * layers
    assert "6 steps in 3 sections" in text and "section 2: 2 steps" in text
    # the second call: one segment of 3 steps (2 dense), nothing of the first call
    assert again["forwards"] == len(forwards) == 3 and again["steps"] == {0: "dense", 1: "dense", 2: "sparse"}
    assert again["sparse_calls"] + again["dense_calls"] == 3 * layers and again["sparse_calls"] == layers
    assert [(s["section"], s["forwards"]) for s in again["sections"]] == [(0, 3)]
    assert stale["forwards"] == 0 and stale["steps"] == {} and stale["sections"] == []


@pytest.fixture(scope="module")
def transformer_call(case):
    """The tiny transformer and one forward's inputs as WanAnimatePipeline makes them at the tiny call's size: the
    reference frame and a 5-frame segment (3 x 16 x 64 latents: 3 x 8 x 32 tokens), pose latents for frames 1.., 5
    face frames, 512 text and 17 CLIP image tokens."""
    _, pipe = case
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return pipe.transformer, dict(hidden_states=rnd(1, 36, 3, 16, 64), timestep=torch.tensor([700]),
                                  encoder_hidden_states=rnd(1, 512, 32), encoder_hidden_states_image=rnd(1, 17, 32),
                                  pose_hidden_states=rnd(1, 16, 2, 16, 64), face_pixel_values=rnd(1, 3, 5, 16, 16),
                                  return_dict=False)


def test_transformer_dense_disable_and_sparsity_zero(transformer_call):
    model, kw = transformer_call
    with torch.no_grad():
        base = model(**kw)[0]
        hooks = count_hooks(model)
        with draft_attention_enabled(model, dense_steps_fraction=1.0):
            assert torch.equal(model(**kw)[0], base)
        with draft_attention_enabled(model, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
            zero = model(**kw)[0]
            stats = get_draft_stats(model).summary()
        enable_draft_attention(model, sparsity=0.5, dense_steps_fraction=0.0)
        sparse = model(**kw)[0]
        disable_draft_attention(model)
        again = model(**kw)[0]
    assert stats["sparse_calls"] == 2 and stats["fallbacks"] == {}
    assert (zero - base).abs().max().item() <= 1e-4 * max(1.0, base.abs().max().item())
    assert not torch.equal(sparse, base) and torch.equal(again, base) and count_hooks(model) == hooks


def test_face_adapter_keeps_its_processor_and_runs_dense(case, transformer_call):
    family, _ = case
    model, kw = transformer_call
    calls = []
    with draft_attention_enabled(model, sparsity=0.5, dense_steps_fraction=0.0):
        roles = family.roles(model, dict(model.attn_processors))
        face = [m for m, r in roles.items() if r.name.startswith("face_adapter.")]
        handles = [m.register_forward_hook(lambda m, a, o: calls.append(m)) for m in face]
        with torch.no_grad():
            model(**kw)
        stats = get_draft_stats(model).summary()
        for h in handles:
            h.remove()
    assert len(face) == 2 and len(calls) == 2  # one face adapter per block here, each called once
    assert all(not roles[m].video_self and type(roles[m].default_processor).__name__ ==
               "WanAnimateFaceBlockAttnProcessor" for m in face)
    assert set(stats["layer_sparsity"]) == {"blocks.0.attn1", "blocks.1.attn1"}
    assert stats["sparse_calls"] == 2 and stats["fallbacks"] == {}


def test_wan_animate_2_is_refused_with_its_reason():
    from diffusers import WanAnimate2Transformer3DModel

    model = WanAnimate2Transformer3DModel.__new__(WanAnimate2Transformer3DModel)
    torch.nn.Module.__init__(model)  # the class alone decides; no weights needed
    for refuse in (require_family, DraftAttnProcessor().attach):
        with pytest.raises(ValueError, match="does not support WanAnimate2Transformer3DModel: .*flex BlockMask"):
            refuse(model)

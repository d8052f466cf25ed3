"""The routed attention call (integration/routing.py): the model's own processor runs and only its
dispatch_attention_fn call on video self-attention becomes draft attention, with no effect on anything else."""

import warnings

import pytest
import torch
from diffusers.models import attention_dispatch
from diffusers.models.transformers import transformer_wan
from diffusers.models.transformers.transformer_ltx import LTXVideoAttnProcessor
from diffusers.models.transformers.transformer_wan import WanAttnProcessor
from pipeline_utils import max_diff, run, run_tiny_call

from draftattention_diffusers import (DraftAttentionWarning, draft_attention_enabled, get_draft_processor,
                                      get_draft_stats)
from draftattention_diffusers.integration import routing
from draftattention_diffusers.tiny import build_tiny_pipeline


def test_a_routed_copy_shares_the_code_and_changes_only_the_dispatcher():
    calls = []
    copy = routing.routed_call(WanAttnProcessor, lambda *a, **k: calls.append(a) or a[0])
    assert copy.__code__ is WanAttnProcessor.__call__.__code__
    assert copy.__globals__["dispatch_attention_fn"] is not attention_dispatch.dispatch_attention_fn
    assert transformer_wan.dispatch_attention_fn is attention_dispatch.dispatch_attention_fn  # module untouched
    assert "__name__" not in copy.__globals__  # torch.compile guards on this dict, not on the module


def test_other_transformers_in_the_process_are_untouched():
    a, b = build_tiny_pipeline("wan"), build_tiny_pipeline("wan", seed=1)
    base, _ = run(b, steps=2)
    with draft_attention_enabled(a, sparsity=0.5, dense_steps_fraction=0.0):
        run(a, steps=2)
        assert get_draft_stats(a).summary()["sparse_calls"] > 0
        again, _ = run(b, steps=2)
        assert transformer_wan.dispatch_attention_fn is attention_dispatch.dispatch_attention_fn
    assert torch.equal(again, base)
    assert all(type(p) is WanAttnProcessor for p in b.transformer.attn_processors.values())


def test_unroutable_processor_runs_dense_visibly(monkeypatch):
    """A diffusers release whose processor attends another way: found at enable, warned, dense, in the statistics."""
    pipe = build_tiny_pipeline("wan")
    base, _ = run(pipe, steps=2)
    monkeypatch.setattr(routing, "unroutable_reason", lambda cls: f"{cls.__name__} attends differently (test)")
    with pytest.warns(DraftAttentionWarning, match="attends differently"):
        with draft_attention_enabled(pipe, sparsity=0.5, dense_steps_fraction=0.0):
            out, _ = run(pipe, steps=2)
            stats = get_draft_stats(pipe).summary()
    assert max_diff(out, base) < 1e-5  # the model's own processor ran (on tokens in tile order: float rounding)
    assert stats["sparse_calls"] == 0 and stats["dense_calls"] > 0
    assert any("attends differently" in m for m in stats["fallbacks"])


def test_a_processor_call_without_a_dispatcher_call_is_counted_dense(monkeypatch):
    pipe = build_tiny_pipeline("wan")
    base, _ = run(pipe, steps=2)
    with draft_attention_enabled(pipe, sparsity=0.5, dense_steps_fraction=0.0):
        proc = get_draft_processor(pipe)
        proc._routers[WanAttnProcessor] = WanAttnProcessor.__call__  # as if the copy reached diffusers' dispatcher
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DraftAttentionWarning)
            out, _ = run(pipe, steps=2)
        stats = get_draft_stats(pipe).summary()
    assert max_diff(out, base) < 1e-5
    assert stats["sparse_calls"] == 0 and any("made no dispatch_attention_fn call" in m for m in stats["fallbacks"])


@pytest.mark.parametrize("kwargs", [dict(is_causal=True), dict(dropout_p=0.1), dict(enable_gqa=True)])
def test_calls_draft_attention_cannot_compute_go_back_to_diffusers(kwargs):
    pipe = build_tiny_pipeline("wan")
    with draft_attention_enabled(pipe, sparsity=0.5, dense_steps_fraction=0.0):
        run(pipe, steps=1)
        proc = get_draft_processor(pipe)
        attn = pipe.transformer.blocks[0].attn1
        _, family, role = attn.__dict__["_draftattention_role"]
        seen = []
        original = lambda q, k, v, **kw: seen.append(kw) or torch.zeros_like(q)  # noqa: E731
        q = torch.randn(1, proc.grid.num_tokens, 2, 32)
        proc._routing = (attn, family, role, False, None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DraftAttentionWarning)
            out = proc._route(original, q, q, q, **kwargs)
        fallbacks = get_draft_stats(pipe).summary()["fallbacks"]
    assert torch.equal(out, torch.zeros_like(q)) and seen and all(seen[0][k] == v for k, v in kwargs.items())
    assert any("asks for" in m for m in fallbacks)


def test_a_second_dispatcher_call_of_one_processor_call_is_the_models():
    pipe = build_tiny_pipeline("wan")
    with draft_attention_enabled(pipe, sparsity=0.5, dense_steps_fraction=0.0):
        run(pipe, steps=1)
        proc = get_draft_processor(pipe)
        seen = []
        q = torch.randn(1, proc.grid.num_tokens, 2, 32)
        proc._routing = None  # already taken by the first call
        proc._route(lambda *a, **k: seen.append(k) or q, q, q, q, attn_mask=None)
    assert len(seen) == 1 and max_diff(q, q) == 0


@pytest.mark.parametrize("position,start", [("leading", None), ("trailing", None), ("trailing", 5)])
def test_dense_tokens_around_the_video_at_sparsity_zero(position, start, monkeypatch):
    """[before | video | after] with padded text keys (at the end of `after`, or of `before` when the video is the
    tail): draft attention at sparsity 0 equals masked dense attention, wherever the family says the video tokens
    are (text_position, or a video_start per forward)."""
    import dataclasses

    from draftattention_diffusers.core import VideoGrid

    pipe = build_tiny_pipeline("wan")
    with draft_attention_enabled(pipe, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        run(pipe, steps=1)
        proc = get_draft_processor(pipe)
        attn = pipe.transformer.blocks[0].attn1
        _, family, role = attn.__dict__["_draftattention_role"]
        family = dataclasses.replace(family) if dataclasses.is_dataclass(family) else type(family)()
        monkeypatch.setattr(type(family), "text_position", position)
        proc.grid = VideoGrid(2, 8, 32)
        n = proc.grid.num_tokens
        before, after = (9, 0) if position == "leading" else (5 if start else 0, 7)
        proc._video_start = start
        seq = before + n + after
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, seq, 2, 32, generator=g) for _ in range(3))
        keep = torch.ones(1, 1, 1, seq, dtype=torch.bool)
        pad_end = seq if after else before
        keep[..., pad_end - 3:pad_end] = False  # padded text keys
        proc._routing = (attn, family, role, False, None)
        out = proc._route(None, q, k, v, attn_mask=keep)
        stats = get_draft_stats(pipe).summary()
    ref = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)),
                                                           attn_mask=keep).transpose(1, 2)
    assert max_diff(out, ref) < 1e-5 and stats["fallbacks"] == {}


class _GainProcessor(LTXVideoAttnProcessor):
    """A model processor with a keyword of its own (as LTX-2.3's ``perturbation_mask``): blocks pass it by name."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 gain=1.0):
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb) * gain


def test_keywords_a_model_processor_takes_are_passed_on_and_others_dropped():
    """diffusers' attention modules (LTX-Video's here) pass a processor only the keywords its signature names.
    Cross-attention's processor takes ``gain`` (passed by name, as a block would): draft attention's processor must
    pass it on. Video self-attention's takes no ``perturbation_mask`` (a keyword draft attention's processor names
    for LTX-2.3): it is dropped there, as diffusers drops it without draft attention, instead of failing."""
    pipe = build_tiny_pipeline("ltx")
    plain = run_tiny_call(pipe, steps=2)
    for block in pipe.transformer.transformer_blocks:
        block.attn2.set_processor(_GainProcessor())
        block.attn2.register_forward_pre_hook(lambda m, a, kw: (a, {**kw, "gain": 0.5}), with_kwargs=True)
        block.attn1.register_forward_pre_hook(lambda m, a, kw: (a, {**kw, "perturbation_mask": None}),
                                              with_kwargs=True)
    base = run_tiny_call(pipe, steps=2)
    assert max_diff(base, plain) > 1e-3  # the keyword changes the result
    with draft_attention_enabled(pipe, dense_steps_fraction=1.0):
        dense = run_tiny_call(pipe, steps=2)
    with draft_attention_enabled(pipe, sparsity=0.5, dense_steps_fraction=0.0):
        run_tiny_call(pipe, steps=2)
        assert get_draft_stats(pipe).summary()["sparse_calls"] > 0
    assert torch.equal(dense, base)

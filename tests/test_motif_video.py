"""Motif-Video (models/motif_video.py): which modules are video self-attention, padded prompts (a key-padding suffix
mask), the DDT decoder blocks (the encoder's video tokens trailing), a mask that is not a suffix running dense
visibly, and image-to-video through its pipeline. (The shared family checks reach Motif-Video from the family table:
tests/test_family_conformance.py.)"""

import torch

from draftattention_diffusers import (disable_draft_attention, draft_attention_enabled, enable_draft_attention,
                                      get_draft_stats)
from draftattention_diffusers.integration.lifecycle import installation
from draftattention_diffusers.models.motif_video import build_tiny_motif_video
from draftattention_diffusers.tiny import tiny_prompt_kwargs

SIZE = dict(height=128, width=512, num_frames=5)  # 2 latent frames of 8 x 32 tokens


def run(pipe, steps=2, **prompt):
    kw = dict(tiny_prompt_kwargs(pipe, **prompt), **SIZE, num_inference_steps=steps, output_type="latent",
              generator=torch.Generator().manual_seed(0))
    return pipe(**kw).frames


def close(a, b):
    return (a.double() - b.double()).abs().max().item() <= 1e-4 * max(1.0, b.abs().max().item())


def test_dual_single_and_decoder_self_attention_are_video_the_cross_attention_is_not():
    pipe = enable_draft_attention(build_tiny_motif_video(num_layers=2, decoder_layers=1))
    roles = {r.name: (r.video_self, r.block_index) for r in installation(pipe.transformer).processor._roles.values()}
    disable_draft_attention(pipe)
    p = "transformer."
    assert {n: i for n, (v, i) in roles.items() if v} == {
        f"{p}transformer_blocks.0.attn": 0, f"{p}single_transformer_blocks.0.attn": 1,
        f"{p}single_transformer_blocks.1.attn": 2}  # the last single block is the DDT decoder's
    assert roles[f"{p}transformer_blocks.0.cross_attn"] == (False, None)
    assert roles[f"{p}single_transformer_blocks.0.cross_attn"] == (False, None)


def test_padded_prompt_and_decoder_blocks_sparsity_zero_equals_dense():
    # a prompt of 5 real tokens in 16 slots (key-padding suffix mask), and a DDT decoder block whose trailing dense
    # tokens are the encoder's video tokens (no mask)
    pipe = build_tiny_motif_video(num_layers=2, decoder_layers=1)
    base = run(pipe, valid_len=5)
    with draft_attention_enabled(pipe, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        zero = run(pipe, valid_len=5)
        stats = get_draft_stats(pipe).summary()
    assert stats["fallbacks"] == {} and stats["sparse_calls"] == 2 * 2 * 3  # 2 steps, CFG, 3 blocks
    assert close(zero, base)
    with draft_attention_enabled(pipe, sparsity=0.5, dense_steps_fraction=0.0):
        sparse = run(pipe, valid_len=5)
        assert get_draft_stats(pipe).summary()["fallbacks"] == {}
    assert not torch.equal(sparse, base)


def test_a_mask_that_is_not_a_key_padding_suffix_runs_dense_visibly():
    pipe = build_tiny_motif_video(num_layers=2)
    t = pipe.transformer
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(1, 16, dtype=torch.bool)
    mask[:, 3] = False  # a hole inside the prompt: not a suffix of padding
    kw = dict(hidden_states=torch.randn(1, 33, 2, 16, 64, generator=g), timestep=torch.tensor([500.0]),
              encoder_hidden_states=torch.randn(1, 16, 32, generator=g), encoder_attention_mask=mask,
              return_dict=False)
    with torch.no_grad():
        base = t(**kw)[0]
        with draft_attention_enabled(pipe, sparsity=0.5, dense_steps_fraction=0.0) as p:
            out = t(**kw)[0]
            fallbacks = get_draft_stats(p).summary()["fallbacks"]
    assert any("not a key-padding suffix" in f for f in fallbacks), fallbacks
    assert close(out, base)


def test_image_to_video_is_sparse_through_its_pipeline():
    from PIL import Image

    pipe = build_tiny_motif_video(num_layers=2, image_to_video=True)
    image = Image.fromarray((torch.rand(128, 512, 3, generator=torch.Generator().manual_seed(1)) * 255)
                            .to(torch.uint8).numpy())
    kw = dict(tiny_prompt_kwargs(pipe), image=image, prompt=None, **SIZE, num_inference_steps=2,
              output_type="latent")
    base = pipe(**kw, generator=torch.Generator().manual_seed(0)).frames
    with draft_attention_enabled(pipe, sparsity=0.5, dense_steps_fraction=0.5):
        out = pipe(**kw, generator=torch.Generator().manual_seed(0)).frames
        stats = get_draft_stats(pipe).summary()
    assert stats["steps"] == {0: "dense", 1: "sparse"} and stats["fallbacks"] == {} and stats["sparse_calls"] == 2 * 2
    assert not torch.equal(out, base)

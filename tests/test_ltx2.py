"""LTX-2 (audio + video), added as one module (models/ltx2.py) plus one table line: only video self-attention
sparse; audio, text and audio-video attention (separate query and key RoPE) dense; tokens in tile order once per
forward, the video side of the audio-video RoPE included. Every check compares with the same pipeline or
transformer without draft attention, on the video and the audio output."""

import pytest
import torch
from pipeline_utils import max_diff

from draftattention_diffusers import (disable_draft_attention, draft_attention_enabled, enable_draft_attention,
                                      get_draft_stats)
from draftattention_diffusers.models.base import count_hooks
from draftattention_diffusers.tiny import build_tiny_pipeline, tiny_prompt_kwargs

# 32x / 8x VAE: 256 x 1280 pixels, 9 frames -> 2 x 8 x 40 tokens (two 8x16 regions and an 8x8 edge strip per frame:
# the tile order moves tokens across frames)
SIZE = dict(height=256, width=1280, num_frames=9)
TOKENS = 2 * 8 * 40
# CFG only: STG and modality guidance would add transformer calls per step (and the tiny model has no block 28)
GUIDANCE = dict(guidance_scale=3.0, stg_scale=0.0, modality_scale=1.0, audio_guidance_scale=3.0, audio_stg_scale=0.0,
                audio_modality_scale=1.0, spatio_temporal_guidance_blocks=None)


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline("ltx2")


def run(p, steps=2, **kwargs):
    """(video latents, audio latents, video latents after each step)."""
    per_step = []

    def keep(_, i, t, cb):
        per_step.append(cb["latents"].clone())
        return cb

    out = p(**tiny_prompt_kwargs(p), **SIZE, num_inference_steps=steps, output_type="latent",
            generator=torch.Generator().manual_seed(0), callback_on_step_end=keep, **{**GUIDANCE, **kwargs})
    return out.frames, out.audio, per_step


def test_dense_schedule_and_disable_are_bit_identical(pipe):
    video, audio, _ = run(pipe)
    hooks = count_hooks(pipe.transformer)
    with draft_attention_enabled(pipe, dense_steps_fraction=1.0):
        dense = run(pipe)
        assert get_draft_stats(pipe).summary()["sparse_calls"] == 0
    enable_draft_attention(pipe, sparsity=0.5, dense_steps_fraction=0.0)
    sparse = run(pipe)
    disable_draft_attention(pipe)
    again = run(pipe)
    for out in (dense, again):
        assert torch.equal(out[0], video) and torch.equal(out[1], audio)
    assert not torch.equal(sparse[0], video) and not torch.equal(sparse[1], audio)  # audio hears the video (v2a)
    assert count_hooks(pipe.transformer) == hooks


def test_sparsity_zero_equals_dense_and_only_video_self_attention_is_sparse(pipe):
    video, audio, _ = run(pipe)
    with draft_attention_enabled(pipe, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        v, a, _ = run(pipe)
    assert max_diff(v, video) < 1e-4 and max_diff(a, audio) < 1e-4
    _, _, base_steps = run(pipe, steps=4)
    with draft_attention_enabled(pipe, sparsity=0.75, dense_steps_fraction=0.5):
        _, _, steps = run(pipe, steps=4)
        stats = get_draft_stats(pipe).summary()
    assert stats["steps"] == {0: "dense", 1: "dense", 2: "sparse", 3: "sparse"} and stats["fallbacks"] == {}
    assert set(stats["layer_sparsity"]) == {f"transformer.transformer_blocks.{i}.attn1" for i in (0, 1)}
    assert stats["mean_sparsity"] > 0.5
    assert all(max_diff(a, b) < 1e-5 for a, b in zip(steps[:2], base_steps[:2]))  # dense, in tile order


def test_image_to_video_per_token_timesteps(pipe):
    from diffusers import LTX2ImageToVideoPipeline

    p = LTX2ImageToVideoPipeline(**pipe.components)
    image = torch.rand(1, 3, SIZE["height"], SIZE["width"], generator=torch.Generator().manual_seed(0))
    shapes = []
    handle = p.transformer.register_forward_pre_hook(lambda m, a, k: shapes.append(k["timestep"].shape),
                                                     with_kwargs=True)
    video, audio, _ = run(p, image=image, image_crf=0)
    handle.remove()
    assert shapes[0] == (2, TOKENS)  # one timestep per video token (0 on the given first frame)
    with draft_attention_enabled(p, dense_steps_fraction=1.0):
        v, a, _ = run(p, image=image, image_crf=0)
    assert torch.equal(v, video) and torch.equal(a, audio)
    with draft_attention_enabled(p, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        v, a, _ = run(p, image=image, image_crf=0)
        stats = get_draft_stats(p).summary()
    assert stats["fallbacks"] == {} and stats["sparse_calls"] > 0
    assert max_diff(v, video) < 1e-4 and max_diff(a, audio) < 1e-4


def test_video_self_attention_mask_runs_dense_visibly_and_keyframe_marker(pipe):
    """A ``[B, S, S]`` video self-attention mask (IC-LoRA) is not a key-padding mask: those calls run dense with the
    mask (in tile order, mask permuted on both axes), listed as fallbacks. The keyframe marker ``[B, S, 1]`` is
    permuted with the tokens. Grid from num_frames / height / width (no video_coords)."""
    from diffusers import LTX2VideoTransformer3DModel

    torch.manual_seed(0)
    model = LTX2VideoTransformer3DModel.from_config(pipe.transformer.config, num_layers=1,
                                                    use_keyframes_abs_pos_embedding=True).eval()
    g = torch.Generator().manual_seed(1)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    with torch.no_grad():
        model.keyframes_abs_pos_embedding.copy_(rnd(1, model.keyframes_abs_pos_embedding.shape[1]))
    mask = (torch.rand(1, TOKENS, TOKENS, generator=g) > 0.3).float().maximum(torch.eye(TOKENS))
    marker = torch.zeros(1, TOKENS, 1)
    marker[:, :320] = 1  # first latent frame
    kw = dict(hidden_states=rnd(1, TOKENS, 8), audio_hidden_states=rnd(1, 9, 4), encoder_hidden_states=rnd(1, 8, 32),
              audio_encoder_hidden_states=rnd(1, 8, 32), timestep=torch.tensor([500.0]), num_frames=2, height=8,
              width=40, audio_num_frames=9, video_self_attention_mask=mask, video_keyframes_mask=marker,
              return_dict=False)
    with torch.no_grad():
        video, audio = model(**kw)
        with draft_attention_enabled(model, sparsity=0.5, dense_steps_fraction=0.0):
            v, a = model(**kw)
            stats = get_draft_stats(model).summary()
            unmasked = model(**{**kw, "video_self_attention_mask": None})
            unmasked_stats = get_draft_stats(model).summary()
    assert max_diff(v, video) < 1e-5 and max_diff(a, audio) < 1e-5
    assert stats["sparse_calls"] == 0 and any("not a key-padding suffix" in m for m in stats["fallbacks"])
    assert unmasked_stats["sparse_calls"] == 1 and not torch.equal(unmasked[0], video)


def test_condition_pipeline_keyframe_tokens_stay_dense_behind_the_video(pipe):
    """LTX2ConditionPipeline: a condition at latent frame 0 replaces tokens, one at a later latent index is appended
    behind the video grid as keyframe tokens (with their own coords and timesteps). The grid is the head of the
    sequence and the keyframe tokens stay dense and in place: sparsity 0 equals the model; without this every call
    fell back to dense ("the video token grid of this forward is unknown")."""
    from diffusers import LTX2ConditionPipeline
    from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition

    p = LTX2ConditionPipeline(**pipe.components)
    image = torch.rand(1, 3, SIZE["height"], SIZE["width"], generator=torch.Generator().manual_seed(0))
    conditions = [LTX2VideoCondition(frames=image, index=0, crf=0), LTX2VideoCondition(frames=image, index=1, crf=0)]
    shapes = []
    handle = p.transformer.register_forward_pre_hook(lambda m, a, k: shapes.append(k["hidden_states"].shape),
                                                     with_kwargs=True)
    video, audio, _ = run(p, conditions=conditions)
    handle.remove()
    assert shapes[0][1] == TOKENS + TOKENS // 2  # one latent frame of keyframe tokens appended
    hooks = count_hooks(p.transformer)
    with draft_attention_enabled(p, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        exact = run(p, conditions=conditions)
        stats = get_draft_stats(p).summary()
    assert stats["fallbacks"] == {} and stats["sparse_calls"] == 4 and stats["dense_calls"] == 0
    assert max_diff(exact[0], video) < 1e-4 and max_diff(exact[1], audio) < 1e-4
    with draft_attention_enabled(p, sparsity=0.5, dense_steps_fraction=0.0):
        sparse = run(p, conditions=conditions)
        stats = get_draft_stats(p).summary()
    assert stats["fallbacks"] == {} and stats["mean_sparsity"] > 0.3 and not torch.equal(sparse[0], video)
    assert count_hooks(p.transformer) == hooks


@pytest.fixture(scope="module")
def pipe23():
    return build_tiny_pipeline("ltx2.3")


# classifier-free guidance and STG on block 1: two forwards a step, the second with every item perturbed
STG = dict(GUIDANCE, stg_scale=1.0, audio_stg_scale=1.0, spatio_temporal_guidance_blocks=[1])


def test_ltx23_stg_arguments_reach_the_model_processor(pipe23):
    """LTX-2.3 / 2.5 (perturbed attention, gated attention, prompt AdaLN) pass STG's perturbation_mask and
    all_perturbed to the processors by name: draft attention hands them on, so STG skips block 1's attention in the
    perturbed pass exactly as without draft attention (if they were dropped, that pass would attend and sparsity 0
    would not equal the model). Those skipped calls are not counted."""
    from diffusers.models.transformers.transformer_ltx2 import LTX2PerturbedAttnProcessor

    video, audio, _ = run(pipe23, **STG)
    plain, _, _ = run(pipe23)
    assert not torch.equal(plain, video)  # STG changes the result
    hooks = count_hooks(pipe23.transformer)
    with draft_attention_enabled(pipe23, dense_steps_fraction=1.0):
        dense = run(pipe23, **STG)
    with draft_attention_enabled(pipe23, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        exact = run(pipe23, **STG)
        stats = get_draft_stats(pipe23).summary()
    assert torch.equal(dense[0], video) and torch.equal(dense[1], audio)
    assert max_diff(exact[0], video) < 1e-4 and max_diff(exact[1], audio) < 1e-4
    # 2 steps x 2 forwards (CFG batch, STG pass) x 2 blocks, less block 1 in the 2 STG passes
    assert stats["forwards"] == 4 and stats["sparse_calls"] == 6 and stats["dense_calls"] == 0
    assert stats["fallbacks"] == {}
    with draft_attention_enabled(pipe23, sparsity=0.5, dense_steps_fraction=0.0):
        sparse = run(pipe23, **STG)
        stats = get_draft_stats(pipe23).summary()
    assert not torch.equal(sparse[0], video) and stats["mean_sparsity"] > 0.4 and stats["fallbacks"] == {}
    assert count_hooks(pipe23.transformer) == hooks
    assert all(isinstance(m.processor, LTX2PerturbedAttnProcessor)
               for n, m in pipe23.transformer.named_modules() if n.endswith(".attn1"))

"""diffusers integration on tiny random-weight pipelines (CPU, no downloads)."""

import pytest
import torch
from pipeline_utils import run as run_pipeline
from pipeline_utils import uncompile

from draftattention_diffusers import (DraftAttentionConfig, DraftAttentionWarning, DraftAttnProcessor,
                                      HunyuanVideoDraftAttnProcessor,
                                      WanDraftAttnProcessor, disable_draft_attention, draft_attention_enabled,
                                      enable_draft_attention, get_draft_processor, get_draft_stats)
from draftattention_diffusers.core import get_layout
from draftattention_diffusers.core.selection import tile_mask_to_token_mask
from draftattention_diffusers.integration import processor as processor_module
from draftattention_diffusers.integration.processor import num_dense_steps
from draftattention_diffusers.tiny import build_tiny_pipeline, tiny_prompt_kwargs

# 128 x 256 pixels -> 8 x 16 tokens per frame (one region); 9 frames -> 3 latent frames -> 3 tiles.
SIZE = dict(height=128, width=256, num_frames=9)


def run(pipe, steps=8, seed=0, size=SIZE, **kwargs):
    """Run a tiny pipeline; returns (final latents, latents after each step)."""
    return run_pipeline(pipe, steps, seed, size, **kwargs)


@pytest.fixture(scope="module", params=["wan", "hunyuan"])
def pipe(request):
    return build_tiny_pipeline(request.param)


@pytest.fixture(scope="module")
def wan():
    return build_tiny_pipeline("wan")


@pytest.fixture(scope="module")
def hunyuan():
    return build_tiny_pipeline("hunyuan")


def test_dense_schedule_matches_diffusers_default(pipe):  # (a)
    base, _ = run(pipe, steps=3)
    with draft_attention_enabled(pipe, sparsity=0.9, dense_steps_fraction=1.0):
        dense, _ = run(pipe, steps=3)
        assert get_draft_stats(pipe).summary()["sparse_calls"] == 0
    assert torch.equal(dense, base)


def test_sparsity_zero_through_our_path_matches_default(pipe):
    """Our own q/k/v + attention path (observer forces it) with every tile kept equals diffusers' processor."""
    base, _ = run(pipe, steps=2)
    with draft_attention_enabled(pipe, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        seen = []
        get_draft_processor(pipe).add_observer(lambda e: seen.append(e.dense))
        out, _ = run(pipe, steps=2)
    assert seen and not any(seen)
    torch.testing.assert_close(out, base, rtol=1e-4, atol=1e-4)


def test_enable_disable_is_bit_identical(pipe):  # (b)
    base, _ = run(pipe, steps=3)
    enable_draft_attention(pipe, sparsity=0.5, dense_steps_fraction=0.0)
    sparse, _ = run(pipe, steps=3)
    disable_draft_attention(pipe)
    again, _ = run(pipe, steps=3)
    assert not torch.equal(sparse, base)
    assert torch.equal(again, base)


@pytest.mark.parametrize("install", ["enable", "set_attn_processor"])
def test_warm_up_steps_equal_dense_then_differ(pipe, install):  # (c), CFG on for Wan
    kwargs = dict(guidance_scale=5.0) if "Wan" in type(pipe).__name__ else {}
    _, dense_steps = run(pipe, **kwargs)
    if install == "enable":
        enable_draft_attention(pipe, sparsity=0.5, dense_steps_fraction=0.25)
    else:
        pipe.transformer.set_attn_processor(DraftAttnProcessor(sparsity=0.5, dense_steps_fraction=0.25))
    try:
        _, sparse_steps = run(pipe, **kwargs)
        stats = get_draft_stats(pipe).summary()
    finally:
        if install == "enable":
            disable_draft_attention(pipe)
        else:
            get_draft_processor(pipe).detach()
            restore_defaults(pipe.transformer)
    assert [torch.equal(a, b) for a, b in zip(dense_steps, sparse_steps)] == [True] * 2 + [False] * 6
    assert stats["steps"] == {i: ("dense" if i < 2 else "sparse") for i in range(8)}
    assert stats["fallbacks"] == {}


def restore_defaults(transformer):
    from draftattention_diffusers.models import require_family

    roles = require_family(transformer).roles(transformer, {})
    transformer.set_attn_processor({f"{r.name}.processor": r.default_processor for r in roles.values()})


def test_dense_step_rounding():
    assert num_dense_steps(0.25, 50) == 13  # steps 0-12 dense, 13-49 sparse
    assert num_dense_steps(0.25, 8) == 2
    assert num_dense_steps(0.0, 50) == 0 and num_dense_steps(1.0, 50) == 50


def test_wan22_two_transformers_share_the_global_schedule():  # (d)
    pipe = build_tiny_pipeline("wan22")
    _, dense_steps = run(pipe, guidance_scale=4.0, guidance_scale_2=3.0)
    enable_draft_attention(pipe, sparsity=0.5, dense_steps_fraction=0.25)
    _, sparse_steps = run(pipe, guidance_scale=4.0, guidance_scale_2=3.0)
    stats = get_draft_stats(pipe).summary()
    disable_draft_attention(pipe)
    assert [torch.equal(a, b) for a, b in zip(dense_steps, sparse_steps)] == [True] * 2 + [False] * 6
    layers = stats["layer_sparsity"]
    assert any(n.startswith("transformer.") for n in layers) and any(n.startswith("transformer_2.") for n in layers)
    with pytest.raises(RuntimeError, match="not enabled"):
        get_draft_processor(pipe)


def test_hunyuan_padded_prompt_keys_are_never_attended(hunyuan):  # (e)
    kw = tiny_prompt_kwargs(hunyuan, text_len=16, valid_len=9)
    other = {k: v.clone() for k, v in kw.items()}
    other["prompt_embeds"][:, 9:] = torch.randn(1, 7, other["prompt_embeds"].shape[-1]) * 10
    with draft_attention_enabled(hunyuan, sparsity=0.5, dense_steps_fraction=0.0):
        a, _ = run(hunyuan, steps=3, **kw)
        assert get_draft_stats(hunyuan).summary()["sparse_calls"] > 0
        b, _ = run(hunyuan, steps=3, **other)
        stats = get_draft_stats(hunyuan).summary()
    assert torch.isfinite(a).all() and torch.equal(a, b)
    assert stats["fallbacks"] == {}


@pytest.mark.parametrize("pixels", [(240, 416), (480, 832)])  # 15 x 26 and 30 x 52 tokens per frame
def test_grids_that_regions_do_not_divide_run_sparse(wan, pixels):  # (f)
    size = dict(height=pixels[0], width=pixels[1], num_frames=5)
    with draft_attention_enabled(wan, sparsity=0.75, dense_steps_fraction=0.0):
        out, _ = run(wan, steps=2, size=size, guidance_scale=1.0)
        stats = get_draft_stats(wan).summary()
    assert torch.isfinite(out).all()
    assert stats["sparse_calls"] == 4 and stats["fallbacks"] == {}
    assert stats["mean_sparsity"] > 0.5


def test_hunyuan_odd_grid_with_text_runs_sparse(hunyuan):
    with draft_attention_enabled(hunyuan, sparsity=0.75, dense_steps_fraction=0.0):
        out, _ = run(hunyuan, steps=2, size=dict(height=240, width=416, num_frames=5),
                     **tiny_prompt_kwargs(hunyuan, valid_len=11))
        stats = get_draft_stats(hunyuan).summary()
    assert torch.isfinite(out).all() and stats["sparse_calls"] > 0 and stats["fallbacks"] == {}


@pytest.mark.parametrize("reorder", ["per_forward", "per_call"])
def test_sparse_layer_equals_reference_on_the_same_mask(pipe, monkeypatch, reorder):  # (g)
    calls = []
    real = processor_module.draft_attention

    def spy(q, k, v, grid, config, **kw):
        out, tiles = real(q, k, v, grid, config, **kw)
        calls.append((q, k, v, kw.get("text_len", 0), kw.get("key_lengths"), out, tiles, kw["in_tile_order"]))
        return out, tiles

    monkeypatch.setattr(processor_module, "draft_attention", spy)
    with draft_attention_enabled(pipe, sparsity=0.6, dense_steps_fraction=0.0, reorder=reorder):
        run(pipe, steps=1, size=dict(height=240, width=416, num_frames=5),
            **(tiny_prompt_kwargs(pipe, valid_len=12) if "Hunyuan" in type(pipe).__name__ else {}))
    assert calls
    assert all(c[-1] == (reorder == "per_forward") for c in calls)
    for q, k, v, text_len, key_lengths, out, tiles, in_tile_order in calls:
        lay = tiles.layout
        # independent: dense attention with the token mask of the kept tiles (mapped back to diffusers order
        # unless the transformer runs its tokens in tile order)
        token_mask = tile_mask_to_token_mask(tiles.kept, lay.tile_size, lay.seq_len)
        if not in_tile_order:
            token_mask = token_mask[:, :, lay.inv_perm][..., lay.inv_perm]
        B, S = q.shape[:2]
        if key_lengths is not None:
            token_mask &= (torch.arange(S).view(1, S) < key_lengths.view(B, 1)).view(B, 1, 1, S)
        s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * q.shape[-1] ** -0.5
        p = torch.softmax(s.masked_fill(~token_mask, float("-inf")), -1).nan_to_num(0.0)
        ref = torch.einsum("bhqk,bkhd->bqhd", p, v.double())
        assert (out.double() - ref).abs().max() < 1e-4


def test_per_forward_and_per_call_reordering_agree(pipe):
    size = dict(height=240, width=416, num_frames=5)
    outs = {}
    for reorder in ("per_forward", "per_call"):
        with draft_attention_enabled(pipe, sparsity=0.6, dense_steps_fraction=0.5, reorder=reorder):
            outs[reorder], _ = run(pipe, steps=2, size=size)
    torch.testing.assert_close(outs["per_forward"], outs["per_call"], rtol=1e-4, atol=1e-4)


def test_num_videos_per_prompt_two(pipe):  # (h)
    masks = []
    with draft_attention_enabled(pipe, sparsity=0.5, dense_steps_fraction=0.0):
        get_draft_processor(pipe).add_observer(lambda e: masks.append(e.tiles.kept))
        out, _ = run(pipe, steps=2, num_videos_per_prompt=2, size=dict(height=240, width=416, num_frames=5))
    assert out.shape[0] == 2 and torch.isfinite(out).all()
    assert masks and all(m.shape[0] == 2 for m in masks)
    assert any(not torch.equal(m[0], m[1]) for m in masks)  # each video gets its own mask


def test_dense_layers_stay_dense(wan):
    with draft_attention_enabled(wan, sparsity=0.5, dense_steps_fraction=0.0, dense_layers=(0,)):
        run(wan, steps=2, guidance_scale=1.0)
        stats = get_draft_stats(wan).summary()
    assert set(stats["layer_sparsity"]) == {"transformer.blocks.1.attn1"}
    assert stats["dense_calls"] == 2 and stats["sparse_calls"] == 2


def test_stats_reset_at_each_pipeline_call(wan):
    with draft_attention_enabled(wan, sparsity=0.5, dense_steps_fraction=0.5):
        run(wan, steps=4, guidance_scale=1.0)
        run(wan, steps=2, guidance_scale=1.0)
        stats = get_draft_stats(wan)
        s = stats.summary()
        text = stats.format()
    assert s["steps"] == {0: "dense", 1: "sparse"} and s["forwards"] == 2
    assert "1 dense: 0" in text and "1 sparse: 1" in text


def test_fused_projections(wan):
    base, _ = run(wan, steps=2)
    wan.transformer.fuse_qkv_projections()
    try:
        with draft_attention_enabled(wan, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
            out, _ = run(wan, steps=2)
    finally:
        wan.transformer.unfuse_qkv_projections()
    torch.testing.assert_close(out, base, rtol=1e-4, atol=1e-4)


def test_bare_transformer_without_step_runs_dense_visibly():
    pipe = build_tiny_pipeline("wan")
    tr = pipe.transformer
    x = torch.randn(1, 16, 2, 16, 32)
    args = dict(hidden_states=x, timestep=torch.tensor([500]), encoder_hidden_states=torch.randn(1, 16, 32))
    base = tr(**args).sample
    enable_draft_attention(tr, sparsity=0.5)  # warm-up fraction 0.25, no pipeline, no set_step
    with pytest.warns(DraftAttentionWarning, match="does not know the denoising step"):
        out = tr(**args).sample
    assert torch.equal(out, base)
    assert get_draft_stats(tr).summary()["fallbacks"]
    get_draft_processor(tr).set_step(5, 8)
    sparse = tr(**args).sample
    assert not torch.equal(sparse, base) and get_draft_stats(tr).summary()["sparse_calls"] == 2
    with pytest.raises(ValueError, match="set_step"):
        get_draft_processor(tr).set_step(8, 8)
    disable_draft_attention(tr)


def test_enabling_twice_and_unsupported_models_raise(wan):
    enable_draft_attention(wan)
    try:
        with pytest.raises(RuntimeError, match="already enabled"):
            enable_draft_attention(wan)
    finally:
        disable_draft_attention(wan)
    with pytest.raises(RuntimeError, match="not enabled"):
        disable_draft_attention(wan)
    with pytest.raises(ValueError, match="supported transformers: WanTransformer3DModel"):
        enable_draft_attention(torch.nn.Linear(2, 2))

    class NotAPipe:
        transformer = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="HunyuanVideoTransformer3DModel"):
        enable_draft_attention(NotAPipe())


def test_family_specific_processors_refuse_other_families(hunyuan):
    with pytest.raises(ValueError, match="WanDraftAttnProcessor supports"):
        WanDraftAttnProcessor().attach(hunyuan.transformer)
    HunyuanVideoDraftAttnProcessor().attach(hunyuan.transformer)  # fine


def test_processor_outside_a_supported_transformer_raises():
    from diffusers.models.attention_processor import Attention

    attn = Attention(query_dim=16, heads=2, dim_head=8)
    attn.set_processor(DraftAttnProcessor())
    with pytest.raises(ValueError, match="not inside a supported transformer"):
        attn(torch.randn(1, 4, 16))


def test_grid_mismatch_falls_back_visibly(wan):
    proc = DraftAttnProcessor(sparsity=0.5, dense_steps_fraction=0.0)
    proc.attach(wan.transformer)
    wan.transformer.set_attn_processor(proc)
    try:
        x = torch.randn(1, 16, 2, 16, 32)
        hook_grid = processor_module.DraftAttnProcessor._begin_forward

        def wrong_grid(self, grid, *args):
            hook_grid(self, grid, *args)
            self.grid = type(grid)(grid.frames, grid.height, grid.width + 1)

        processor_module.DraftAttnProcessor._begin_forward = wrong_grid
        with pytest.warns(DraftAttentionWarning, match="does not match the grid"):
            out = wan.transformer(hidden_states=x, timestep=torch.tensor([500]),
                                  encoder_hidden_states=torch.randn(1, 16, 32)).sample
        assert torch.isfinite(out).all()
        assert proc.stats.summary()["sparse_calls"] == 0 and proc.stats.summary()["fallbacks"]
    finally:
        processor_module.DraftAttnProcessor._begin_forward = hook_grid
        proc.detach()
        restore_defaults(wan.transformer)


def test_layout_of_a_real_grid_has_no_padding():
    from draftattention_diffusers.core import VideoGrid

    lay = get_layout(VideoGrid(21, 30, 52), 0, (8, 16))
    assert lay.num_tiles == -(-21 * 30 * 52 // 128)


def test_per_token_timesteps_follow_the_tile_order():
    """Wan2.2 TI2V passes one timestep per token: reordering must permute them with the tokens."""
    tr = build_tiny_pipeline("wan").transformer
    x = torch.randn(1, 16, 2, 30, 52)  # 15 x 26 tokens per frame
    t = torch.rand(1, 2 * 15 * 26) * 1000
    args = dict(hidden_states=x, timestep=t, encoder_hidden_states=torch.randn(1, 16, 32))
    outs = {}
    for reorder in ("per_forward", "per_call"):
        with draft_attention_enabled(tr, sparsity=0.6, dense_steps_fraction=0.0, reorder=reorder):
            outs[reorder] = tr(**args).sample
    torch.testing.assert_close(outs["per_forward"], outs["per_call"], rtol=1e-4, atol=1e-4)


def test_regional_torch_compile_shares_one_graph_across_blocks():
    """Compiling each block (diffusers' regional compile) must not recompile per layer (guards on the module, the
    layer name or the block index would exhaust dynamo's recompile limit on a 40-block model)."""
    import torch._dynamo as dynamo

    tr = build_tiny_pipeline("wan", num_layers=6).transformer
    x = torch.randn(1, 16, 2, 30, 52)
    args = dict(hidden_states=x, timestep=torch.tensor([500]), encoder_hidden_states=torch.randn(1, 16, 32))
    with draft_attention_enabled(tr, sparsity=0.5, dense_steps_fraction=0.0):
        eager = tr(**args).sample
        for block in tr.blocks:
            block.compile(backend="eager")
        dynamo.reset()
        with dynamo.config.patch(error_on_recompile=True):  # block 1 compiles; blocks 2-6 must reuse its graphs
            tr(**args)
            compiled = tr(**args).sample
        assert get_draft_stats(tr).summary()["sparse_calls"] == 6 * 3
    uncompile(tr)  # back to eager for other tests
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_dense_backend_never_drops_a_mask_it_cannot_express():
    """A mask that is not a key-padding suffix falls back to dense with the mask applied, whatever dense_backend."""
    from draftattention_diffusers.core import VideoGrid
    from draftattention_diffusers.models.base import AttentionRole

    proc = DraftAttnProcessor(sparsity=0.5, dense_steps_fraction=0.0, dense_backend="reference")
    proc.grid = VideoGrid(1, 8, 16)
    S = 128 + 8
    q, k, v = (torch.randn(1, S, 2, 16) for _ in range(3))
    mask = torch.ones(1, 1, 1, S, dtype=torch.bool)
    mask[..., 3] = False  # a hole in the video keys: not a suffix
    role = AttentionRole("layer", True, 0, None)
    with pytest.warns(DraftAttentionWarning, match="not a key-padding suffix"):
        out = proc._attend_full(torch.nn.Module(), role, False, "reference", q, k, v, 8, mask)
    want = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)),
                                                            attn_mask=mask).transpose(1, 2)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_a_video_smaller_than_one_tile_before_text_runs_dense_visibly(hunyuan):
    """HunyuanVideo at 64 x 64 pixels: 2 x 4 x 4 video tokens, then text: nothing to select, so every call runs dense,
    listed in the statistics, and the output equals diffusers' (it used to raise IndexError in the selection)."""
    size = dict(height=64, width=64, num_frames=5)
    base, _ = run_pipeline(hunyuan, steps=2, size=size)
    with draft_attention_enabled(hunyuan, sparsity=0.5, dense_steps_fraction=0.0):
        with pytest.warns(DraftAttentionWarning, match="fewer than one 128-token tile"):
            out, _ = run_pipeline(hunyuan, steps=2, size=size)
        stats = get_draft_stats(hunyuan).summary()
    assert stats["sparse_calls"] == 0 and any("fewer than one 128-token tile" in m for m in stats["fallbacks"])
    assert torch.equal(out, base)


def test_milder_warm_up_is_opt_in_and_runs_its_own_sparsity():
    """warmup_sparsity (issue 20 item 5, opt-in): the warm-up steps run draft attention at that sparsity instead of
    dense; the steps after it at `sparsity`; the default stays the paper's dense warm-up."""
    assert DraftAttentionConfig().warmup_sparsity is None
    with pytest.raises(ValueError, match="warmup_sparsity"):
        DraftAttentionConfig(warmup_sparsity=1.0)
    pipe = build_tiny_pipeline("wan")
    seen = []
    with draft_attention_enabled(pipe, sparsity=0.75, dense_steps_fraction=0.5, warmup_sparsity=0.25) as p:
        get_draft_processor(p).add_observer(lambda e: seen.append((e.step, e.dense, e.tiles)))
        run_pipeline(pipe, steps=4)  # 2 regions per frame row: 4 tiles, 16 region pairs
        stats = get_draft_stats(p)
    summary = stats.summary()
    assert summary["steps"] == {0: "warmup", 1: "warmup", 2: "sparse", 3: "sparse"}
    assert summary["dense_calls"] == 0 and summary["fallbacks"] == {}
    by_step = {}
    for step, dense, tiles in seen:
        assert not dense
        by_step.setdefault(step, []).append(tiles.video_sparsity.float().mean().item())
    warm = sum(by_step[0] + by_step[1]) / len(by_step[0] + by_step[1])
    late = sum(by_step[2] + by_step[3]) / len(by_step[2] + by_step[3])
    assert 0.0 < warm < late  # the tiny grid rounds both budgets; the warm-up keeps more tiles
    assert "2 sparse warm-up: 0-1" in stats.format()

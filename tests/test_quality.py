"""Quality lab: fidelity metrics against brute-force dense attention, the oracle's optimality, static patterns,
the synthetic generator, the ``topk_heads`` rule, and capture/analyze on tiny pipelines."""

from __future__ import annotations

import json

import pytest
import torch

from draftattention_diffusers.backends.reference import ReferenceBackend
from draftattention_diffusers.core import VideoGrid, get_layout
from draftattention_diffusers.core.selection import (build_tile_mask, keep_budget, select_tiles,
                                                     select_video_tiles, tile_mask_to_token_mask)
from draftattention_diffusers.quality import metrics
from draftattention_diffusers.quality.analyze import analyze, format_rows, summarize_rows
from draftattention_diffusers.quality.capture import capture, load_capture, save_capture
from draftattention_diffusers.quality.metrics import (attention_recall, oracle_tile_mask, output_error,
                                                      recall_from_mass, static_tile_mask, tile_centroids, tile_mass)
from draftattention_diffusers.quality.synthetic import HEAD_KINDS, HeadKind, synthetic_qkv

# 3 frames x 12 x 40 tokens: full 8x16 regions plus right and bottom edge tiles (irregular layout).
GRID = VideoGrid(3, 12, 40)


def rand_qkv(grid=GRID, text_len=0, heads=3, dim=16, batch=1, seed=0, sharp=2.0):
    g = torch.Generator().manual_seed(seed)
    S = grid.num_tokens + text_len
    q, k, v = (torch.randn(batch, S, heads, dim, generator=g) for _ in range(3))
    return q * sharp, k * sharp, v


def dense_probs(q, k, key_lengths=None):
    """Brute force: softmax(q k^T / sqrt(D)) ``[B, H, S, S]`` (tiny inputs only)."""
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * q.shape[-1] ** -0.5
    if key_lengths is not None:
        ok = torch.arange(q.shape[1]).view(1, -1) < key_lengths.view(-1, 1)
        s = s.masked_fill(~ok[:, None, None, :], float("-inf"))
    return torch.softmax(s, dim=-1)


def brute_mass(q, k, layout, key_lengths=None):
    """Tile mass from the full probability matrix, permuted into tile order."""
    p = dense_probs(q, k, key_lengths)[:, :, layout.perm][:, :, :, layout.perm]
    S, t, T = q.shape[1], layout.tile_size, layout.num_tiles
    p = torch.nn.functional.pad(p, (0, T * t - S, 0, T * t - S))
    return p.reshape(*p.shape[:2], T, t, T, t).sum(dim=(3, 5))


def random_mask(layout, B, H, count, seed):
    g = layout.num_video_tiles
    gen = torch.Generator().manual_seed(seed)
    idx = torch.rand(B, H, g * g, generator=gen).argsort(dim=-1)[..., :count]
    keep = torch.zeros(B, H, g * g, dtype=torch.bool).scatter_(-1, idx, True).view(B, H, g, g)
    return build_tile_mask(keep, layout)


# ------------------------------------------------------------------------------------------------ metrics
@pytest.mark.parametrize("grid,text_len,region", [(GRID, 0, (8, 16)), (VideoGrid(2, 9, 17), 0, (8, 16)),
                                                  (GRID, 7, (8, 16)), (GRID, 0, (16, 16)), (GRID, 0, (4, 8))])
def test_tile_mass_equals_brute_force(grid, text_len, region):
    q, k, _ = rand_qkv(grid, text_len)
    lay = get_layout(grid, text_len, region)
    m = tile_mass(q, k, lay)
    torch.testing.assert_close(m.double(), brute_mass(q, k, lay), rtol=1e-4, atol=1e-4)
    # every query row carries mass 1
    torch.testing.assert_close(m.sum(dim=(-1, -2)), torch.full((1, 3), float(q.shape[1])), rtol=1e-5, atol=1e-3)


def test_tile_mass_chunked_equals_one_chunk_and_several_layouts_share_a_pass(monkeypatch):
    q, k, _ = rand_qkv()
    lays = [get_layout(GRID, 0, r) for r in ((8, 16), (16, 8), (4, 8))]
    whole = tile_mass(q, k, lays)
    monkeypatch.setattr(metrics, "_CHUNK_BYTES", GRID.num_tokens * 4 * 7)  # 7 query rows per chunk
    chunked = tile_mass(q, k, lays)
    for a, b, lay in zip(whole, chunked, lays):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a, tile_mass(q, k, lay), rtol=1e-5, atol=1e-5)


def test_padded_keys_get_no_mass():
    text = 10
    q, k, _ = rand_qkv(GRID, text, batch=2)
    lay = get_layout(GRID, text, (8, 16))
    kl = torch.tensor([GRID.num_tokens + 3, GRID.num_tokens + text], dtype=torch.int32)
    m = tile_mass(q, k, lay, key_lengths=kl)
    torch.testing.assert_close(m.double(), brute_mass(q, k, lay, kl), rtol=1e-4, atol=1e-4)


def test_recall_of_full_mask_is_one_and_matches_brute_force():
    q, k, _ = rand_qkv(batch=2)
    lay = get_layout(GRID, 0, (8, 16))
    g = lay.num_video_tiles
    full = build_tile_mask(torch.ones(2, 3, g, g, dtype=torch.bool), lay)
    rec = attention_recall(q, k, full)
    assert rec.per_head.shape == (2, 3)
    torch.testing.assert_close(rec.per_head, torch.ones(2, 3))
    m = random_mask(lay, 2, 3, g * g // 3, seed=1)
    p = dense_probs(q, k)
    token_kept = tile_mask_to_token_mask(m.kept, lay.tile_size, lay.seq_len)[:, :, lay.inv_perm][..., lay.inv_perm]
    expected = (p * token_kept).sum(dim=(-1, -2)) / q.shape[1]
    torch.testing.assert_close(attention_recall(q, k, m).per_head.double(), expected, rtol=1e-4, atol=1e-5)
    assert attention_recall(q, k, m).mean < 1.0


def test_recall_counts_video_rows_and_keeps_text_columns():
    text = 9
    q, k, _ = rand_qkv(GRID, text)
    lay = get_layout(GRID, text, (8, 16))
    g = lay.num_video_tiles
    none = build_tile_mask(torch.zeros(1, 3, g, g, dtype=torch.bool), lay)
    # with no video-video tile kept, the recall is the video rows' mass on the (always kept) text columns
    p = dense_probs(q, k)[:, :, lay.perm][:, :, :, lay.perm]
    rows = g * lay.tile_size
    expected = p[:, :, :rows, rows:].sum(dim=(-1, -2)) / rows
    torch.testing.assert_close(attention_recall(q, k, none).per_head.double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sparsity", [0.5, 0.75, 0.9])
def test_oracle_recall_is_at_least_any_mask_of_the_same_budget(sparsity):
    q, k, _ = synthetic_qkv(VideoGrid(4, 16, 32), ("local", "temporal", "global"), head_dim=32, seed=3)
    lay = get_layout(VideoGrid(4, 16, 32), 0, (8, 16))
    mass = tile_mass(q, k, lay)
    qp, kp = (x.index_select(1, lay.perm) for x in (q, k))
    g = lay.num_video_tiles
    others = [select_tiles(qp, kp, lay, sparsity, rule, pool) for rule in ("topk", "paper", "row_topk", "topk_heads")
              for pool in ("avg", "max")]
    others += [static_tile_mask(lay, p, sparsity, heads=3) for p in metrics.STATIC_PATTERNS]
    others += [random_mask(lay, 1, 3, keep_budget(sparsity, g * g), seed=s) for s in range(5)]
    for m in others:
        orc = oracle_tile_mask(mass, lay, like=m)
        counts = lambda x: x.kept[:, :, :g, :g].sum(dim=(-1, -2))
        assert torch.equal(counts(orc), counts(m))
        assert (recall_from_mass(mass, orc).per_head >= recall_from_mass(mass, m).per_head - 1e-6).all()
    # the budget shared by all heads can only do better than per-head budgets
    per_head = oracle_tile_mask(mass, lay, sparsity=sparsity)
    shared = oracle_tile_mask(mass, lay, sparsity=sparsity, share_across_heads=True)
    assert int(shared.kept[:, :, :g, :g].sum()) == int(per_head.kept[:, :, :g, :g].sum()) == 3 * keep_budget(
        sparsity, g * g)
    assert recall_from_mass(mass, shared).mean >= recall_from_mass(mass, per_head).mean - 1e-6


def test_oracle_budget_arguments():
    q, k, _ = rand_qkv()
    lay = get_layout(GRID, 0, (8, 16))
    mass = tile_mass(q, k, lay)
    g = lay.num_video_tiles
    m = oracle_tile_mask(mass, lay, budget=torch.tensor([[1, 5, g * g]]))
    assert m.kept[:, :, :g, :g].sum(dim=(-1, -2)).tolist() == [[1, 5, g * g]]
    assert recall_from_mass(mass, m).per_head[0, 2] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="exactly one of"):
        oracle_tile_mask(mass, lay, sparsity=0.5, budget=3)
    with pytest.raises(ValueError, match="budget"):
        oracle_tile_mask(mass, lay, budget=g * g + 1)
    with pytest.raises(ValueError, match="mass"):
        oracle_tile_mask(mass[:, :, :2], lay, sparsity=0.5)


def test_output_error_full_mask_is_zero_and_matches_the_reference_backend():
    text = 6
    q, k, v = rand_qkv(GRID, text, batch=2)
    lay = get_layout(GRID, text, (8, 16))
    kl = torch.tensor([GRID.num_tokens + 2, GRID.num_tokens + text], dtype=torch.int32)
    g = lay.num_video_tiles
    full = build_tile_mask(torch.ones(2, 3, g, g, dtype=torch.bool), lay, kl)
    assert output_error(q, k, v, full, key_lengths=kl).mean == 0.0
    sparse = random_mask(lay, 2, 3, g * g // 4, seed=2)
    sparse = build_tile_mask(sparse.kept[:, :, :g, :g], lay, kl)
    err = output_error(q, k, v, sparse, key_lengths=kl)
    # independent: the reference backend's block-sparse and dense outputs
    ref = ReferenceBackend()
    perm, inv, scale = lay.perm, lay.inv_perm, q.shape[-1] ** -0.5
    out = ref.forward(*(x.index_select(1, perm) for x in (q, k, v)), sparse, kl, scale).index_select(1, inv)
    dense = ref.dense_forward(q, k, v, kl, scale)
    expected = ((out - dense).square().sum(dim=(1, 3)) / dense.square().sum(dim=(1, 3))).sqrt()
    torch.testing.assert_close(err.per_head, expected, rtol=1e-4, atol=1e-6)
    assert err.mean > 0.01


def test_output_error_when_kept_keys_underflow_next_to_the_dropped_maximum():
    """Rows whose kept keys are > 100 nats below a dropped key still get the exact masked softmax."""
    q, _, v = rand_qkv(sharp=10.0)  # self-attention logits q.q / 4 ~ 400 nats above the rest
    lay = get_layout(GRID, 0, (8, 16))
    g = lay.num_video_tiles
    off_diagonal = ~torch.eye(g, dtype=torch.bool).expand(1, 3, g, g)
    m = build_tile_mask(off_diagonal, lay)
    err = output_error(q, q, v, m)
    ref = ReferenceBackend()
    scale = q.shape[-1] ** -0.5
    out = ref.forward(*(x.index_select(1, lay.perm) for x in (q, q, v)), m, None, scale).index_select(1, lay.inv_perm)
    dense = ref.dense_forward(q, q, v, None, scale)
    expected = ((out - dense).square().sum(dim=(1, 3)) / dense.square().sum(dim=(1, 3))).sqrt()
    assert expected.min() > 0.5  # the kept keys give a very different output
    torch.testing.assert_close(err.per_head, expected, rtol=1e-4, atol=1e-6)


def test_output_error_on_sampled_rows_and_several_masks(monkeypatch):
    q, k, v = rand_qkv()
    lay = get_layout(GRID, 0, (8, 16))
    g = lay.num_video_tiles
    masks = [random_mask(lay, 1, 3, c, seed=c) for c in (g, g * g // 2)]
    rows = torch.tensor([0, 5, 77, 300, GRID.num_tokens - 1])
    monkeypatch.setattr(metrics, "_CHUNK_BYTES", GRID.num_tokens * 4 * 2)  # 2 rows per chunk
    errs = output_error(q, k, v, masks, rows=rows)
    ref = ReferenceBackend()
    dense = ref.dense_forward(q, k, v, None, q.shape[-1] ** -0.5)[:, rows]
    for m, e in zip(masks, errs):
        out = ref.forward(*(x.index_select(1, lay.perm) for x in (q, k, v)), m, None, q.shape[-1] ** -0.5)
        out = out.index_select(1, lay.inv_perm)[:, rows]
        expected = ((out - dense).square().sum(dim=(1, 3)) / dense.square().sum(dim=(1, 3))).sqrt()
        torch.testing.assert_close(e.per_head, expected, rtol=1e-4, atol=1e-6)
    assert errs[0].mean > errs[1].mean  # fewer tiles, larger error
    with pytest.raises(ValueError, match="rows"):
        output_error(q, k, v, masks[0], rows=torch.tensor([GRID.num_tokens]))


def test_bad_inputs_raise_clear_errors():
    q, k, _ = rand_qkv()
    lay = get_layout(GRID, 0, (8, 16))
    with pytest.raises(ValueError, match="does not match the layout"):
        tile_mass(q[:, :-1], k[:, :-1], lay)
    with pytest.raises(ValueError, match="q, k"):
        tile_mass(q, k[..., :8], lay)
    other = build_tile_mask(torch.ones(1, 2, lay.num_video_tiles, lay.num_video_tiles, dtype=torch.bool), lay)
    with pytest.raises(ValueError, match="tiles.kept"):
        attention_recall(q, k, other)
    with pytest.raises(ValueError, match="pattern"):
        static_tile_mask(lay, "diagonal", 0.5)


# ---------------------------------------------------------------------------------------------- static
@pytest.mark.parametrize("pattern", metrics.STATIC_PATTERNS)
@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_static_patterns_keep_the_budget_evenly(pattern, sparsity):
    grid = VideoGrid(5, 16, 48)
    lay = get_layout(grid, 0, (8, 16))
    g = lay.num_video_tiles
    m = static_tile_mask(lay, pattern, sparsity, batch=2, heads=2)
    assert m.kept.shape == (2, 2, g, g)
    per_row = m.kept[0, 0].sum(dim=-1)
    assert int(per_row.sum()) == keep_budget(sparsity, g * g)
    assert int(per_row.max() - per_row.min()) <= 1
    assert m.kept[0, 0].diagonal().all()  # every pattern keeps a tile's own region first


def test_static_patterns_have_their_shape():
    grid = VideoGrid(6, 16, 32)  # 4 full regions per frame, 24 tiles
    lay = get_layout(grid, 0, (8, 16))
    c = tile_centroids(lay)
    frame = c[:, 0].round().long()
    same_place = ((c[:, None, 1:] - c[None, :, 1:]).abs().sum(-1) < 1e-6)
    budget = 1 - 6 / 24  # 6 tiles per query tile
    spatial = static_tile_mask(lay, "spatial", budget).kept[0, 0]
    temporal = static_tile_mask(lay, "temporal", budget).kept[0, 0]
    # spatial: the 4 tiles of its own frame, then 2 of a neighbouring frame; temporal: its place in all 6 frames
    assert (spatial & (frame[:, None] == frame[None, :])).sum(-1).eq(4).all()
    assert torch.equal(temporal, same_place)


# ------------------------------------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_and_heads_are_independent():
    grid = VideoGrid(2, 8, 16)
    a = synthetic_qkv(grid, ("local", "global"), head_dim=24, seed=5)
    b = synthetic_qkv(grid, ("local", "global", "sink"), head_dim=24, seed=5)
    for x, y in zip(a, b):
        assert x.shape == (1, 256, 2, 24)
        torch.testing.assert_close(x, y[:, :, :2], rtol=0, atol=0)
    c = synthetic_qkv(grid, ("local", "global"), head_dim=24, seed=6)
    assert not torch.equal(a[0], c[0])
    with pytest.raises(ValueError, match="head kind"):
        synthetic_qkv(grid, ("nope",))
    with pytest.raises(ValueError, match="head_dim"):
        synthetic_qkv(grid, ("local",), head_dim=15)


def test_synthetic_heads_have_their_character():
    """Where each kind's dense attention goes: local/spatial stay in their frame, temporal goes to the same place
    in other frames, global spreads, sink heads attend to frame 0."""
    grid = VideoGrid(6, 16, 32)
    kinds = ("local", "spatial", "temporal", "global", "sink")
    q, k, _ = synthetic_qkv(grid, kinds, head_dim=64, seed=0)
    lay = get_layout(grid, 0, (8, 16))
    mass = tile_mass(q, k, lay)[0]
    c = tile_centroids(lay)
    same_frame = (c[:, None, 0] - c[None, :, 0]).abs() < 0.5
    same_place = ((c[:, None, 1:] - c[None, :, 1:]).abs().sum(-1) < 1e-6)
    frame0 = (c[None, :, 0] < 0.5).expand_as(same_frame)
    share = lambda sel: ((mass * sel).sum(dim=(-1, -2)) / mass.sum(dim=(-1, -2))).tolist()
    f, p, z = dict(zip(kinds, share(same_frame))), dict(zip(kinds, share(same_place & ~same_frame))), dict(
        zip(kinds, share(frame0)))
    assert f["spatial"] > 0.8 and f["local"] > 0.5
    assert p["temporal"] > 3 * p["spatial"] and f["temporal"] < 0.5
    assert f["global"] < 0.5 and min(share(mass > 0)) > 0.99
    assert z["sink"] > 2 * z["local"]
    # global heads are the diffuse ones: their oracle keeps least at the same budget
    orc = recall_from_mass(mass[None], oracle_tile_mask(mass[None], lay, sparsity=0.75)).per_head[0]
    assert int(orc.argmin()) == kinds.index("global")


def test_head_kind_table_is_documented():
    for name, kind in HEAD_KINDS.items():
        assert isinstance(kind, HeadKind) and len(kind.pos) == 3, name


# ------------------------------------------------------------------------------------------ topk_heads
def test_topk_heads_shares_the_budget_and_keeps_every_rows_best():
    gen = torch.Generator().manual_seed(0)
    # head 0 concentrated (sharp draft rows), head 1 diffuse
    logits = torch.randn(2, 2, 30, 30, generator=gen) * torch.tensor([8.0, 0.3]).view(1, 2, 1, 1)
    s = torch.softmax(logits, dim=-1)
    keep = select_video_tiles(s, 0.8, "topk_heads")
    per_head = keep.sum(dim=(-1, -2))
    assert (per_head.sum(dim=1) == 2 * keep_budget(0.8, 900)).all()  # same total work as topk
    assert (per_head[:, 1] > per_head[:, 0]).all()  # the diffuse head gets more tiles
    assert keep.gather(-1, s.argmax(dim=-1, keepdim=True)).all()  # no query row empty
    # the shared choice keeps at least as much draft mass as per-head top-k (it maximises it)
    topk = select_video_tiles(s, 0.8, "topk")
    assert (s * keep).sum(dim=(1, 2, 3)).ge((s * topk).sum(dim=(1, 2, 3)) - 1e-6).all()


def test_topk_heads_is_a_config_option():
    from draftattention_diffusers import DraftAttentionConfig, draft_attention

    grid = VideoGrid(2, 8, 32)
    q, k, v = rand_qkv(grid, heads=2)
    out, tiles = draft_attention(q, k, v, grid, DraftAttentionConfig(sparsity=0.5, selection="topk_heads",
                                                                     backend="reference"))
    assert out.shape == q.shape and tiles.mean_sparsity == pytest.approx(0.5)


# --------------------------------------------------------------------------------------- capture / analyze
# 9 frames -> 3 latent frames; 128 x 512 pixels -> 8 x 32 tokens: 2 full 8x16 regions per frame, 6 tiles.
TINY = {"height": 128, "width": 512, "num_frames": 9, "output_type": "latent"}


def _tiny(family):
    from draftattention_diffusers.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(family)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_capture_saves_what_attention_saw(tmp_path):
    """The captured q/k/v give exactly the attention output the model computed (to_out's input)."""
    from draftattention_diffusers.tiny import tiny_prompt_kwargs

    pipe = _tiny("wan")
    attn = pipe.transformer.blocks[1].attn1
    seen = []
    hook = attn.to_out[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    try:
        paths = capture(pipe, layers=["blocks.1.attn1"], steps=[-1], out_dir=tmp_path, num_inference_steps=3,
                        **TINY, **tiny_prompt_kwargs(pipe))
    finally:
        hook.remove()
    assert [p.name for p in paths] == ["transformer.blocks.1.attn1.step002.call0.safetensors",
                                       "transformer.blocks.1.attn1.step002.call1.safetensors"]  # CFG: two calls
    assert not hasattr(pipe.transformer, "_draftattention")  # capture removed what it installed
    for path, model_out in zip(paths, seen[-2:]):
        cap = load_capture(path)
        assert (cap.grid, cap.text_len, cap.step, cap.num_steps, cap.dense) == (VideoGrid(3, 8, 32), 0, 2, 3, True)
        assert cap.q.shape == (1, 768, 2, 32) and cap.block_index == 1 and cap.heads == [0, 1]
        out = ReferenceBackend().dense_forward(cap.q, cap.k, cap.v, None, cap.scale)
        torch.testing.assert_close(out.flatten(2), model_out, rtol=1e-4, atol=1e-5)


def test_capture_hunyuan_text_heads_and_analyze(tmp_path):
    from draftattention_diffusers.tiny import tiny_prompt_kwargs

    pipe = _tiny("hunyuan")
    paths = capture(pipe, layers=["*single_transformer_blocks.0.attn"], steps=[0], out_dir=tmp_path, heads=[1],
                    save_v=True, num_inference_steps=2, **TINY, **tiny_prompt_kwargs(pipe, text_len=16, valid_len=5))
    assert len(paths) == 1
    cap = load_capture(paths[0])
    assert cap.text_len == 16 and cap.heads == [1] and cap.q.shape == (1, 768 + 16, 1, 32)
    assert cap.key_lengths.tolist() == [768 + 5]
    rows = analyze(paths, sparsity=(0.5, 0.8), selections=("topk", "topk_heads"), poolings=("avg", "max"),
                   static=("window",))
    methods = {r["method"] for r in rows}
    assert methods == {"topk/avg", "topk/max", "topk_heads/avg", "topk_heads/max", "static:window", "oracle"}
    for r in rows:
        assert 0.0 <= r["recall"] <= 1.0 + 1e-6 and r["vs_oracle"] <= 1.0 + 1e-6 and r["output_error"] >= 0
        if r["method"] == "oracle":
            assert r["vs_oracle"] == pytest.approx(1.0)
    summary = summarize_rows(rows)
    assert len(summary) == len(rows) and all(r["files"] == 1 for r in summary)
    text = format_rows(summary)
    assert text.startswith("| region | sparsity | method |") and "topk_heads/avg" in text


def test_capture_rejects_bad_selectors_and_reports_what_it_saw(tmp_path):
    from draftattention_diffusers import enable_draft_attention
    from draftattention_diffusers.tiny import tiny_prompt_kwargs

    pipe = _tiny("wan")
    kw = dict(out_dir=tmp_path, num_inference_steps=2, **TINY, **tiny_prompt_kwargs(pipe))
    with pytest.raises(ValueError, match="layers"):
        capture(pipe, layers=3, **kw)
    with pytest.raises(ValueError, match="steps"):
        capture(pipe, steps=1, **kw)
    with pytest.raises(ValueError, match=r"seen layers: \['transformer.blocks.0.attn1', 'transformer.blocks.1"):
        capture(pipe, layers=["blocks.7.attn1"], steps=[0], **kw)
    enable_draft_attention(pipe, sparsity=0.5)
    with pytest.raises(ValueError, match="already enabled"):
        capture(pipe, layers=[0], config={"sparsity": 0.5}, **kw)
    # already enabled: capture under its settings (dense warm-up step 0, sparse step 1) and leave it enabled
    paths = capture(pipe, layers=[0], steps=[1], save_v=False, dtype=torch.float16, **kw)
    cap = load_capture(paths[0])
    assert cap.dense is False and cap.v is None and cap.q.dtype == torch.float16
    assert hasattr(pipe.transformer, "_draftattention")
    rows = analyze(paths[:1], sparsity=0.5)
    assert all(r["output_error"] is None for r in rows)


def test_analyze_on_saved_synthetic_file_and_bad_files(tmp_path):
    grid = VideoGrid(3, 16, 32)
    q, k, v = synthetic_qkv(grid, ("local", "global"), head_dim=32, seed=1)
    path = save_capture(tmp_path / "syn.safetensors", q, k, v, grid, extra={"note": "x"})
    cap = load_capture(path)
    assert cap.extra == {"note": "x"} and cap.layer == "synthetic"
    rows = analyze([path], sparsity=[0.75], selections=("topk", "paper"), region_sizes=[(8, 16), (16, 16)],
                   error_rows=None)
    assert {r["region"] for r in rows} == {"8x16", "16x16"}
    topk = next(r for r in rows if r["method"] == "topk/avg" and r["region"] == "8x16")
    lay = get_layout(grid, 0, (8, 16))
    qp, kp = (x.index_select(1, lay.perm) for x in (q, k))
    expected = attention_recall(q, k, select_tiles(qp, kp, lay, 0.75, "topk", "avg"))
    assert topk["recall"] == pytest.approx(expected.mean, rel=1e-5)
    single = analyze([path], sparsity=0.5, selections="topk", poolings="avg", region_sizes=(8, 16), static="window")
    assert [r["method"] for r in single] == ["topk/avg", "static:window", "oracle"]
    with pytest.raises(ValueError, match="selection"):
        analyze([path], selections=("best",))
    with pytest.raises(ValueError, match="static pattern"):
        analyze([path], static=("diagonal",))
    bad = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file

    save_file({"q": q}, str(bad), metadata={"format": "something else"})
    with pytest.raises(ValueError, match="not a draft-attention capture file"):
        load_capture(bad)
    save_file({"q": q}, str(bad), metadata={"format": "draftattention-capture/1"})
    with pytest.raises(ValueError, match="missing tensor"):
        load_capture(bad)


def test_fidelity_script_runs_small(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("fidelity", Path(__file__).parents[1] / "scripts" / "fidelity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--grid", "3x16x32", "--heads", "local,global", "--head-dim", "16", "--regions", "8x16",
              "--sparsity", "0.75", "--poolings", "avg", "--error-rows", "32", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert "| 8x16 | 0.750 | topk/avg |" in out and "| oracle |" in out
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    oracle = next(r for r in rows if r["method"] == "oracle")
    same_budget = [r for r in rows if r["achieved_sparsity"] == oracle["achieved_sparsity"]
                   and r["method"] not in ("oracle:shared",) and "topk_heads" not in r["method"]]
    assert len(same_budget) > 5 and all(r["recall"] <= oracle["recall"] + 1e-6 for r in same_budget)

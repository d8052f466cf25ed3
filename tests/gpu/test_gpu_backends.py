"""Every GPU backend against the reference backend, on random inputs, on a CUDA GPU.

Covers sequence lengths that are not multiples of 128, trailing text tokens with padded keys, batch 2, rows with no
kept tile, fp16 and bf16, head dims 128 and 64, the dense kernel, and the kernels inside ``torch.compile``.
``DRAFTATTN_REQUIRE_BACKENDS=fa4,flex`` (scripts/gpu_check.sh sets it) turns "cannot run here" skips into failures.
"""

import os

import pytest
import torch
import torch._dynamo

from draftattention_diffusers import DraftAttentionConfig, VideoGrid, draft_attention
from draftattention_diffusers.backends import AttentionInputs, get_backend, resolve_backend
from draftattention_diffusers.core import get_layout, select_tiles
from draftattention_diffusers.core.selection import TileMask

GPU_BACKENDS = ["fa4", "flex", "bsa"]

# name: (grid, text_len, batch, heads, head_dim, padded keys, selection, sparsity, empty rows)
CASES = {
    "video_not_mult_128_b2": ((3, 30, 52), 0, 2, 4, 128, False, "topk", 0.75, False),
    "text_padded_keys_b2": ((2, 45, 80), 256, 2, 3, 128, True, "topk", 0.9, False),
    "text_unpadded_b1": ((1, 48, 80), 77, 1, 2, 128, False, "row_topk", 0.5, False),
    "empty_rows_paper": ((2, 16, 32), 0, 2, 2, 128, False, "paper", 0.9, True),
    "head_dim_64": ((2, 30, 52), 0, 1, 4, 64, False, "topk", 0.75, False),
}


def require(name, inputs):
    backend = get_backend(name)
    reasons = backend.not_supported_reasons(inputs)
    if reasons:
        message = f"{name} cannot run on {inputs.describe()}: " + "; ".join(reasons)
        if name in os.environ.get("DRAFTATTN_REQUIRE_BACKENDS", "").split(","):
            pytest.fail(message)
        pytest.skip(message)
    return backend


def make_case(case, dtype, seed=0):
    grid, text_len, B, H, D, padded, rule, sparsity, empty = CASES[case]
    torch.manual_seed(seed)
    lay = get_layout(VideoGrid(*grid), text_len, (8, 16), torch.device("cuda"))
    S = lay.seq_len
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=dtype) for _ in range(3))
    q = q * 2  # sharper softmax than unit-variance scores: errors in the mask would show
    kl = None
    if padded:
        kl = torch.tensor([S - 100, lay.num_video_tokens + 37][:B], device="cuda", dtype=torch.int32)
    tiles = select_tiles(q, k, lay, sparsity, rule, "avg", None, kl)
    if empty:
        kept = tiles.kept.clone()
        kept[:, :, 1::3] = False  # every third query tile attends nothing: its output must be zeros
        tiles = TileMask(kept, lay, tiles.video_sparsity)
    return lay, q, k, v, kl, tiles


def rel_err(out, ref):
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


# every case in bf16, the two main ones in fp16 too (each new dtype/shape compiles kernels: keep the GPU run short)
CASE_DTYPES = [(c, torch.bfloat16) for c in CASES] + [(c, torch.float16) for c in list(CASES)[:2]]


@pytest.mark.parametrize("case,dtype", CASE_DTYPES, ids=[f"{c}-{str(d)[6:]}" for c, d in CASE_DTYPES])
@pytest.mark.parametrize("name", GPU_BACKENDS)
def test_backend_matches_reference(name, case, dtype):
    lay, q, k, v, kl, tiles = make_case(case, dtype)
    backend = require(name, AttentionInputs.from_tensors(q, v, lay.tile_size, kl is not None))
    scale = q.shape[-1] ** -0.5
    out = backend.forward(q, k, v, tiles, kl, scale)
    ref = get_backend("reference").forward(q, k, v, tiles, kl, scale)
    assert out.shape == ref.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all()
    err = rel_err(out, ref)
    print(f"{name} {case} {dtype}: max rel err {err:.2e}")
    assert err <= backend.tolerance[str(dtype).replace("torch.", "")], err
    if CASES[case][-1]:  # rows with no kept tile give zeros
        empty_rows = (~tiles.kept.any(-1))  # [B, H, T]
        pos = torch.arange(lay.seq_len, device="cuda") // lay.tile_size
        mask = empty_rows[:, :, pos].transpose(1, 2)  # [B, S, H]
        assert mask.any() and out[mask].abs().max() == 0


@pytest.mark.parametrize("name", GPU_BACKENDS)
def test_entry_point_matches_reference_backend(name):
    grid = VideoGrid(3, 30, 52)
    text = 256
    B, H, D = 2, 4, 128
    torch.manual_seed(3)
    q, k, v = (torch.randn(B, grid.num_tokens + text, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    kl = torch.tensor([grid.num_tokens + 200, grid.num_tokens + 5], device="cuda", dtype=torch.int32)
    require(name, AttentionInputs.from_tensors(q, v, 128, True))
    cfg = DraftAttentionConfig(sparsity=0.9, backend=name)
    out, tiles = draft_attention(q, k, v, grid, cfg, text_len=text, key_lengths=kl)
    ref, ref_tiles = draft_attention(q, k, v, grid, cfg.replace(backend="reference"), text_len=text, key_lengths=kl)
    assert torch.equal(tiles.kept, ref_tiles.kept)
    assert rel_err(out, ref) <= get_backend(name).tolerance["bfloat16"]


@pytest.mark.parametrize("dtype,padded", [(torch.bfloat16, False), (torch.bfloat16, True), (torch.float16, True)])
def test_fa4_dense_matches_reference(dtype, padded):
    torch.manual_seed(4)
    B, S, H, D = 2, 5000, 4, 128
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=dtype) for _ in range(3))
    kl = torch.tensor([S - 300, S - 3], device="cuda", dtype=torch.int32) if padded else None
    fa4 = require("fa4", AttentionInputs.from_tensors(q, v, 128, padded))
    out = fa4.dense_forward(q, k, v, kl, D ** -0.5)
    ref = get_backend("reference").dense_forward(q, k, v, kl, D ** -0.5)
    assert rel_err(out, ref) <= fa4.tolerance[str(dtype).replace("torch.", "")]


def test_auto_picks_the_first_backend_that_runs():
    inputs = AttentionInputs("cuda", torch.cuda.get_device_capability(), torch.bfloat16, 128, 128, 128, True)
    chosen = resolve_backend("auto", inputs)
    for name in ["fa4", "flex", "bsa", "reference"]:
        if name == chosen.name:
            break
        assert get_backend(name).not_supported_reasons(inputs), f"auto skipped {name}, which can run"
    print("auto ->", chosen.name)


def test_flex_does_not_recompile_for_new_masks():
    lay, q, k, v, kl, tiles = make_case("text_padded_keys_b2", torch.bfloat16)
    flex = require("flex", AttentionInputs.from_tensors(q, v, 128, True))
    flex.forward(q, k, v, tiles, kl, 0.1)
    lay, q2, k2, v2, kl2, tiles2 = make_case("text_padded_keys_b2", torch.bfloat16, seed=1)
    kl2 = kl2 - 1  # new key lengths and a new mask, same shapes
    with torch._dynamo.config.patch(error_on_recompile=True):
        out = flex.forward(q2, k2, v2, tiles2, kl2, 0.1)
    ref = get_backend("reference").forward(q2, k2, v2, tiles2, kl2, 0.1)
    assert rel_err(out, ref) <= flex.tolerance["bfloat16"]


@pytest.mark.parametrize("name", ["fa4", "flex"])
def test_draft_attention_under_torch_compile(name):
    """The whole draft-attention call compiled; counts graph breaks (printed) and checks the output."""
    grid = VideoGrid(2, 30, 52)
    torch.manual_seed(5)
    q, k, v = (torch.randn(1, grid.num_tokens, 4, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    require(name, AttentionInputs.from_tensors(q, v, 128, False))
    cfg = DraftAttentionConfig(sparsity=0.75, backend=name)

    def fn(q, k, v):
        return draft_attention(q, k, v, grid, cfg)[0]

    eager = fn(q, k, v)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(fn)(q, k, v)
    print(f"{name}: graphs={explained.graph_count} graph_breaks={explained.graph_break_count} "
          f"reasons={[str(b.reason)[:120] for b in explained.break_reasons]}")
    torch._dynamo.reset()
    compiled = torch.compile(fn)(q, k, v)
    assert rel_err(compiled, eager) <= get_backend(name).tolerance["bfloat16"]

"""Backends on CPU: registry, reasons, the auto choice, tile-structure conversion, FlexAttention in eager mode."""

import pytest
import torch

from draftattention_diffusers import DraftAttentionConfig, VideoGrid, draft_attention
from draftattention_diffusers.backends import (BACKEND_NAMES, AttentionInputs, backend_report, get_backend,
                                               resolve_backend)
from draftattention_diffusers.backends.base import SparseAttentionBackend
from draftattention_diffusers.backends.bsa import BlockSparseAttnBackend
from draftattention_diffusers.backends.fa4 import FA4Backend
from draftattention_diffusers.backends.flex import FlexBackend, make_block_mask
from draftattention_diffusers.backends.reference import ReferenceBackend
from draftattention_diffusers.backends.tiles import split_boundary_tiles, tile_indices
from draftattention_diffusers.core import get_layout, select_tiles
from draftattention_diffusers.core.selection import TileMask, build_tile_mask

CPU = AttentionInputs("cpu", None, torch.bfloat16, 128, 128, 128, False)
H100 = AttentionInputs("cuda", (9, 0), torch.bfloat16, 128, 128, 128, True)


def test_registry_lists_every_backend_fastest_first():
    assert BACKEND_NAMES == ("fa4", "flex", "bsa", "reference")
    classes = {"fa4": FA4Backend, "flex": FlexBackend, "bsa": BlockSparseAttnBackend, "reference": ReferenceBackend}
    for name, cls in classes.items():
        assert type(get_backend(name)) is cls and get_backend(name).name == name
    with pytest.raises(ValueError, match="expected 'auto' or one of"):
        get_backend("nope")


def test_auto_on_cpu_is_reference():
    assert resolve_backend("auto", CPU).name == "reference"
    assert resolve_backend("auto", AttentionInputs("cpu", None, torch.float32, 64, 64, 128, True)).name == "reference"


@pytest.mark.parametrize("name", ["fa4", "flex", "bsa"])
def test_explicit_gpu_backend_on_cpu_raises_with_reasons(name):
    with pytest.raises(ValueError, match=rf"backend '{name}' cannot run on device=cpu.*device=cpu \(supported: cuda"):
        resolve_backend(name, CPU)
    grid = VideoGrid(1, 8, 32)
    q = torch.randn(1, grid.num_tokens, 2, 128)
    with pytest.raises(ValueError, match="cannot run"):
        draft_attention(q, q, q, grid, DraftAttentionConfig(sparsity=0.5, backend=name))


def test_missing_packages_name_the_install_line():
    report = backend_report(CPU)
    if FA4Backend().package_missing():
        assert any("pip install flash-attn-4==4.0.0b36" in r for r in report["fa4"])
    if BlockSparseAttnBackend().package_missing():
        assert any("Block-Sparse-Attention" in r for r in report["bsa"])
    assert report["reference"] == []


def _reasons_without_package(backend, inputs, monkeypatch):
    monkeypatch.setattr(type(backend), "package_missing", lambda self: None)
    return backend.not_supported_reasons(inputs)


def test_fa4_reasons_name_actual_and_allowed_values(monkeypatch):
    fa4 = FA4Backend()
    assert _reasons_without_package(fa4, H100, monkeypatch) == []
    a100 = AttentionInputs("cuda", (8, 0), torch.bfloat16, 128, 128, 128, False)
    (r,) = fa4.not_supported_reasons(a100)
    assert "sm80" in r and "sm90" in r and "ignores the block-sparse mask" in r
    (r,) = fa4.not_supported_reasons(AttentionInputs("cuda", (10, 0), torch.bfloat16, 128, 128, 128, False))
    assert "sm100" in r and "256-row" in r
    bad = AttentionInputs("cuda", (9, 0), torch.float32, 260, 128, 64, False)
    reasons = " | ".join(fa4.not_supported_reasons(bad))
    assert "dtype=float32 (supported: float16, bfloat16)" in reasons
    assert "head_dim=260" in reasons and "tile_size=64 (supported: 128" in reasons


def test_flex_reasons(monkeypatch):
    flex = FlexBackend()
    import draftattention_diffusers.backends.flex as flex_module

    monkeypatch.setattr(flex_module, "_HAS_TRITON", True)
    assert _reasons_without_package(flex, H100, monkeypatch) == []
    reasons = flex.not_supported_reasons(CPU)
    assert len(reasons) == 1 and "device=cpu" in reasons[0] and "FlexBackend().forward" in reasons[0]
    odd = AttentionInputs("cuda", (7, 5), torch.int8, 96, 96, 256, False)
    text = " | ".join(flex.not_supported_reasons(odd))
    assert "sm75" in text and "dtype=int8" in text and "head_dim=96" in text and "tile_size=256" in text


def test_bsa_reasons(monkeypatch):
    bsa = BlockSparseAttnBackend()
    assert _reasons_without_package(bsa, H100, monkeypatch) == []
    text = " | ".join(bsa.not_supported_reasons(AttentionInputs("cuda", (9, 0), torch.float16, 80, 80, 128, False)))
    assert "head_dim=80" in text


class _DataOnly(SparseAttentionBackend):
    """A backend declared only with data: every limit the base class knows."""

    name = "data-only"
    package, requires, install_hint = "fakepkg", ("draftattention_no_such_module",), "pip install fakepkg"
    devices = ("cuda", "cpu")
    min_compute_capability, max_compute_capability = (8, 0), (9, 0)
    capability_note = "; the kernel needs TMA"
    dtypes = (torch.float16,)
    head_dims = (64, 128)
    tile_sizes = (64, 128)
    tile_size_note = ", its block size"


def test_data_only_backend_reasons_are_worded_by_the_base_class(monkeypatch):
    fake = _DataOnly()
    (missing,) = fake.not_supported_reasons(AttentionInputs("cpu", None, torch.float16, 64, 64, 128, False))
    assert missing.startswith("fakepkg is not importable (ModuleNotFoundError: ")
    assert missing.endswith("; install: pip install fakepkg")
    monkeypatch.setattr(_DataOnly, "package_missing", lambda self: None)

    def reasons(device="cuda", cc=(9, 0), dtype=torch.float16, hd=128, vd=128, tile=128, grad=False):
        return fake.not_supported_reasons(AttentionInputs(device, cc, dtype, hd, vd, tile, False, grad))

    assert reasons() == [] and reasons(cc=(8, 6)) == [] and reasons("cpu", None) == []  # no capability on CPU
    assert reasons("mps", None) == ["device=mps (supported: cuda, cpu)"]
    for cc, sm in (((7, 5), "sm75"), ((10, 0), "sm100"), (None, "sm00")):
        assert reasons(cc=cc) == [f"GPU {sm} (supported: sm80 to sm90; the kernel needs TMA)"]
    assert reasons(dtype=torch.bfloat16) == ["dtype=bfloat16 (supported: float16)"]
    assert reasons(hd=96) == ["head_dim=96 (supported: 64, 128)"]
    assert reasons(vd=80) == ["value head_dim=80 (supported: 64, 128)"]
    assert reasons(tile=256) == ["tile_size=256 (supported: 64, 128, its block size)"]
    assert reasons(grad=True) == ["no backward pass (training needs gradients): use backend 'flex' (CUDA) or "
                                  "'reference'"]
    # every reason at once, in the documented order
    assert reasons(cc=(7, 0), dtype=torch.float32, hd=32, vd=48, tile=32, grad=True) == [
        "no backward pass (training needs gradients): use backend 'flex' (CUDA) or 'reference'",
        "GPU sm70 (supported: sm80 to sm90; the kernel needs TMA)",
        "dtype=float32 (supported: float16)",
        "head_dim=32 (supported: 64, 128)",
        "value head_dim=48 (supported: 64, 128)",
        "tile_size=32 (supported: 64, 128, its block size)",
    ]
    assert _DataOnly.limits() == {"device": "cuda, cpu", "compute capability": "sm80 to sm90; the kernel needs TMA",
                                  "dtype": "float16", "head_dim": "64, 128", "tile_size": "64, 128, its block size",
                                  "backward": "no"}


def test_data_only_head_dim_rules_and_capability_bounds():
    class Ranged(SparseAttentionBackend):
        head_dim_range = (8, 256, 8)
        min_compute_capability = (8, 0)
        supports_backward = True

    class Equal(SparseAttentionBackend):
        head_dims = (32, 64)
        value_dim_equals_head_dim = True
        max_compute_capability = (9, 0)

    def reasons(backend, hd, vd, cc=(9, 0)):
        return backend.not_supported_reasons(AttentionInputs("cuda", cc, torch.float16, hd, vd, 128, False, True))

    assert reasons(Ranged(), 8, 256) == [] and reasons(Ranged(), 136, 64) == []
    assert reasons(Ranged(), 260, 12, (7, 5)) == ["GPU sm75 (supported: sm80 or newer)",
                                                  "head_dim=260 (supported: multiples of 8 from 8 to 256)",
                                                  "value head_dim=12 (supported: multiples of 8 from 8 to 256)"]
    assert reasons(Equal(), 64, 64) == ["no backward pass (training needs gradients): use backend 'flex' (CUDA) or "
                                        "'reference'"]
    assert reasons(Equal(), 64, 32, (10, 0))[1:] == ["GPU sm100 (supported: sm90 or older)",
                                                     "head_dim=64, value head_dim=32 (supported: equal, one of 32, 64)"]
    with pytest.raises(TypeError, match="head_dims or head_dim_range, not both"):
        class Both(SparseAttentionBackend):
            head_dims, head_dim_range = (64,), (8, 256, 8)
    with pytest.raises(TypeError, match="devices must be a tuple, not str"):
        class Typo(SparseAttentionBackend):
            devices = "cuda"


_BACKWARD = "no backward pass (training needs gradients): use backend 'flex' (CUDA) or 'reference'"
_FLEX_CPU = ("device=cpu (supported: cuda; on CPU FlexAttention runs eagerly over a dense S x S mask: for tests only, "
             "call FlexBackend().forward directly)")
_FA4_SM80 = ("GPU sm80 (supported: sm90 Hopper; flash-attn-4 ignores the block-sparse mask on sm8x and needs 256-row "
             "query blocks on sm100, not 128)")
# Every registered backend's reasons as the hand-written checks worded them before limits became data (packages
# importable, Triton available).
_REASONS_BEFORE = [
    (AttentionInputs("cpu", None, torch.float32, 64, 64, 128, False), {
        "fa4": ["device=cpu (supported: cuda on Hopper sm90)", "dtype=float32 (supported: float16, bfloat16)"],
        "flex": [_FLEX_CPU],
        "bsa": ["device=cpu (supported: cuda, sm80 or newer)", "dtype=float32 (supported: float16, bfloat16)"],
        "reference": []}),
    (AttentionInputs("cuda", (9, 0), torch.bfloat16, 128, 128, 128, False),
     {"fa4": [], "flex": [], "bsa": [], "reference": []}),
    (AttentionInputs("cuda", (8, 0), torch.float16, 96, 96, 128, False), {
        "fa4": [_FA4_SM80],
        "flex": ["head_dim=96 (supported: 16, 32, 64, 128, 256)",
                 "value head_dim=96 (supported: 16, 32, 64, 128, 256)"],
        "bsa": ["head_dim=96, value head_dim=96 (supported: equal, one of 32, 64, 128)"],
        "reference": []}),
    (AttentionInputs("cuda", (9, 0), torch.bfloat16, 128, 128, 128, False, needs_grad=True),
     {"fa4": [_BACKWARD], "flex": [], "bsa": [_BACKWARD], "reference": []}),
]


@pytest.mark.parametrize("inputs,expected", _REASONS_BEFORE, ids=["cpu-f32-64", "sm90-bf16-128", "sm80-f16-96",
                                                                  "sm90-bf16-128-grad"])
def test_registered_backends_reasons_unchanged(inputs, expected, monkeypatch):
    import draftattention_diffusers.backends.flex as flex_module

    monkeypatch.setattr(flex_module, "_HAS_TRITON", True)
    for name in BACKEND_NAMES:
        monkeypatch.setattr(type(get_backend(name)), "package_missing", lambda self: None)
    assert {name: get_backend(name).not_supported_reasons(inputs) for name in BACKEND_NAMES} == expected


def test_special_reasons_stay_special(monkeypatch):
    import draftattention_diffusers.backends.flex as flex_module

    monkeypatch.setattr(flex_module, "_HAS_TRITON", False)
    no_triton = FlexBackend().not_supported_reasons(AttentionInputs("cuda", (7, 5), torch.float16, 64, 64, 128, False))
    assert no_triton[-2:] == ["GPU sm75 (supported: sm80 or newer)",
                              "Triton is not available (FlexAttention compiles its CUDA kernel with Triton)"]
    assert FlexBackend().not_supported_reasons(CPU)[-1] == _FLEX_CPU  # Triton is not asked about on CPU
    integer = AttentionInputs("mps", None, torch.int8, 12, 7, 16, False, needs_grad=True)
    assert ReferenceBackend().not_supported_reasons(integer) == ["dtype=torch.int8 (supported: floating point)"]


def _loop_indices(kept):
    B, H, T, _ = kept.shape
    counts = torch.zeros(B, H, T, dtype=torch.int32)
    lists = {}
    for b in range(B):
        for h in range(H):
            for i in range(T):
                cols = [j for j in range(kept.shape[-1]) if kept[b, h, i, j]]
                counts[b, h, i] = len(cols)
                lists[b, h, i] = cols
    return counts, lists


@pytest.mark.parametrize("shape,p", [((2, 3, 7, 7), 0.3), ((1, 2, 5, 9), 0.8), ((1, 1, 4, 4), 0.0),
                                     ((2, 2, 6, 6), 1.0)])
def test_tile_indices_match_a_loop(shape, p):
    torch.manual_seed(0)
    kept = torch.rand(shape) < p
    counts, idx = tile_indices(kept)
    assert counts.dtype == idx.dtype == torch.int32 and idx.shape == kept.shape
    want_counts, lists = _loop_indices(kept)
    assert torch.equal(counts, want_counts)
    for (b, h, i), cols in lists.items():
        assert idx[b, h, i, : len(cols)].tolist() == cols
        skipped = [j for j in range(kept.shape[-1]) if j not in cols]
        assert idx[b, h, i, len(cols):].tolist() == skipped  # then the skipped tiles, ascending


def test_tile_indices_rejects_non_bool():
    with pytest.raises(ValueError, match="expected a bool tensor"):
        tile_indices(torch.ones(1, 1, 2, 2))


def test_split_boundary_tiles():
    kept = torch.ones(2, 1, 3, 4, dtype=torch.bool)
    full, boundary = split_boundary_tiles(kept, 128, torch.tensor([3 * 128 + 5, 2 * 128]))
    assert boundary[0, 0, :, 3].all() and boundary[0].sum() == 3  # key tile 3 holds the end of batch 0's keys
    assert boundary[1].sum() == 0  # batch 1 ends on a tile border: no partial tile
    assert torch.equal(full | boundary, kept) and not (full & boundary).any()
    assert split_boundary_tiles(kept, 128, None) == (kept, None)


def _case(grid, text_len, B=2, H=3, D=64, sparsity=0.7, rule="paper", padded=True, dtype=torch.float32):
    torch.manual_seed(1)
    lay = get_layout(VideoGrid(*grid), text_len, (8, 16))
    S = lay.seq_len
    q, k, v = (torch.randn(B, S, H, D, dtype=dtype) for _ in range(3))
    kl = None
    if padded and text_len:
        kl = torch.tensor([S - text_len // 2, lay.num_video_tokens + 1] * B)[:B]
    return lay, q, k, v, kl, select_tiles(q, k, lay, sparsity, rule, "avg", None, kl)


@pytest.mark.parametrize("grid,text_len", [((2, 9, 20), 0), ((2, 9, 20), 37), ((1, 16, 16), 0), ((1, 8, 24), 128)])
def test_flex_block_mask_is_the_tile_mask(grid, text_len):
    lay, q, k, v, kl, tiles = _case(grid, text_len)
    bm = make_block_mask(tiles, kl)
    dense = bm.to_dense().bool()  # blocks it visits (partial or full)
    assert torch.equal(dense, tiles.kept)
    if kl is not None:  # only the tile holding the end of the live keys is partial
        partial = torch.zeros_like(tiles.kept)
        for b, n in enumerate(kl.tolist()):
            if n % 128:
                partial[b, :, :, n // 128] = tiles.kept[b, :, :, n // 128]
        counts = bm.kv_num_blocks
        assert torch.equal(counts, partial.sum(-1).int())


@pytest.mark.parametrize("grid,text_len,padded", [((2, 9, 20), 0, False), ((2, 9, 20), 37, True),
                                                  ((1, 8, 24), 128, True), ((3, 8, 16), 5, False)])
def test_flex_eager_matches_reference_on_cpu(grid, text_len, padded):
    lay, q, k, v, kl, tiles = _case(grid, text_len, padded=padded)
    ref = ReferenceBackend().forward(q, k, v, tiles, kl, 0.125)
    out = FlexBackend().forward(q, k, v, tiles, kl, 0.125)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_flex_eager_empty_rows_give_zeros():
    lay, q, k, v, kl, tiles = _case((2, 8, 16), 0, padded=False)
    kept = tiles.kept.clone()
    kept[:, :, 1] = False  # query tile 1 attends nothing
    tiles = TileMask(kept, lay, tiles.video_sparsity)
    out = FlexBackend().forward(q, k, v, tiles, None, 0.125)
    ref = ReferenceBackend().forward(q, k, v, tiles, None, 0.125)
    assert out[:, 128:256].abs().max() == 0 and (out - ref).abs().max() < 1e-5


def test_fa4_custom_op_has_a_fake_kernel():
    # torch.compile traces the kernel call through its fake implementation; no GPU or flash-attn-4 needed.
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 300, 4, 128, dtype=torch.bfloat16)
        v = torch.empty(2, 300, 4, 64, dtype=torch.bfloat16)
        cnt = torch.empty(2, 4, 3, dtype=torch.int32)
        idx = torch.empty(2, 4, 3, 3, dtype=torch.int32)
        out = torch.ops.draftattention.fa4_attention(q, q, v, cnt, idx, None, 0.1, 128)
    assert out.shape == (2, 300, 4, 64) and out.dtype == torch.bfloat16


def test_fa4_plan_is_ascending_full_lists():
    lay, q, k, v, kl, tiles = _case((2, 9, 20), 37)
    plan = FA4Backend().plan(tiles, kl)
    assert plan.seqused_k.dtype == torch.int32 and plan.seqused_k.tolist() == kl.tolist()
    for b, h, i in [(0, 0, 0), (1, 2, 3), (0, 1, lay.num_tiles - 1)]:
        n = int(plan.counts[b, h, i])
        cols = plan.indices[b, h, i, :n].tolist()
        assert cols == sorted(cols) and cols == tiles.kept[b, h, i].nonzero().flatten().tolist()


def test_status_report_lists_every_backend():
    from draftattention_diffusers.info import backend_status_report

    text = backend_status_report(device="cpu")
    for name in BACKEND_NAMES:
        assert f"  {name}" in text
    assert "torch " in text and "diffusers" in text and "auto -> reference" in text
    from draftattention_diffusers.info import supported_models_report

    models = supported_models_report()
    assert "LTX-Video: LTXVideoTransformer3DModel; LTXPipeline, " in models and "LTXImageToVideoPipeline --image" in models
    assert "Wan VACE" in models and "tiny-hunyuan15" in models
    assert "reference  ok" in text


def test_build_tile_mask_drops_wholly_padded_key_tiles_for_every_backend():
    # Kernels rely on this: a key tile past the live keys is never in the lists.
    lay = get_layout(VideoGrid(1, 8, 16), 300, (8, 16))
    keep = torch.ones(1, 1, 1, 1, dtype=torch.bool)
    tiles = build_tile_mask(keep, lay, torch.tensor([128 + 100]))
    assert tiles.kept[0, 0, :, 1].all() and not tiles.kept[0, 0, :, 2:].any()

"""Float8 linear layers (torchao's Float8DynamicActivationFloat8WeightConfig) in the fast stack, with draft attention.

torchao refuses float8 dynamic quantization without a CUDA GPU of compute capability >= 8.9 (its
``_check_hardware_support``); the stack refuses it up front with that reason. The float8 arithmetic itself runs on a
CPU (torch's CPU ``_scaled_mm``), so these tests lift torchao's hardware check and run the real quantized layers:
what is quantized, that draft attention still runs, how far one forward moves from bf16, and that the undo gives
back bit-identical weights and outputs. Speed needs the GPU (docs/benchmarks.md)."""

import warnings

import pytest
import torch
from pipeline_utils import max_diff, run
from stack_utils import diff_footprints, footprint

from draftattention_diffusers import disable_fast_stack, enable_fast_stack, get_draft_stats
from draftattention_diffusers.tiny import build_tiny_pipeline

torchao_quant = pytest.importorskip("torchao.quantization")
SPARSITY_0 = dict(sparsity=0.0, dense_steps_fraction=0.0, backend="reference")


def bf16_pipe(family="wan"):
    pipe = build_tiny_pipeline(family)
    pipe.transformer.to(torch.bfloat16)
    return pipe


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where torchao cannot run float8")
def test_fp8_is_refused_where_torchao_cannot_run_it():
    pipe = bf16_pipe()
    before = footprint(pipe)
    with pytest.raises(ValueError, match="torchao cannot run float8 dynamic quantization here"):
        enable_fast_stack(pipe, "first_block", compile=False, fp8=True)
    assert diff_footprints(before, footprint(pipe)) == []


@pytest.mark.parametrize("family", ["wan", "hunyuan"])
def test_fp8_with_draft_attention_and_exact_undo(float8_on_cpu, family):
    pipe = bf16_pipe(family)
    kw = dict(guidance_scale=5.0) if family == "wan" else {}
    ref, _ = run(pipe, steps=2, **kw)
    weights = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    before = footprint(pipe)
    with pytest.warns(UserWarning, match="fp8=True with compile=False: measured slower than bf16"):
        stack = enable_fast_stack(pipe, None, compile=False, fp8=True, **SPARSITY_0)
    t = pipe.transformer
    quantized = {n for n, m in t.named_modules() if isinstance(m, torch.nn.Linear)
                 and type(m.weight).__name__ == "Float8Tensor"}
    try:
        blocks = t.blocks if family == "wan" else t.transformer_blocks
        attn = blocks[0].attn1 if family == "wan" else blocks[0].attn
        assert type(attn.to_q.weight).__name__ == "Float8Tensor"
        assert {entry[1] for entry in stack._fp8_modules} == quantized
        # the linear layers of the repeated blocks, nothing else (embeddings, output projection keep bf16)
        blocks_of = [n for n, m in t.named_modules() if type(m).__name__ in t._repeated_blocks]
        assert quantized and all(any(n.startswith(b + ".") for b in blocks_of) for n in quantized)
        assert not any(n.startswith(("proj_out", "condition_embedder", "time_text_embed")) for n in quantized)
        assert type(attn.processor).__name__.endswith("DraftAttnProcessor")  # draft attention still installed
        out, _ = run(pipe, steps=2, **kw)
        stats = get_draft_stats(pipe).summary()
    finally:
        disable_fast_stack(pipe)
    assert stats["sparse_calls"] > 0 and stats["fallbacks"] == {}
    # float8 (e4m3) weights and activations: a real change, within a few percent of the output's scale
    diff, scale = max_diff(out, ref), ref.abs().max().item()
    assert 0 < diff < 0.1 * scale, (diff, scale)
    after = pipe.transformer.state_dict()
    assert set(after) == set(weights) and all(torch.equal(after[k], weights[k]) for k in weights)
    assert diff_footprints(before, footprint(pipe)) == []
    assert torch.equal(run(pipe, steps=2, **kw)[0], ref)


@pytest.mark.slow  # ~90 s on a CPU: dynamo traces torchao's float8 tensor subclass
def test_fp8_with_cache_and_compile(float8_on_cpu):
    """The whole stack: draft attention, First Block Cache, float8 linears, regional compile (aot_eager): runs
    sparse with the quantized layers inside the compiled blocks, equal to the same stack uncompiled."""
    import torch._dynamo as dynamo

    pipe = bf16_pipe()
    mask = [True, True, False, True]
    with pytest.warns(UserWarning, match="compile=False"):
        enable_fast_stack(pipe, "first_block", compile=False, fp8="tensor", compute_mask=mask, sparsity=0.5)
    want, _ = run(pipe, steps=4, guidance_scale=5.0)
    disable_fast_stack(pipe)
    dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:  # compiled float8 is measured faster: no warning
        warnings.simplefilter("always")
        stack = enable_fast_stack(pipe, "first_block", fp8="tensor", compute_mask=mask, sparsity=0.5,
                                  compile_kwargs=dict(backend="aot_eager"))
    assert [str(w.message) for w in caught if "fp8" in str(w.message)] == []
    try:
        assert [line.split(" ")[0] for line in stack.describe()] == ["draft", "diffusers", "torchao",
                                                                      "compile_repeated_blocks(backend='aot_eager')"]
        got, _ = run(pipe, steps=4, guidance_scale=5.0)
        stats = get_draft_stats(pipe).summary()
    finally:
        disable_fast_stack(pipe)
    assert stats["sparse_calls"] > 0
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("compile_kwargs, want", [
    (None, dict(options={"max_autotune_gemm_backends": "ATEN"})),
    (dict(options={"triton.cudagraphs": False}),
     dict(options={"triton.cudagraphs": False, "max_autotune_gemm_backends": "ATEN"})),
    (dict(mode="max-autotune"), dict(mode="max-autotune")),  # torch.compile refuses mode with options
    (dict(options={"max_autotune": True}), dict(options={"max_autotune": True})),  # the user asked to autotune
    (dict(backend="aot_eager"), dict(backend="aot_eager")),  # options are inductor's
])
def test_fp8_compiles_with_cublas_float8_matmuls(float8_on_cpu, compile_kwargs, want):
    """A float8 stack compiled by inductor asks for cuBLAS's _scaled_mm only: inductor otherwise autotunes Triton
    templates for every float8 matmul shape even without max-autotune (minutes of warm-up on an H100); a user's
    own choice of how to tune is kept."""
    pipe = bf16_pipe()
    stack = enable_fast_stack(pipe, None, fp8=True, compile_kwargs=compile_kwargs, **SPARSITY_0)
    try:
        assert stack.compile_kwargs == want
        assert all(m._compiled_call_impl is not None for m in pipe.transformer.blocks)
    finally:
        disable_fast_stack(pipe)
    bf16 = enable_fast_stack(pipe, None, compile_kwargs=compile_kwargs, **SPARSITY_0)  # bf16: the user's, as given
    try:
        assert bf16.compile_kwargs == dict(compile_kwargs or {})
    finally:
        disable_fast_stack(pipe)


def test_fp8_leaves_inductor_settings_alone(float8_on_cpu):
    """torchao's float8 config by default turns on inductor's coordinate descent tuning (all directions) for the
    whole process: on a GPU every Triton kernel of every compiled graph is then benchmarked (the float8 stack's first
    calls ran over 8 minutes at Wan 14B), and it outlives disable_fast_stack. The stack asks torchao not to."""
    import torch._inductor.config as inductor_config

    before = inductor_config.get_config_copy()
    pipe = bf16_pipe()
    enable_fast_stack(pipe, None, compile=False, fp8=True, **SPARSITY_0)
    try:
        after = inductor_config.get_config_copy()
        assert {k: after[k] for k in before if after[k] != before[k]} == {}
    finally:
        disable_fast_stack(pipe)


def test_fp8_per_row_on_float32_weights_is_refused_first(float8_on_cpu):
    """torchao's per-row float8 needs bfloat16 weights (it asserts midway through quantize_ otherwise): the stack
    says so, with the two ways out, before anything changes; per-tensor scales run on float32 weights."""
    pipe = build_tiny_pipeline("wan")  # float32
    before = footprint(pipe)
    with pytest.raises(ValueError, match="torchao needs bfloat16 weights, but WanTransformer3DModel's block linears "
                                         "are float32; load the transformer in torch.bfloat16"):
        enable_fast_stack(pipe, None, compile=False, fp8=True)
    assert diff_footprints(before, footprint(pipe)) == []
    with pytest.warns(UserWarning, match="compile=False"):
        stack = enable_fast_stack(pipe, None, compile=False, fp8="tensor", **SPARSITY_0)
    try:
        assert [line.split(" ")[0] for line in stack.describe()] == ["draft", "torchao"]
        out, _ = run(pipe, steps=2)
        assert torch.isfinite(out).all()
    finally:
        disable_fast_stack(pipe)
    assert diff_footprints(before, footprint(pipe)) == []


def test_fp8_on_a_transformer_without_declared_blocks_is_refused_first(float8_on_cpu):
    pipe = build_tiny_pipeline("cosmos")
    pipe.transformer.to(torch.bfloat16)
    before = footprint(pipe)
    with pytest.raises(ValueError, match="declares no repeated blocks"):
        enable_fast_stack(pipe, None, compile=False, fp8=True)
    assert diff_footprints(before, footprint(pipe)) == []

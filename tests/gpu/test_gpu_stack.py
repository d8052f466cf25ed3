"""enable_fast_stack on the GPU, as users call it: draft attention (flash-attn-4) -> First Block Cache on a fixed
schedule -> float8 linear layers (torchao, Wan) -> regional inductor compile, on the tiny bf16 pipelines at a grid of
two regions per frame row (the tile order is not the identity). With every tile kept it equals the same stack without
draft attention; at 0.75 it runs sparse under compile and its statistics say so; the undo leaves nothing (hooks,
processors, weights, dynamo's and inductor's settings). The CPU suite checks the same with the reference kernel and
aot_eager (tests/test_stack.py, tests/test_fp8.py); only here do inductor, flash-attn-4 and float8 matmuls run."""

import pytest
import torch
import torch._dynamo as dynamo
from stack_utils import diff_footprints, footprint
from test_gpu_composition import rel, run, tiny

from draftattention_diffusers import disable_fast_stack, enable_fast_stack, get_draft_stats
from draftattention_diffusers.integration.stack import check_fp8

STEPS = 4
MASK = [True, True, False, True]  # First Block Cache computes steps 0, 1, 3 and skips 2: random weights decide nothing


@pytest.mark.parametrize("family, fp8", [("wan", True), ("hunyuan", False)])
def test_fast_stack_compiled_on_gpu_equals_it_without_draft_and_undoes(family, fp8):
    if fp8:
        try:
            check_fp8(True)  # the stack's own check: torchao installed, and a GPU it runs float8 on
        except ValueError as e:
            pytest.skip(str(e))
    pipe = tiny(family)
    before = footprint(pipe)
    weights = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    outs, stats = {}, {}
    settings = {"without draft": dict(draft=False),
                "every tile": dict(sparsity=0.0, dense_steps_fraction=0.0, backend="fa4"),
                "sparse": dict(sparsity=0.75, dense_steps_fraction=0.25, backend="fa4")}
    for name, kw in settings.items():
        dynamo.reset()
        enable_fast_stack(pipe, "first_block", fp8=fp8, compute_mask=MASK, **kw)
        try:
            run(pipe, steps=STEPS)  # the two warm-up calls the docstring asks for
            run(pipe, steps=STEPS)
            outs[name] = run(pipe, steps=STEPS)
            stats[name] = get_draft_stats(pipe).summary() if kw.get("draft", True) else None
        finally:
            disable_fast_stack(pipe)
    dynamo.reset()

    # every tile kept: draft attention reorders tokens and runs the block-sparse path, and computes what the
    # stack without it computes (bf16 / float8 rounding of two compiled graphs)
    assert rel(outs["every tile"], outs["without draft"]) < 3e-2
    assert stats["every tile"]["sparse_calls"] > 0 and stats["every tile"]["fallbacks"] == {}
    # sparse under compile: counted per step (the compiled calls are not "skipped by a cache"), finite
    sparse = stats["sparse"]
    assert sparse["steps"] == {0: "dense", 1: "sparse", 2: "sparse", 3: "sparse"}, sparse["steps"]
    assert sparse["sparse_calls"] > 0 and sparse["dense_calls"] > 0 and sparse["fallbacks"] == {}
    assert torch.isfinite(outs["sparse"]).all() and rel(outs["sparse"], outs["without draft"]) > 0
    # the undo: nothing left, the bf16 weights back bit for bit
    assert diff_footprints(before, footprint(pipe)) == []
    after = pipe.transformer.state_dict()
    assert set(after) == set(weights) and all(torch.equal(after[k], weights[k]) for k in weights)

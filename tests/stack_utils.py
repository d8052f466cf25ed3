"""Helpers of the fast-stack tests (tests/test_stack.py, test_cache_dit.py, test_fp8.py)."""

from __future__ import annotations

import torch

HOOK_TABLES = ("_forward_pre_hooks", "_forward_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs",
               "_backward_hooks", "_backward_pre_hooks")
# compared by value below, not by name: the compiled call; diffusers' hook registry by the hooks it holds (running a
# pipeline creates an empty one on the transformer: the loop's `cache_context` initialises it)
VOLATILE = {"_compiled_call_impl", "_diffusers_hook"}


def footprint(pipe) -> dict:
    """Everything an installed part could leave on a pipeline's transformers: per module the attribute names, the
    torch hooks per table, the diffusers hooks by name, the attention processor's class, the compiled call, the
    order of its children; the
    pipeline class's ``__call__`` (cache-dit patches it); the process-wide settings a library may change: dynamo's and
    inductor's configs (torchao's float8 config turns on inductor's coordinate descent tuning unless told not to) and
    the float32 matmul precision."""
    import torch._inductor.config as inductor_config

    out = {"pipeline_call": type(pipe).__dict__.get("__call__"),
           "recompile_limit": torch._dynamo.config.recompile_limit,
           "float32_matmul_precision": torch.get_float32_matmul_precision()}
    for name, config in (("dynamo", torch._dynamo.config), ("inductor", inductor_config)):
        for key, value in config.get_config_copy().items():
            out[f"{name}_config.{key}"] = repr(value)
    for tname in ("transformer", "transformer_2"):
        t = getattr(pipe, tname, None)
        if t is None:
            continue
        for name, m in t.named_modules():
            registry = m.__dict__.get("_diffusers_hook")
            out[f"{tname}.{name}"] = (
                tuple(sorted(set(m.__dict__) - VOLATILE)),
                tuple(len(getattr(m, table)) for table in HOOK_TABLES),
                tuple(sorted(registry.hooks)) if registry is not None else (),
                type(getattr(m, "processor", None)).__name__,
                m.__dict__.get("_compiled_call_impl"),
                tuple(sorted(m._parameters)), tuple(type(p.data).__name__ for p in m._parameters.values()
                                                      if p is not None),
                tuple(m._modules),  # the children's order: diffusers' caches find their head block by it
            )
    return out


def diff_footprints(a: dict, b: dict) -> list[str]:
    return [f"{k}: {a.get(k)} != {b.get(k)}" for k in sorted(set(a) | set(b), key=str) if a.get(k) != b.get(k)]


def computed_forwards(stats: dict, forwards_blocks: int, first_blocks: int) -> int:
    """How many forwards ran every block, from draft attention's call counts, on a model whose forwards run either
    all ``forwards_blocks`` self-attention layers (computed) or only the first ``first_blocks`` (cached by a
    DBCache-style cache): calls = forwards x first + computed x (all - first)."""
    calls = stats["sparse_calls"] + stats["dense_calls"]
    rest = calls - stats["forwards"] * first_blocks
    per = forwards_blocks - first_blocks
    assert rest % per == 0, (calls, stats["forwards"], forwards_blocks, first_blocks)
    return rest // per

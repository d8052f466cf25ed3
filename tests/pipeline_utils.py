"""Shared helpers for the tests that run tiny pipelines (CPU, no downloads)."""

from __future__ import annotations

import torch

from draftattention_diffusers.tiny import tiny_prompt_kwargs

# 128 x 512 pixels -> 8 x 32 tokens per frame: two 8x16 regions side by side, so the tile order is NOT the identity
# (a grid with one region per frame would hide token-order bugs). 5 frames -> 2 latent frames -> 4 tiles.
REORDERING_SIZE = dict(height=128, width=512, num_frames=5)


def run(pipe, steps: int = 6, seed: int = 0, size: dict = REORDERING_SIZE, **kwargs):
    """Run a tiny pipeline; returns (final latents, latents after each step)."""
    per_step = []

    def keep(p, i, t, cb):
        per_step.append(cb["latents"].clone())
        return cb

    kw = dict(tiny_prompt_kwargs(pipe), **size, num_inference_steps=steps, output_type="latent",
              generator=torch.Generator().manual_seed(seed), callback_on_step_end=keep)
    kw.update(kwargs)
    return pipe(**kw).frames, per_step


def run_tiny_call(pipe, steps: int, seed: int = 0) -> torch.Tensor:
    """One call of a tiny pipeline at its family's ``tiny_call`` size (several regions per frame, so the tile order
    is not the identity); returns the final latents (FramePack: the history after its last section)."""
    from draftattention_diffusers.models import family_for_pipeline

    frames = pipe(**tiny_prompt_kwargs(pipe), **family_for_pipeline(pipe).tiny_call, num_inference_steps=steps,
                  output_type="latent", generator=torch.Generator().manual_seed(seed)).frames
    return frames[-1] if isinstance(frames, list) else frames


def is_wan(pipe) -> bool:
    return type(pipe).__name__.startswith("Wan")


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def uncompile(model: torch.nn.Module) -> None:
    """Back to eager after ``module.compile()`` / ``compile_repeated_blocks`` anywhere in ``model`` (each set its
    ``_compiled_call_impl``), and forget dynamo's graphs."""
    import torch._dynamo as dynamo

    for module in model.modules():
        module._compiled_call_impl = None
    dynamo.reset()


def watch_compilation(monkeypatch):
    """``(eager_calls, graphs, backend)``: ``eager_calls`` gets an entry for every Wan video self-attention call that
    runs outside a compiled graph, ``graphs`` every graph the ``backend`` (a torch.compile backend that runs the
    graph as traced) compiles."""
    from diffusers.models.transformers.transformer_wan import WanAttention

    eager_calls, graphs = [], []
    forward = WanAttention.forward

    def counted(self, *args, **kwargs):
        if not self.is_cross_attention and not torch.compiler.is_compiling():
            eager_calls.append(1)
        return forward(self, *args, **kwargs)

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(WanAttention, "forward", counted)
    return eager_calls, graphs, backend

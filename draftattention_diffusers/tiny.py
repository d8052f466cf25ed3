"""Tiny random-weight Wan / HunyuanVideo pipelines: no download, no text encoder, run on a CPU in seconds.

They exercise exactly the diffusers code paths of the real models (same classes, token layout, RoPE, masks), with
a handful of channels. Prompts are fixed random embeddings (:func:`tiny_prompt_kwargs`). Each model family owns its
builders (``ModelFamily.tiny_variants``); these helpers look them up in the family table.

Example:
    >>> pipe = build_tiny_pipeline("wan")
    >>> video = pipe(**tiny_prompt_kwargs(pipe), height=64, width=128, num_frames=5, num_inference_steps=2,
    ...              output_type="latent").frames
"""

from __future__ import annotations

import torch

from .models import family_for, family_for_pipeline, tiny_alias, tiny_builder, tiny_models

TINY_FAMILIES = tuple(tiny_alias(name) for name in tiny_models())
"""Short names of the tiny pipelines (``"wan"``, ``"wan22"``, ``"hunyuan"``): the ``--model`` names without
``tiny-``."""


def build_tiny_pipeline(family: str = TINY_FAMILIES[0], seed: int = 0, num_layers: int = 2, heads: int = 2):
    """A tiny pipeline: ``"wan"`` (Wan2.1 T2V), ``"wan22"`` (Wan2.2 A14B-style, two transformers with a boundary)
    or ``"hunyuan"`` (HunyuanVideo); also by ``--model`` name (``"tiny-wan"``) or family name
    (``"hunyuan_video"``). Weights are random (seeded), float32, on CPU.

    Head dim is 32; VAE compresses 8x spatially and 4x temporally like the real models, so ``height x width``
    pixels give ``height/16 x width/16`` tokens per frame.

    Raises ``ValueError`` for an unknown name (the message lists the accepted ones).
    """
    _, builder = tiny_builder(family)
    return builder(seed, num_layers, heads)


def tiny_prompt_kwargs(pipe, seed: int = 0, text_len: int = 16, valid_len: int | None = None,
                       negative: bool = True) -> dict:
    """Fixed random prompt embeddings for a tiny pipeline (what a text encoder would have produced).

    ``valid_len`` (HunyuanVideo) marks only the first ``valid_len`` of ``text_len`` text tokens as real, the rest
    as padding, as the tokenizer's ``max_length`` padding does.

    Raises ``ValueError`` for a pipeline no supported family serves.
    """
    family = family_for_pipeline(pipe) or family_for(getattr(pipe, "transformer", None))
    if family is None:
        raise ValueError(f"tiny_prompt_kwargs: {type(pipe).__name__} is not a pipeline of a supported family")
    g = torch.Generator().manual_seed(seed)
    return family.tiny_prompt_kwargs(pipe, lambda *shape: torch.randn(*shape, generator=g), text_len, valid_len,
                                     negative)

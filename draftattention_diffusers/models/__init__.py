"""Supported model families: the one table (``_FAMILIES``) everything else derives from (processor, enable,
context parallelism, command line, tiny pipelines). Adding a family: a module with a :class:`ModelFamily` subclass
and a line in ``_FAMILIES``."""

from __future__ import annotations

import torch

from .base import AttentionRole, LoadRecipe, ModelFamily, TinyBuilder
from .allegro import AllegroFamily
from .anyflow import AnyFlowFamily
from .chronoedit import ChronoEditFamily
from .cogvideox import CogVideoXFamily
from .consisid import ConsisIDFamily
from .cosmos import CosmosFamily
from .easyanimate import EasyAnimateFamily
from .helios import HeliosFamily
from .hunyuan_video import HunyuanVideoFamily
from .hunyuan_video15 import HunyuanVideo15Family
from .hunyuan_video_framepack import HunyuanVideoFramepackFamily
from .kandinsky5 import Kandinsky5Family
from .kandinsky6 import Kandinsky6Family
from .ltx2 import LTX2Family
from .ltx_video import LTXVideoFamily
from .minimax_h3 import MiniMaxH3Family
from .mochi import MochiFamily
from .motif_video import MotifVideoFamily
from .skyreels_v2 import SkyReelsV2Family
from .wan import WanFamily
from .wan_animate import WanAnimateFamily
from .wan_vace import WanVACEFamily

_FAMILIES: tuple[ModelFamily, ...] = (WanFamily(), HunyuanVideoFamily(), SkyReelsV2Family(), WanVACEFamily(),
                                       ConsisIDFamily(),
                                       CogVideoXFamily(), LTXVideoFamily(), LTX2Family(), HunyuanVideo15Family(),
                                       ChronoEditFamily(), WanAnimateFamily(), HeliosFamily(),
                                       AnyFlowFamily(), MiniMaxH3Family(),
                                       CosmosFamily(), Kandinsky5Family(), MochiFamily(),
                                       EasyAnimateFamily(), AllegroFamily(),
                                       MotifVideoFamily(), HunyuanVideoFramepackFamily(), Kandinsky6Family())

REFUSED: dict[str, str] = {
    # class name -> why draft attention refuses it (require_family names the reason); subclasses are refused too
    "LatteTransformer3DModel": (
        "it has no 3D self-attention to make sparse (diffusers 0.42.1): its transformer_blocks attend over the tokens "
        "of one frame (spatial) and its temporal_transformer_blocks over the frames of one position (temporal), "
        "while draft attention selects region pairs across the whole video grid"),
    "SanaVideoTransformer3DModel": (
        "its self-attention is linear attention (SanaLinearAttnProcessor3_0, diffusers 0.42.1: ReLU kernel features, "
        "keys and values summed once, no attention map), which already costs linear time in the tokens and has no "
        "tiles for draft attention to skip"),
    "SanaWMTransformer3DModel": (
        "its self-attention is linear (bidirectional gated delta-net blocks, diffusers 0.42.1) with a camera-"
        "conditioned softmax block only every softmax_every_n-th block: no attention map to make sparse in most "
        "blocks, and the softmax blocks' camera-ray attention is not one self-attention call over the video grid"),
    "AnyFlowFARTransformer3DModel": (
        "its causal self-attention (AnyFlowCausalAttnProcessor, diffusers 0.42.1) attends each chunk to a KV cache of "
        "the earlier chunks through a chunk-causal flex BlockMask with the 'flex' backend forced; draft attention's "
        "selection and kernels take neither that mask nor the cache"),
    "WanAnimate2Transformer3DModel": (
        "its generation pass (WanAnimate2AttnProcessor, diffusers 0.42.1) packs the generated tokens and a KV cache "
        "of reference tokens into 128-aligned buffers attended through a flex BlockMask with the 'flex' backend "
        "required; draft attention's selection and kernels take neither that mask nor the cache (use "
        "WanAnimateTransformer3DModel, Wan-Animate, which is supported)"),
    "Cosmos3OmniTransformer": (
        "its packed dual-pathway attention (Cosmos3AttnProcessor, diffusers 0.42.1) runs the generation tokens of every "
        "sample (vision, sound, action), flattened into one ragged sequence, as queries over the understanding keys "
        "followed by their own, with grouped-query heads (enable_gqa): no call is self-attention over one video grid; "
        "Cosmos 1.0 / Predict2 / Predict2.5 (CosmosTransformer3DModel) are the Cosmos models draft attention serves"),
    "Kandinsky6SRTransformer3DModel": (
        "its self-attention is already block-sparse (Kandinsky6SRAttnProcessor, diffusers 0.42.1: NABLA, a BlockMask "
        "chosen per call from pooled query/key statistics over 8x8-token blocks plus a sliding-tile window, on the "
        "'flex' backend always): draft attention would replace that selection, not add to it; Kandinsky 6.0's "
        "generator (Kandinsky6Transformer3DModel, Kandinsky6TI2VAPipeline) is served"),
    "SanaWMLTX2RefinerTransformer3DModel": (
        "its self-attention (SanaWMLTX2RefinerAttnProcessor, diffusers 0.42.1) is chunk-causal: the active block's "
        "queries attend to a sliding-window KV cache of attention-sink and recent refined frames prepended to its "
        "own keys, so queries and keys are not one video grid; draft attention's selection and kernels take "
        "neither the cache nor the unequal lengths"),
}

_TINY_PREFIX = "tiny-"


def families() -> tuple[ModelFamily, ...]:
    """Every supported family, in table order."""
    return _FAMILIES


def supported_transformers() -> list[str]:
    return [c for f in _FAMILIES for c in f.transformer_classes]


def supported_pipelines() -> list[str]:
    """Pipeline class names the families serve (text-to-video first, then the others of each family)."""
    return [p for f in _FAMILIES for p in (*f.pipelines, *f.other_pipelines)]


def family_for(transformer: torch.nn.Module) -> ModelFamily | None:
    """The family of a transformer instance (by class name, subclasses included), or None."""
    names = {c.__name__ for c in type(transformer).__mro__}
    for family in _FAMILIES:
        if names.intersection(family.transformer_classes):
            return family
    return None


def require_family(transformer: torch.nn.Module) -> ModelFamily:
    family = family_for(transformer)
    if family is None:
        raise ValueError(refusal(transformer) or f"draft attention does not support {type(transformer).__name__}; "
                         f"supported transformers: {', '.join(supported_transformers())}")
    return family


def refusal(transformer: torch.nn.Module) -> str | None:
    """Why draft attention refuses a transformer instance whose class (or a base class) is in :data:`REFUSED`, as the
    message of the error; None for any other."""
    for cls in type(transformer).__mro__:
        if cls.__name__ in REFUSED:
            return f"draft attention does not support {type(transformer).__name__}: {REFUSED[cls.__name__]}"
    return None


def family_for_pipeline(pipe, loadable: bool = False) -> ModelFamily | None:
    """The family serving a pipeline (an instance, or a class name as in ``model_index.json``), by class name,
    subclasses included; ``loadable``: only the pipelines with a load recipe (``family.pipelines``). None if
    no family serves it."""
    names = {pipe} if isinstance(pipe, str) else {c.__name__ for c in type(pipe).__mro__}
    for family in _FAMILIES:
        served = set(family.pipelines) if loadable else {*family.pipelines, *family.other_pipelines}
        if names & served:
            return family
    return None


def tiny_models() -> dict[str, tuple[ModelFamily, TinyBuilder]]:
    """The embedded tiny random-weight pipelines: ``--model`` name ("tiny-wan") -> (family, builder)."""
    return {name: (f, builder) for f in _FAMILIES for name, builder in f.tiny_variants.items()}


def tiny_alias(name: str) -> str:
    """The short name a tiny model also goes by: ``"tiny-wan22"`` -> ``"wan22"``."""
    return name[len(_TINY_PREFIX):] if name.startswith(_TINY_PREFIX) else name


def tiny_builder(name: str) -> tuple[ModelFamily, TinyBuilder]:
    """(family, builder) of a tiny pipeline named by its ``--model`` name (``"tiny-hunyuan"``), the same without
    ``"tiny-"`` (``"hunyuan"``, what the tests and docs use) or a family name (``"hunyuan_video"``: the family's
    first tiny pipeline). The aliases follow from the family table: no separate list to keep in step.

    Raises ``ValueError`` naming the accepted names."""
    aliases: dict[str, tuple[ModelFamily, TinyBuilder]] = {}
    for full, entry in tiny_models().items():
        aliases.setdefault(full, entry)
        aliases.setdefault(tiny_alias(full), entry)
    for f in _FAMILIES:
        if f.tiny_variants:
            aliases.setdefault(f.name, (f, next(iter(f.tiny_variants.values()))))
    if name not in aliases:
        raise ValueError(f"family={name!r}: expected one of {tuple(aliases)}")
    return aliases[name]


__all__ = ["AttentionRole", "LoadRecipe", "ModelFamily", "families", "family_for", "family_for_pipeline",
           "refusal", "require_family", "supported_pipelines", "supported_transformers", "tiny_alias",
           "tiny_builder", "tiny_models"]

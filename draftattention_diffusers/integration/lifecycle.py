"""Which draft-attention processor a transformer carries, and nothing left behind when it changes.

A transformer holds at most one draft-attention installation (:class:`Installation`, attribute ``_draftattention``):
the processor, the hooks of that processor (marked :class:`~draftattention_diffusers.models.base.DraftHook`), the
role of each attention module and the processors to restore. Every way of changing processors keeps that true:

* ``enable_draft_attention`` / ``disable_draft_attention`` call :func:`install` / :func:`uninstall`;
* ``transformer.set_attn_processor(...)`` is wrapped on the instance while draft attention is installed
  (:func:`_set_attn_processor`): the old installation is removed first; if the new processors include a draft
  processor it is installed at once, keeping the dense processors of the old one;
* except where the model swaps its own processors for fused ones and back (``fuse_qkv_projections`` /
  ``unfuse_qkv_projections``, CogVideoX's): the same attention, so draft attention stays, with them as its dense path;
* a processor swapped on a single module (``attn.set_processor``) is noticed at the next forward, which then removes
  the installation (see ``DraftAttnProcessor._on_forward``).

Hooks are removed by their type, never by handle, so a deep copy of an enabled transformer (whose handles would
point at the original's hook tables) is handled too.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any

import torch

from ..models.base import ModelFamily, remove_draft_hooks

STATE_ATTR = "_draftattention"
_FUSING = ("fuse_qkv_projections", "unfuse_qkv_projections")  # transformer methods that swap the model's processors
ROLE_ATTR = "_draftattention_role"  # (processor, family, role) on each attention module of an installed transformer


def is_draft_processor(processor: Any) -> bool:
    return getattr(processor, "_is_draft_attention", False)


@dataclass
class Installation:
    """Draft attention on one transformer.

    ``restore``: ``{"<module>.processor": processor}`` for every attention module, what ``disable`` puts back (the
    processors from before draft attention; the model's own class where that was a draft processor).
    ``family``: the transformer's model family, resolved once when the processor is attached; everything later
    (forwards, context parallelism, disable) asks it instead of looking the family up again.
    ``watch``: a video self-attention module whose processor tells, at each forward, whether ours is still there.
    ``via_enable``: installed by ``enable_draft_attention`` (a second enable then raises, as diffusers' do).
    """

    processor: Any
    family: ModelFamily
    restore: dict[str, Any]
    watch: torch.nn.Module | None
    via_enable: bool = False
    prefix: str | None = None
    """Of the statistics' layer names (``"transformer_2"``: Wan2.2's second expert)."""
    previous_setter: Any = field(default=None, repr=False)


def installation(transformer: torch.nn.Module) -> Installation | None:
    return getattr(transformer, STATE_ATTR, None)


def install(transformer: torch.nn.Module, inst: Installation) -> None:
    """Record ``inst`` on ``transformer`` (hooks and roles are registered by the processor) and wrap
    ``set_attn_processor`` so that replacing processors cannot leave this installation behind."""
    if hasattr(type(transformer), "set_attn_processor"):  # (a class without one gets none: diffusers' own tests
        inst.previous_setter = transformer.__dict__.get("set_attn_processor")  # check for it to skip theirs)
        transformer.set_attn_processor = types.MethodType(_set_attn_processor, transformer)
    setattr(transformer, STATE_ATTR, inst)


def uninstall(transformer: torch.nn.Module) -> Installation | None:
    """Remove every trace of draft attention from ``transformer``: hooks (of any draft processor), roles, counters,
    the ``set_attn_processor`` wrapper. The processors stay as they are. Returns the removed installation."""
    remove_draft_hooks(transformer)
    inst = getattr(transformer, STATE_ATTR, None)
    for module in transformer.modules():
        entry = module.__dict__.get(ROLE_ATTR)
        if entry is not None:
            entry[0]._forget(module)
            del module.__dict__[ROLE_ATTR]
    if inst is not None:
        inst.processor._forget_transformer(transformer)
        if inst.previous_setter is not None:
            transformer.set_attn_processor = inst.previous_setter
        else:
            transformer.__dict__.pop("set_attn_processor", None)
        delattr(transformer, STATE_ATTR)
    return inst


def attention_processors(transformer: torch.nn.Module) -> dict[str, Any]:
    """``{"<module>.processor": processor}`` of every attention module: diffusers' ``attn_processors``, or, for a
    transformer class without diffusers' ``AttentionMixin`` (Cosmos, AnyFlow, Mochi in 0.42.1), the same walk over
    its attention modules (:func:`_attention_modules`)."""
    if hasattr(type(transformer), "attn_processors"):
        return dict(transformer.attn_processors)
    return {f"{name}.processor": _get_processor(m) for name, m in _attention_modules(transformer)}


def _attention_modules(transformer: torch.nn.Module):
    """(name, module) of the modules with a processor: diffusers' ``get_processor``/``set_processor``, or a
    ``processor`` attribute on an attention class that has neither (``MochiAttention`` in 0.42.1)."""
    for name, m in transformer.named_modules():
        if hasattr(m, "set_processor") and hasattr(m, "get_processor") or (
                type(m).__name__.endswith("Attention") and callable(getattr(m, "processor", None))):
            yield name, m


def _get_processor(module: torch.nn.Module):
    return module.get_processor() if hasattr(module, "get_processor") else module.processor


def _set_processor(module: torch.nn.Module, processor) -> None:
    if hasattr(module, "set_processor"):
        module.set_processor(processor)
    else:
        module.processor = processor


def set_processors(transformer: torch.nn.Module, processors) -> None:
    """diffusers' own ``set_attn_processor`` (not our wrapper), or the same for a transformer class without it
    (``attention_processors``). A dict must hold every module; it is copied."""
    setter = getattr(type(transformer), "set_attn_processor", None)
    if setter is not None:
        setter(transformer, dict(processors) if isinstance(processors, dict) else processors)
        return
    names = attention_processors(transformer)
    if isinstance(processors, dict) and set(processors) != set(names):
        raise ValueError(f"expected a processor for each of the {len(names)} attention modules, got "
                         f"{len(processors)}")
    for name, module in _attention_modules(transformer):
        _set_processor(module, processors[f"{name}.processor"] if isinstance(processors, dict) else processors)


def _set_attn_processor(transformer: torch.nn.Module, processor) -> None:
    """``transformer.set_attn_processor`` while draft attention is installed: remove the installation, set the new
    processors, and install a draft processor among them at once (with the previous dense processors)."""
    inst = uninstall(transformer)
    restore = inst.restore if inst is not None else {}
    set_processors(transformer, processor)
    now = attention_processors(transformer)
    drafts = {id(p): p for p in now.values() if is_draft_processor(p)}
    if len(drafts) > 1:
        raise ValueError("one transformer can carry one draft-attention processor instance, got "
                         f"{len(drafts)}; use one DraftAttnProcessor (it serves every module)")
    if inst is not None and not drafts and sys._getframe(1).f_code.co_name in _FUSING:
        # the model's fused processors (or its unfused ones again) become the dense path; what the model keeps for
        # unfusing holds the processors from before draft attention, so that unfusing after a disable brings none back
        kept = getattr(transformer, "original_attn_processors", None)
        if isinstance(kept, dict):
            transformer.original_attn_processors = {n: restore.get(n, p) if is_draft_processor(p) else p
                                                    for n, p in kept.items()}
        set_processors(transformer, inst.processor)
        inst.processor.attach(transformer, now, prefix=inst.prefix, via_enable=inst.via_enable)
    elif drafts:
        dense = {name: (restore.get(name) if is_draft_processor(p) else p) for name, p in now.items()}
        next(iter(drafts.values())).attach(transformer, dense)

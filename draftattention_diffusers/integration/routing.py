"""Route one attention call of a model's own processor to draft attention.

Most diffusers video processors compute q, k, v (projections, norms, RoPE) and end in one call,
``dispatch_attention_fn(query, key, value, attn_mask=..., backend=..., parallel_config=...)`` with ``[B, S, H, D]``
tensors, a name every transformer module imports into its own globals. Draft attention replaces that one call and
nothing else: for each model processor class it makes a copy of the class's ``__call__`` function (same code, same
defaults and closure) whose globals are the module's globals with ``dispatch_attention_fn`` bound to a router
(:func:`routed_call`). The model's class, its module and diffusers stay untouched, so transformers, pipelines and
modules without draft attention are not affected at all; the copy is made when draft attention is attached and is
called only for video self-attention modules in forwards that draft attention computes itself.

Why a copy of the function, and not a patched module global or a new diffusers attention backend: a patched global
would reach every transformer of that class in the process, and diffusers' backend registry is a closed enum whose
backends see only tensors (no module, no token grid). A copy bound to its own globals is per processor class and per
draft processor, traceable by torch.compile and export like the original (same code object), and removed with
the processor. Its globals are a snapshot taken at attach: a module global reassigned later (by another library)
is seen by the copy only after the next ``enable``.
"""

from __future__ import annotations

import functools
import types
from typing import Any, Callable

DISPATCH_NAME = "dispatch_attention_fn"
"""The name by which diffusers' processors call the attention dispatcher (``models/attention_dispatch.py``)."""


def unroutable_reason(processor_class: type) -> str | None:
    """Why the attention call of ``processor_class.__call__`` cannot be routed (None: it can): the function must
    name ``dispatch_attention_fn`` as a global of its module (checked on its code, so a diffusers release that
    changes how a processor attends is noticed at ``enable``, never mis-routed)."""
    fn = getattr(processor_class, "__call__", None)
    code = getattr(fn, "__code__", None)
    if code is None:
        return f"{processor_class.__name__}.__call__ is not a Python function"
    if DISPATCH_NAME not in code.co_names or DISPATCH_NAME not in fn.__globals__:
        return (f"{processor_class.__name__}.__call__ does not call diffusers' {DISPATCH_NAME} (this diffusers release "
                "computes its attention differently)")
    return None


def routed_call(processor_class: type, router: Callable[..., Any]) -> Callable[..., Any]:
    """A copy of ``processor_class.__call__`` whose ``dispatch_attention_fn`` is ``router``, called like the method:
    ``routed(processor_instance, attn, hidden_states, ...)``. ``router`` receives the dispatcher's arguments
    (``query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
    attention_kwargs=None, *, backend=None, parallel_config=None``).

    Raises ``ValueError`` with :func:`unroutable_reason` where the function does not call the dispatcher."""
    reason = unroutable_reason(processor_class)
    if reason is not None:
        raise ValueError(reason)
    fn = processor_class.__call__
    scope = dict(fn.__globals__)
    scope[DISPATCH_NAME] = router
    # Without __name__ the copy is no module's: torch.compile then guards on this dict itself instead of resolving
    # globals through the module of that name (whose dispatch_attention_fn is diffusers' own). __package__ and
    # __spec__ stay, so a relative import inside the function still resolves.
    del scope["__name__"]
    copy = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    return functools.update_wrapper(copy, fn, updated=())


def original_dispatch(processor_class: type) -> Callable[..., Any]:
    """The dispatcher ``processor_class.__call__`` calls (its module's global): what a call that draft attention
    does not compute is handed back to, exactly as the model would have called it."""
    return processor_class.__call__.__globals__[DISPATCH_NAME]

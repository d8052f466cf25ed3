"""Sparse-attention backends behind one interface, and the choice among them.

Adding a kernel: write one module with a :class:`SparseAttentionBackend` subclass, add it to ``_BACKENDS`` and its
name to :data:`draftattention_diffusers.config.BACKEND_NAMES` (the config validates names against that list without
importing kernels). ``"auto"`` walks ``BACKEND_NAMES`` in order and takes the first backend with no reason against the
inputs.

Imports: ``core`` (tiles, layout) and ``config.BACKEND_NAMES`` only; the entry point that calls a backend,
:func:`draftattention_diffusers.draft_attention`, lives above this package.
"""

from __future__ import annotations

import importlib

import torch

from ..config import BACKEND_NAMES
from .base import AttentionInputs, SparseAttentionBackend

# name -> "module:Class"; the order "auto" tries them in is BACKEND_NAMES' (fastest first, see docs/benchmarks.md).
_BACKENDS: dict[str, str] = {
    "fa4": "draftattention_diffusers.backends.fa4:FA4Backend",
    "flex": "draftattention_diffusers.backends.flex:FlexBackend",
    "bsa": "draftattention_diffusers.backends.bsa:BlockSparseAttnBackend",
    "reference": "draftattention_diffusers.backends.reference:ReferenceBackend",
}
if set(_BACKENDS) != set(BACKEND_NAMES):
    raise ImportError(f"backends/__init__.py::_BACKENDS {sorted(_BACKENDS)} and config.BACKEND_NAMES "
                      f"{sorted(BACKEND_NAMES)} must name the same backends")

# Backend modules are light (their kernels' packages are imported only when checked): load them all now, so that no
# import happens inside a torch.compile'd forward (an import is a graph break).
_instances: dict[str, SparseAttentionBackend] = {
    name: getattr(importlib.import_module(_BACKENDS[name].split(":")[0]), _BACKENDS[name].split(":")[1])()
    for name in BACKEND_NAMES
}
# (name, *AttentionInputs.key) -> the backend that passed its checks (plain tuples: traceable under torch.compile)
_resolved: dict[tuple, SparseAttentionBackend] = {}


def get_backend(name: str) -> SparseAttentionBackend:
    """The backend object for ``name`` (no check that it can run)."""
    if name not in _BACKENDS:
        raise ValueError(f"backend={name!r}: expected 'auto' or one of {BACKEND_NAMES}")
    return _instances[name]


def resolve_backend(name: str, inputs: AttentionInputs) -> SparseAttentionBackend:
    """The backend to run for ``inputs``: ``name`` itself if it can run, or the first that can for ``"auto"``.

    Checked once per (name, inputs); later calls are a dict lookup (cheap, and traceable by torch.compile).
    Raises ``ValueError`` listing every reason when the requested backend (or, for auto, every backend) cannot run.
    """
    return _resolved.get((name,) + inputs.key) or _resolve(name, inputs)


@torch.compiler.disable  # checking packages imports them: never inside a compiled graph
def _resolve(name: str, inputs: AttentionInputs) -> SparseAttentionBackend:
    report = {}
    for candidate in BACKEND_NAMES if name == "auto" else (name,):
        reasons = get_backend(candidate).not_supported_reasons(inputs)
        if not reasons:
            _resolved[(name,) + inputs.key] = get_backend(candidate)
            return get_backend(candidate)
        report[candidate] = reasons
    if name != "auto":
        raise ValueError(f"backend {name!r} cannot run on {inputs.describe()}: " + "; ".join(report[name]))
    lines = "; ".join(f"{n}: {', '.join(r)}" for n, r in report.items())
    raise ValueError(f"no draft-attention backend can run on {inputs.describe()} ({lines})")


def backend_report(inputs: AttentionInputs) -> dict[str, list[str]]:
    """For ``info``: every backend's reasons against ``inputs`` (empty list = can run)."""
    return {name: get_backend(name).not_supported_reasons(inputs) for name in BACKEND_NAMES}


__all__ = ["AttentionInputs", "SparseAttentionBackend", "BACKEND_NAMES", "get_backend", "resolve_backend",
           "backend_report"]

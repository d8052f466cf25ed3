"""Run statistics a user can read after a pipeline call, and visible (warn-once) fallbacks."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ..core.attention import StageTimer
from ..core.layout import VideoGrid
from ..core.selection import TileMask


class DraftAttentionWarning(UserWarning):
    """Draft attention did something other than asked (e.g. fell back to dense); also listed in the statistics."""


_warned: set[str] = set()


def warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, DraftAttentionWarning, stacklevel=3)


@dataclass
class AttentionEvent:
    """One video self-attention call, as seen by observers (``processor.add_observer(fn)``).

    ``q, k, v``: ``[B, S, H, D]`` after QK-norm and RoPE, in diffusers' token order (video then text).
    ``tiles``: the :class:`TileMask` used, None when the call ran dense.
    """

    layer: str
    block_index: int | None
    step: int | None
    num_steps: int | None
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    grid: VideoGrid | None
    text_len: int
    key_lengths: torch.Tensor | None
    dense: bool
    tiles: TileMask | None
    scale: float


class DraftStats:
    """What draft attention did during the last pipeline call (reset when a new call starts).

    Example:
        >>> stats = get_draft_stats(pipe)          # doctest: +SKIP
        >>> print(stats.format())                  # doctest: +SKIP
        >>> stats.summary()["mean_sparsity"]       # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.steps: dict[int, str] = {}
        self.forwards = 0
        self.sparse_calls = 0
        self.dense_calls = 0
        self.fallbacks: dict[str, int] = {}
        self._layer_sum: dict[str, torch.Tensor] = {}
        self._layer_calls: dict[str, int] = {}
        self.draft_timer = StageTimer()

    @torch.compiler.disable  # bookkeeping stays out of compiled graphs
    def record_step(self, step: int | None, mode: str) -> None:
        self.forwards += 1
        if step is not None:
            self.steps[step] = mode

    @torch.compiler.disable  # bookkeeping stays out of compiled graphs
    def record_sparse(self, layer: str, tiles: TileMask) -> None:
        # Accumulate on the device: no synchronisation until the statistics are read.
        s = tiles.video_sparsity.float().mean()
        self._layer_sum[layer] = self._layer_sum[layer] + s if layer in self._layer_sum else s
        self._layer_calls[layer] = self._layer_calls.get(layer, 0) + 1
        self.sparse_calls += 1

    @torch.compiler.disable  # bookkeeping stays out of compiled graphs
    def record_dense(self) -> None:
        self.dense_calls += 1

    @torch.compiler.disable  # bookkeeping stays out of compiled graphs
    def record_fallback(self, message: str) -> None:
        self.fallbacks[message] = self.fallbacks.get(message, 0) + 1
        warn_once(message)

    def layer_sparsity(self) -> dict[str, float]:
        """Mean achieved sparsity of each layer over its sparse calls."""
        return {k: float(v) / self._layer_calls[k] for k, v in self._layer_sum.items()}

    def summary(self) -> dict[str, Any]:
        """Plain-Python summary: ``steps`` {step: "dense"/"sparse"/...}, call counts, ``mean_sparsity`` (over
        sparse calls), ``layer_sparsity``, ``draft_seconds`` (time in the draft step) and ``fallbacks``."""
        layers = self.layer_sparsity()
        total = sum(v * self._layer_calls[k] for k, v in layers.items())
        return {
            "steps": dict(sorted(self.steps.items())),
            "forwards": self.forwards,
            "sparse_calls": self.sparse_calls,
            "dense_calls": self.dense_calls,
            "mean_sparsity": total / self.sparse_calls if self.sparse_calls else None,
            "layer_sparsity": layers,
            "draft_seconds": self.draft_timer.seconds(),
            "fallbacks": dict(self.fallbacks),
        }

    def format(self) -> str:
        s = self.summary()
        dense = [k for k, m in s["steps"].items() if m != "sparse"]
        sparse = [k for k, m in s["steps"].items() if m == "sparse"]
        lines = [
            f"draft attention: {len(s['steps'])} steps ({len(dense)} dense: {_ranges(dense)}; "
            f"{len(sparse)} sparse: {_ranges(sparse)}), {s['forwards']} transformer forwards",
            f"  self-attention calls: {s['sparse_calls']} sparse, {s['dense_calls']} dense",
        ]
        if s["mean_sparsity"] is not None:
            vals = s["layer_sparsity"].values()
            lines.append(f"  achieved sparsity: mean {s['mean_sparsity']:.3f} (layers {min(vals):.3f}..{max(vals):.3f})"
                         f"; draft step {s['draft_seconds'] * 1e3:.1f} ms")
        for msg, n in s["fallbacks"].items():
            lines.append(f"  FALLBACK x{n}: {msg}")
        return "\n".join(lines)


def _ranges(xs: list[int]) -> str:
    if not xs:
        return "-"
    out, start, prev = [], xs[0], xs[0]
    for x in xs[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ",".join(out)

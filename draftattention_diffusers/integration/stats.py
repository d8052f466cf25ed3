"""Run statistics a user can read after a pipeline call, and visible (warn-once) fallbacks."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ..attention import StageTimer
from ..core.layout import VideoGrid
from ..core.tracing import is_exporting
from ..core.selection import TileMask


class DraftAttentionWarning(UserWarning):
    """Draft attention did something other than asked (e.g. fell back to dense); also listed in the statistics."""


_warned: set[str] = set()


def warn_once(message: str) -> None:
    """Warn once per process. Not inside a graph torch.compile (or export) traces: dynamo cannot trace
    ``warnings.warn`` (an error under ``fullgraph=True``, a graph break otherwise) and would guard on ``_warned``."""
    if torch.compiler.is_compiling():
        return
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, DraftAttentionWarning, stacklevel=3)


@dataclass
class _Section:
    """One denoising loop of a pipeline call that denoises in sections: its index in the call, its steps, and the
    forwards and summed counters ``[3]`` (on the counters' device; None: no layer yet) when it began."""

    index: int
    steps: dict[int, str]
    forwards: int
    counters: torch.Tensor | None


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


COUNTERS_ATTR = "_draftattention_counters"
"""On every video self-attention module: float32 ``[4]`` = (sparse calls, dense calls, sum of achieved sparsity,
fallbacks inside a compiled graph), accumulated on the device inside the attention call (no host synchronisation, no
graph break under torch.compile: the counters are reached through the module, so every compiled block shares one
graph). The last counts the calls that should have run sparse but ran dense in a graph torch.compile traced, where
the fallback's message and warning cannot be recorded (:meth:`DraftStats.record_fallback`); ``summary()`` lists
them among the fallbacks and warns."""
N_COUNTERS = 4
COMPILED_FALLBACK = ("calls inside a torch.compile graph ran dense on a sparse step; the reason is recorded in eager "
                     "code only (run one call uncompiled, or compile by blocks with compile_repeated_blocks, to see "
                     "it)")


class DraftStats:
    """What draft attention did during the last pipeline call (reset when a new call starts).

    A pipeline that denoises in sections (FramePack, Helios, Wan-Animate: ``ModelFamily.section_loops``) restarts the
    schedule per section, each with its own warm-up; the statistics cover every section of the call, and
    ``summary()["sections"]`` tells them apart.

    Counts are read once, when :meth:`summary` is called. A forward in which no video self-attention ran (a step
    cache such as MagCache skipped every block) counts as *skipped*.

    Example:
        >>> stats = get_draft_stats(pipe)          # doctest: +SKIP
        >>> print(stats.format())                  # doctest: +SKIP
        >>> stats.summary()["mean_sparsity"]       # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._layers: dict[str, torch.nn.Module] = {}  # layer name -> module holding its counters
        self._retired: dict[str, torch.Tensor] = {}  # counters of layers no longer attached (read after disable)
        self.reset()

    def reset(self) -> None:
        self.steps: dict[int, str] = {}  # of the current section where the call has sections
        self.sections: list[_Section] = []
        self.forwards = 0
        self.fallbacks: dict[str, int] = {}
        self.draft_timer = StageTimer()
        self._marks: list[torch.Tensor] = []  # total calls at the start of each forward
        self._retired.clear()
        for module in self._layers.values():
            getattr(module, COUNTERS_ATTR).zero_()

    # ------------------------------------------------------------------------------------ bookkeeping (eager)
    def begin_section(self, index: int) -> None:
        """A section of the running pipeline call begins (a new denoising loop): its steps are recorded apart, the
        counts go on accumulating. Call :meth:`reset` first at the call's first section."""
        counters = list(self._counters().values())
        mark = None
        if counters:  # one stack and one sum per section, no host synchronisation
            device = counters[0].device
            mark = torch.stack([c.to(device) for c in counters]).sum(0)
        self.steps = {}
        self.sections.append(_Section(index, self.steps, self.forwards, mark))

    def track(self, name: str, module: torch.nn.Module) -> None:
        """Give ``module`` (a video self-attention module) its counters, listed under ``name``."""
        with torch.inference_mode(False):  # a normal tensor: an inference tensor could not be updated outside one
            setattr(module, COUNTERS_ATTR, torch.zeros(N_COUNTERS))
        self._layers[name] = module

    def untrack(self, modules) -> None:
        modules = set(modules)
        for name in [n for n, m in self._layers.items() if m in modules]:
            module = self._layers.pop(name)
            if hasattr(module, COUNTERS_ATTR):
                self._retired[name] = getattr(module, COUNTERS_ATTR)
                delattr(module, COUNTERS_ATTR)

    def to_device(self, device: torch.device) -> None:
        """Keep the counters where attention runs (offloading moves the model between forwards)."""
        for module in self._layers.values():
            c = getattr(module, COUNTERS_ATTR)
            if c.device != device:
                with torch.inference_mode(False):
                    setattr(module, COUNTERS_ATTR, c.clone().to(device))

    def record_step(self, step: int | None, mode: str) -> None:
        self.forwards += 1
        if step is not None:
            self.steps[step] = mode
        if self._layers:
            self._marks.append(self._total_calls())

    def record_fallback(self, message: str) -> None:
        """Count a fallback and warn once. Eager code only: inside a graph torch.compile traces the call still runs
        dense, but nothing is recorded here: dynamo cannot trace the warning, and the count in this dict would be a
        guarded constant (a recompile on every call). There the call is counted on the device instead
        (``count_call(..., fell_back=True)``), and ``summary()`` lists and warns it."""
        if torch.compiler.is_compiling():
            return
        self.fallbacks[message] = self.fallbacks.get(message, 0) + 1
        warn_once(message)

    def _counters(self) -> dict[str, torch.Tensor]:
        return {**self._retired, **{n: getattr(m, COUNTERS_ATTR) for n, m in self._layers.items()}}

    def counter_snapshot(self) -> tuple[list[str], torch.Tensor] | None:
        """The layer names and a copy of their counters, float32 ``[L, 4]`` (sparse calls, dense calls, sum of
        achieved sparsity, compiled fallbacks so far in this call: ``COUNTERS_ATTR``), taken without a host
        synchronisation (the copy stays on the counters' device); None before any layer is tracked. Differences of
        two snapshots give each layer's calls and sparsity between them (``draftattention evaluate`` takes one per
        denoising step)."""
        counters = self._counters()
        if not counters:
            return None
        device = next(iter(counters.values())).device
        return list(counters), torch.stack([c.to(device) for c in counters.values()]).clone()

    def _total_calls(self) -> torch.Tensor:
        # Once per forward: one stack and one sum, not a small kernel per layer (the counters share a device).
        counters = list(self._counters().values())
        device = counters[0].device
        return torch.stack([c.to(device) for c in counters])[:, :2].sum()

    # ------------------------------------------------------------------------------------------- reading
    def layer_sparsity(self) -> dict[str, float]:
        """Mean achieved sparsity of each layer over its sparse calls."""
        out = {}
        for name, counters in self._counters().items():
            sparse_calls, _, total = counters.tolist()[:3]
            if sparse_calls:
                out[name] = total / sparse_calls
        return out

    def _fallbacks_with(self, compiled: int) -> dict[str, int]:
        """The fallbacks recorded in eager code, and those counted inside compiled graphs (warned here, on the host:
        a compiled graph cannot warn)."""
        out = dict(self.fallbacks)
        if compiled:
            out[COMPILED_FALLBACK] = compiled
            warn_once(COMPILED_FALLBACK)
        return out

    def summary(self) -> dict[str, Any]:
        """Plain-Python summary: ``steps`` {step: "dense"/"sparse"/...}, ``forwards``, ``skipped_forwards`` (no
        self-attention ran: a step cache skipped every block), call counts, ``mean_sparsity`` (over sparse calls),
        ``layer_sparsity``, ``draft_seconds`` (time in the draft step), ``backends`` (the backend that ran the
        sparse calls -> their count; calls inside a compiled graph are not counted), ``fallbacks`` (message -> calls;
        those inside compiled graphs under one message, ``COMPILED_FALLBACK``, warned once when read) and
        ``sections``.

        Everything covers the whole pipeline call. ``sections``: for a pipeline that denoises in sections, one entry
        per section (``section``: its index, its own ``steps`` from 0, ``forwards``, ``sparse_calls``,
        ``dense_calls``, ``mean_sparsity``); ``steps`` then numbers the steps through the call (section 0's first);
        empty for a pipeline with one denoising loop per call."""
        counts = {n: c.tolist() for n, c in self._counters().items()}
        sparse_calls = int(sum(c[0] for c in counts.values()))
        dense_calls = int(sum(c[1] for c in counts.values()))
        total = sum(c[2] for c in counts.values())
        compiled_fallbacks = int(sum(c[3] for c in counts.values()))
        skipped = 0
        if self._marks:
            marks = [int(m) for m in self._marks] + [sparse_calls + dense_calls]
            skipped = sum(1 for a, b in zip(marks, marks[1:]) if a == b)
        steps, sections = dict(sorted(self.steps.items())), []
        if self.sections:
            steps, ends = {}, [(s.forwards, s.counters) for s in self.sections[1:]]
            for sec, (end_forwards, end) in zip(self.sections, ends + [(self.forwards, None)]):
                start = [0.0, 0.0, 0.0] if sec.counters is None else sec.counters.tolist()[:3]
                end = [sparse_calls, dense_calls, total] if end is None else end.tolist()[:3]
                sp, de, tot = (b - a for a, b in zip(start, end))
                offset = len(steps) and max(steps) + 1
                steps.update((offset + k, m) for k, m in sorted(sec.steps.items()))
                sections.append({"section": sec.index, "steps": dict(sorted(sec.steps.items())),
                                 "forwards": end_forwards - sec.forwards, "sparse_calls": int(round(sp)),
                                 "dense_calls": int(round(de)), "mean_sparsity": tot / sp if sp else None})
        return {
            "steps": steps,
            "forwards": self.forwards,
            "skipped_forwards": skipped,
            "sparse_calls": sparse_calls,
            "dense_calls": dense_calls,
            "mean_sparsity": total / sparse_calls if sparse_calls else None,
            "layer_sparsity": self.layer_sparsity(),
            "draft_seconds": self.draft_timer.seconds(),
            "backends": dict(self.draft_timer.backends),
            "fallbacks": self._fallbacks_with(compiled_fallbacks),
            "sections": sections,
        }

    def format(self) -> str:
        s = self.summary()
        skipped = f" ({s['skipped_forwards']} skipped by a step cache)" if s["skipped_forwards"] else ""
        in_sections = f" in {len(s['sections'])} sections" if s["sections"] else ""
        lines = [
            f"draft attention: {len(s['steps'])} steps{in_sections} ({_format_steps(s['steps'])}), "
            f"{s['forwards']} transformer forwards{skipped}",
            f"  self-attention calls: {s['sparse_calls']} sparse, {s['dense_calls']} dense",
        ]
        if s["mean_sparsity"] is not None:
            vals = s["layer_sparsity"].values()
            ran = f"; backend {', '.join(s['backends'])}" if s["backends"] else ""
            lines.append(f"  achieved sparsity: mean {s['mean_sparsity']:.3f} (layers {min(vals):.3f}..{max(vals):.3f})"
                         f"; draft step {s['draft_seconds'] * 1e3:.1f} ms{ran}")
        for sec in s["sections"]:
            mean = "" if sec["mean_sparsity"] is None else f", mean sparsity {sec['mean_sparsity']:.3f}"
            lines.append(f"  section {sec['section']}: {len(sec['steps'])} steps ({_format_steps(sec['steps'])}), "
                         f"{sec['sparse_calls']} sparse and {sec['dense_calls']} dense calls{mean}")
        for msg, n in s["fallbacks"].items():
            lines.append(f"  FALLBACK x{n}: {msg}")
        return "\n".join(lines)


def _format_steps(steps: dict[int, str]) -> str:
    dense = [k for k, m in steps.items() if m not in ("sparse", "warmup")]
    warmup = [k for k, m in steps.items() if m == "warmup"]
    sparse = [k for k, m in steps.items() if m == "sparse"]
    milder = f"{len(warmup)} sparse warm-up: {format_ranges(warmup)}; " if warmup else ""
    return f"{len(dense)} dense: {format_ranges(dense)}; {milder}{len(sparse)} sparse: {format_ranges(sparse)}"


def count_call(module: torch.nn.Module, sparsity: torch.Tensor | None, fell_back: bool = False) -> None:
    """Count one video self-attention call on ``module``'s counters: sparse (with its achieved sparsity ``[B, H]``)
    or dense (``sparsity`` None; ``fell_back``: it should have run sparse, counted as a compiled fallback when traced
    by torch.compile, where the eager fallback record is skipped). Traceable by torch.compile (in-place adds on a
    tensor reached through the module).
    Not counted in ``torch.export``: export lifts the counters as constants, and AOTInductor refuses a program that
    mutates a constant; an exported program runs without the processor's bookkeeping anyway."""
    counters = getattr(module, COUNTERS_ATTR, None)
    if counters is None or is_exporting():  # (not torch.compiler.is_exporting(): core/tracing.py says why)
        return
    if sparsity is None:
        counters[1].add_(1.0)
        if fell_back and torch.compiler.is_compiling():
            counters[3].add_(1.0)
    else:
        counters[0].add_(1.0)
        counters[2].add_(sparsity.float().mean().to(counters.device))


def format_ranges(xs: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"`` (sorted step indices as ranges; ``"-"`` for none)."""
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

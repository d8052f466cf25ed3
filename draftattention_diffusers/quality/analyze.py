"""Analyze capture files: how well tile selections keep the attention of captured (or synthetic) q/k/v.

``analyze`` runs the metrics of :mod:`.metrics` on files written by :func:`.capture.capture` or
:func:`.capture.save_capture` (the format is described in :mod:`.capture`): attention recall and output error of
each selection rule, pooling, region shape and sparsity, next to the oracle mask. ``summarize_rows`` averages the
rows over files and ``format_rows`` prints them as a Markdown table.

Example (tiny random-weight model, CPU):
    >>> from draftattention_diffusers.quality.capture import capture
    >>> from draftattention_diffusers.tiny import build_tiny_pipeline, tiny_prompt_kwargs
    >>> pipe = build_tiny_pipeline("wan")
    >>> paths = capture(pipe, layers=[0], steps=[1], out_dir="/tmp/cap", height=64, width=256, num_frames=9,
    ...                 num_inference_steps=2, output_type="latent", **tiny_prompt_kwargs(pipe))  # doctest: +SKIP
    >>> rows = analyze(paths, sparsity=(0.5,))                                                       # doctest: +SKIP
    >>> print(format_rows(summarize_rows(rows)))                                                     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import DraftAttentionConfig
from ..core.layout import get_layout
from ..core.selection import select_tiles
from .capture import load_capture
from .metrics import STATIC_PATTERNS, oracle_tile_mask, output_error, recall_from_mass, static_tile_mask, tile_mass


def _as_tuple(x, name: str) -> tuple:
    if x is None:
        return ()
    if isinstance(x, (str, float, int)) or (isinstance(x, tuple) and len(x) == 2 and all(
            isinstance(i, int) for i in x) and name == "region_sizes"):
        return (x,)
    return tuple(x)


def analyze(
    paths: Iterable[str | Path],
    sparsity: float | Sequence[float] = (0.5, 0.75, 0.9),
    *,
    selections: Sequence[str] = ("topk", "paper"),
    poolings: Sequence[str] = ("avg",),
    region_sizes: Sequence[tuple[int, int]] = ((8, 16),),
    static: Sequence[str] = (),
    oracle: bool = True,
    error: bool = True,
    error_rows: int | None = 1024,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Attention recall and output error of tile selections on captured (or synthetic) q/k/v files.

    For every file, region size and sparsity: one row per selection rule x pooling, per static pattern
    (:data:`~.metrics.STATIC_PATTERNS`) and, with ``oracle``, for the oracle mask of the same budget.

    Args:
        paths: capture files (:func:`.capture.capture`, :func:`.capture.save_capture`).
        sparsity: one value or several, each in ``[0, 1)``.
        selections, poolings, region_sizes: the draft-attention settings to compare (see
            :class:`~draftattention_diffusers.config.DraftAttentionConfig`).
        static: static patterns to add, e.g. ``("window", "spatial", "temporal")``.
        error: also measure the output error (needs ``v`` in the file).
        error_rows: measure the output error on this many query rows drawn uniformly at random (seeded by
            ``seed``; None: all rows, exact but as slow as one dense attention per mask).
        device: where to compute (``"cuda"`` is much faster on real sizes).

    Returns:
        rows (dicts): ``file, layer, step, call, region, sparsity, method`` (``"topk/avg"``, ``"oracle"``,
        ``"static:window"``...), ``achieved_sparsity`` (mean over heads), ``recall`` (mean over batch and heads),
        ``recall_min`` (worst head), ``oracle_recall`` (the oracle mask with the same number of tiles per head as
        this row's mask) and ``vs_oracle`` (recall / oracle_recall, at most 1),
        ``output_error`` (mean over heads; None without ``v`` or with ``error=False``), ``heads``.

    Raises ``ValueError`` for bad settings (names the field) or unreadable files.
    """
    sparsities = _as_tuple(sparsity, "sparsity")
    region_sizes = [tuple(r) for r in _as_tuple(region_sizes, "region_sizes")]
    selections, poolings, static = (_as_tuple(x, n) for x, n in ((selections, "selections"),
                                                                 (poolings, "poolings"), (static, "static")))
    for sel in selections:
        for pool in poolings:
            for r in region_sizes:
                for s in sparsities:  # validates every field with the config's own messages
                    DraftAttentionConfig(sparsity=s, selection=sel, pooling=pool, region_size=r)
    for pat in static:
        if pat not in STATIC_PATTERNS:
            raise ValueError(f"static pattern {pat!r}: expected some of {STATIC_PATTERNS}")
    rows: list[dict[str, Any]] = []
    for path in paths:
        cap = load_capture(path, device)
        layouts = [get_layout(cap.grid, cap.text_len, r, torch.device(device)) for r in region_sizes]
        masses = tile_mass(cap.q, cap.k, layouts, scale=cap.scale, key_lengths=cap.key_lengths)
        want_error = error and cap.v is not None
        err_rows = None
        if want_error and error_rows is not None and error_rows < cap.q.shape[1]:
            g = torch.Generator().manual_seed(seed)
            err_rows = torch.randperm(cap.q.shape[1], generator=g)[:error_rows].sort().values.to(device)
        base = {"file": str(path), "layer": cap.layer, "step": cap.step, "call": cap.call, "heads": len(cap.heads)}
        for lay, mass in zip(layouts, masses):
            qp, kp = (x.index_select(1, lay.perm) for x in (cap.q, cap.k))
            for s in sparsities:
                masks: dict[str, Any] = {}
                for sel in selections:
                    for pool in poolings:
                        masks[f"{sel}/{pool}"] = select_tiles(qp, kp, lay, s, sel, pool, cap.scale, cap.key_lengths)
                for pat in static:
                    masks[f"static:{pat}"] = static_tile_mask(lay, pat, s, batch=cap.q.shape[0],
                                                              heads=cap.q.shape[2], device=device)
                if oracle:
                    masks["oracle"] = oracle_tile_mask(mass, lay, sparsity=s, key_lengths=cap.key_lengths)
                errors = (output_error(cap.q, cap.k, cap.v, list(masks.values()), scale=cap.scale,
                                       key_lengths=cap.key_lengths, rows=err_rows) if want_error else
                          [None] * len(masks))
                for (name, m), e in zip(masks.items(), errors):
                    rec = recall_from_mass(mass, m)
                    # The oracle with exactly this mask's number of tiles per head: vs_oracle <= 1 always.
                    same = oracle_tile_mask(mass, lay, like=m, key_lengths=cap.key_lengths)
                    orc_recall = recall_from_mass(mass, same).mean
                    rows.append({**base, "region": f"{lay.region_size[0]}x{lay.region_size[1]}", "sparsity": s,
                                 "method": name, "achieved_sparsity": m.mean_sparsity, "recall": rec.mean,
                                 "recall_min": float(rec.per_head.min()), "oracle_recall": orc_recall,
                                 "vs_oracle": rec.mean / max(orc_recall, 1e-30),
                                 "output_error": None if e is None else e.mean})
    return rows


_KEYS = ("region", "sparsity", "method")
_VALUES = ("achieved_sparsity", "recall", "recall_min", "oracle_recall", "vs_oracle", "output_error")


def summarize_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean of :func:`analyze` rows over files (per region, sparsity and method); ``recall_min`` is the minimum;
    ``files`` counts the files averaged."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in _KEYS), []).append(r)
    out = []
    for key, rs in groups.items():
        row: dict[str, Any] = dict(zip(_KEYS, key))
        for v in _VALUES:
            vals = [r[v] for r in rs if r.get(v) is not None]
            row[v] = None if not vals else (min(vals) if v == "recall_min" else sum(vals) / len(vals))
        row["files"] = len(rs)
        out.append(row)
    return out


def format_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of :func:`analyze` / :func:`summarize_rows` rows."""
    if not rows:
        return "(no rows)"
    columns = list(columns or [c for c in rows[0] if c not in ("file",)])
    def cell(x):
        if x is None:
            return "-"
        if isinstance(x, float):
            return f"{x:.3f}" if abs(x) < 100 else f"{x:.0f}"
        return str(x)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)

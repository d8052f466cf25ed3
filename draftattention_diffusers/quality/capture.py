"""Capture q/k/v from a real pipeline run, in files that :mod:`.analyze` reads.

``capture`` runs a Wan / HunyuanVideo pipeline and saves the q, k (and v) of chosen video self-attention layers
and denoising steps, exactly as the attention kernel sees them (after QK-norm and RoPE, ``[B, S, H, D]`` in
diffusers' token order, video then text), one safetensors file per call, through the processor's observer API.
:func:`.analyze.analyze` runs the metrics of :mod:`.metrics` on such files (and on synthetic ones written with
:func:`save_capture`).

File format (``draftattention-capture/1``): tensors ``q``, ``k``, optionally ``v`` and ``key_lengths`` (int32
``[B]``, padded text keys); string metadata ``format``, ``layer``, ``block_index``, ``step``, ``num_steps``,
``call`` (0, 1, ... for the calls of one layer in one step: CFG runs two), ``frames``, ``height``, ``width``,
``text_len``, ``scale``, ``heads`` (JSON list of the saved head indices), ``dense`` (whether that call ran dense).

Example (tiny random-weight model, CPU):
    >>> from draftattention_diffusers.tiny import build_tiny_pipeline, tiny_prompt_kwargs
    >>> pipe = build_tiny_pipeline("wan")
    >>> paths = capture(pipe, layers=[0], steps=[1], out_dir="/tmp/cap", height=64, width=256, num_frames=9,
    ...                 num_inference_steps=2, output_type="latent", **tiny_prompt_kwargs(pipe))  # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import DraftAttentionConfig, make_config
from ..core.layout import VideoGrid

CAPTURE_FORMAT = "draftattention-capture/1"


@dataclass
class Capture:
    """One captured video self-attention call (see the module doc for the file format).

    ``q, k, v``: ``[B, S, H, D]`` in diffusers order (``v`` may be None); ``heads``: the model's head index of
    each saved head.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor | None
    grid: VideoGrid
    text_len: int
    key_lengths: torch.Tensor | None
    scale: float
    layer: str
    block_index: int | None
    step: int | None
    num_steps: int | None
    call: int
    heads: list[int]
    dense: bool
    path: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)


def _matches_layer(event, layers) -> bool:
    if layers is None:
        return True
    for sel in layers:
        if isinstance(sel, bool):
            continue
        if isinstance(sel, int):
            if event.block_index == sel:
                return True
        elif fnmatch.fnmatchcase(event.layer, sel) or fnmatch.fnmatchcase(event.layer, "*." + sel):
            return True
    return False


def _matches_step(event, steps) -> bool:
    if steps is None:
        return True
    if event.step is None:
        return False
    for s in steps:
        if s == event.step or (s < 0 and event.num_steps is not None and event.num_steps + s == event.step):
            return True
    return False


def _check_selectors(layers, steps, heads) -> None:
    if layers is not None:
        if isinstance(layers, (str, int)):
            raise ValueError(f"layers={layers!r}: expected a list of block indices and/or layer-name patterns "
                             "(e.g. [0, 15, 'transformer.blocks.29.attn1']), or None for all")
        bad = [x for x in layers if isinstance(x, bool) or not isinstance(x, (int, str))]
        if bad:
            raise ValueError(f"layers: expected block indices (int) or name patterns (str), got {bad!r}")
    if steps is not None:
        if isinstance(steps, int):
            raise ValueError(f"steps={steps!r}: expected a list of step indices (negative: from the end), or None")
        bad = [x for x in steps if isinstance(x, bool) or not isinstance(x, int)]
        if bad:
            raise ValueError(f"steps: expected integer step indices, got {bad!r}")
    if heads is not None:
        if isinstance(heads, int):
            raise ValueError(f"heads={heads!r}: expected a list of head indices, or None for all heads")
        bad = [x for x in heads if isinstance(x, bool) or not isinstance(x, int) or x < 0]
        if bad or not heads:
            raise ValueError(f"heads: expected a non-empty list of non-negative head indices, got {heads!r}")


def _file_name(layer: str, step: int | None, call: int) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", layer)
    return f"{safe}.step{'x' if step is None else f'{step:03d}'}.call{call}.safetensors"


def capture(
    pipe,
    layers: Sequence[int | str] | None = None,
    steps: Sequence[int] | None = None,
    out_dir: str | Path = "captures",
    *,
    heads: Sequence[int] | None = None,
    save_v: bool = True,
    dtype: torch.dtype | None = None,
    config: DraftAttentionConfig | dict | None = None,
    **pipe_kwargs: Any,
) -> list[Path]:
    """Run ``pipe(**pipe_kwargs)`` and save q, k (and v) of the chosen layers and steps; return the files written.

    Args:
        pipe: a Wan (2.1 / 2.2) or HunyuanVideo diffusers pipeline.
        layers: transformer block indices (``event.block_index``) and/or layer-name patterns (``fnmatch``, matched
            against the full name such as ``"transformer.blocks.3.attn1"`` or any dotted suffix of it, e.g.
            ``"blocks.3.attn1"``); None: every video self-attention layer.
        steps: denoising step indices (negative counts from the end: ``-1`` is the last step); None: every step.
        out_dir: folder for the files (created).
        heads: head indices to keep (a real model's full q/k are large: Wan 14B at 720p is 775 MB per tensor in
            bf16); None keeps all.
        save_v: also save v (needed for the output error).
        dtype: save in this dtype (default: as computed, e.g. bfloat16).
        config: draft-attention settings for the run when draft attention is not yet enabled on ``pipe``. Default:
            dense attention at every step (``dense_steps_fraction=1``), so the captured q/k are those of the
            unmodified model. If ``pipe`` already has draft attention enabled, its settings are used (and
            ``config`` must be None) and it stays enabled.
        **pipe_kwargs: passed to ``pipe(...)`` (prompt, sizes, steps; ``output_type="latent"`` skips the VAE).

    Raises:
        ValueError: bad selectors, ``config`` given while draft attention is already enabled, a head index out of
            range, or nothing matched (the message lists the layers and steps that were seen).
    """
    from ..integration import disable_draft_attention, enable_draft_attention, get_draft_processor

    _check_selectors(layers, steps, heads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        processor = get_draft_processor(pipe)
    except RuntimeError:
        processor = None
    if processor is not None and config is not None:
        raise ValueError("capture(config=...): draft attention is already enabled on this pipeline; pass "
                         "config=None to capture with its settings, or disable_draft_attention(pipe) first")
    installed = processor is None
    if installed:
        cfg = make_config(config if config is not None else DraftAttentionConfig(dense_steps_fraction=1.0))
        enable_draft_attention(pipe, cfg)
        processor = get_draft_processor(pipe)

    written: list[Path] = []
    calls: dict[tuple[str, int | None], int] = {}
    seen_layers: set[str] = set()
    seen_steps: set[int | None] = set()
    no_grid: set[str] = set()

    def observer(event) -> None:
        seen_layers.add(event.layer)
        seen_steps.add(event.step)
        if not (_matches_layer(event, layers) and _matches_step(event, steps)):
            return
        if event.grid is None:  # the processor could not learn the token grid (it warns and runs dense)
            no_grid.add(event.layer)
            return
        key = (event.layer, event.step)
        call = calls.get(key, 0)
        calls[key] = call + 1
        H = event.q.shape[2]
        idx = list(range(H)) if heads is None else list(heads)
        if max(idx) >= H:
            raise ValueError(f"heads={list(heads)}: this layer has {H} heads (indices 0..{H - 1})")
        sel = torch.tensor(idx, device=event.q.device)
        tensors = {"q": event.q, "k": event.k}
        if save_v:
            tensors["v"] = event.v
        tensors = {n: t.index_select(2, sel).to(dtype or t.dtype).contiguous().cpu() for n, t in tensors.items()}
        if event.key_lengths is not None:
            tensors["key_lengths"] = event.key_lengths.to(torch.int32).contiguous().cpu()
        meta = {
            "format": CAPTURE_FORMAT, "layer": event.layer, "block_index": json.dumps(event.block_index),
            "step": json.dumps(event.step), "num_steps": json.dumps(event.num_steps), "call": str(call),
            "frames": str(event.grid.frames), "height": str(event.grid.height), "width": str(event.grid.width),
            "text_len": str(event.text_len), "scale": repr(float(event.scale)), "heads": json.dumps(idx),
            "dense": json.dumps(bool(event.dense)),
        }
        from safetensors.torch import save_file

        path = out / _file_name(event.layer, event.step, call)
        save_file(tensors, str(path), metadata=meta)
        written.append(path)

    processor.add_observer(observer)
    try:
        pipe(**pipe_kwargs)
    finally:
        processor.remove_observer(observer)
        if installed:
            disable_draft_attention(pipe)
    if not written:
        steps_seen = sorted(seen_steps, key=lambda s: -1 if s is None else s)
        why = f" (calls of {sorted(no_grid)} had no known token grid)" if no_grid else ""
        raise ValueError(f"capture: no call matched layers={layers!r}, steps={steps!r}{why}; seen layers: "
                         f"{sorted(seen_layers)}; seen steps: {steps_seen}")
    return written


def load_capture(path: str | Path, device: torch.device | str = "cpu") -> Capture:
    """Read one file written by :func:`capture` (or :func:`save_capture`).

    Raises ``ValueError`` if the file is not a capture file (names the missing field).
    """
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        meta = f.metadata() or {}
        if meta.get("format") != CAPTURE_FORMAT:
            raise ValueError(f"{path}: not a draft-attention capture file (metadata format="
                             f"{meta.get('format')!r}, expected {CAPTURE_FORMAT!r})")
        names = set(f.keys())
        missing = {"q", "k"} - names
        if missing:
            raise ValueError(f"{path}: missing tensor(s) {sorted(missing)}")
        get = lambda n: f.get_tensor(n) if n in names else None
        q, k, v, kl = get("q"), get("k"), get("v"), get("key_lengths")
    try:
        grid = VideoGrid(int(meta["frames"]), int(meta["height"]), int(meta["width"]))
        known = {"format", "layer", "block_index", "step", "num_steps", "call", "frames", "height", "width",
                 "text_len", "scale", "heads", "dense"}
        return Capture(q=q, k=k, v=v, grid=grid, text_len=int(meta["text_len"]), key_lengths=kl,
                       scale=float(meta["scale"]), layer=meta["layer"], block_index=json.loads(meta["block_index"]),
                       step=json.loads(meta["step"]), num_steps=json.loads(meta["num_steps"]),
                       call=int(meta["call"]), heads=json.loads(meta["heads"]), dense=json.loads(meta["dense"]),
                       path=path, extra={n: s for n, s in meta.items() if n not in known})
    except KeyError as e:
        raise ValueError(f"{path}: capture metadata lacks {e.args[0]!r}") from None


def save_capture(path: str | Path, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None, grid: VideoGrid, *,
                 text_len: int = 0, key_lengths: torch.Tensor | None = None, scale: float | None = None,
                 layer: str = "synthetic", step: int | None = None, num_steps: int | None = None,
                 extra: dict[str, str] | None = None) -> Path:
    """Write q/k/v (``[B, S, H, D]``, diffusers order) in the capture format, e.g. synthetic ones, so that
    :func:`.analyze.analyze` treats them like captured ones."""
    from safetensors.torch import save_file

    if q.dim() != 4 or q.shape[1] != grid.num_tokens + text_len:
        raise ValueError(f"q: expected [B, {grid.num_tokens + text_len}, H, D] for grid {grid} and text_len "
                         f"{text_len}, got {tuple(q.shape)}")
    tensors = {"q": q.contiguous().cpu(), "k": k.contiguous().cpu()}
    if v is not None:
        tensors["v"] = v.contiguous().cpu()
    if key_lengths is not None:
        tensors["key_lengths"] = key_lengths.to(torch.int32).cpu()
    meta = {"format": CAPTURE_FORMAT, "layer": layer, "block_index": "null", "step": json.dumps(step),
            "num_steps": json.dumps(num_steps), "call": "0", "frames": str(grid.frames),
            "height": str(grid.height), "width": str(grid.width), "text_len": str(text_len),
            "scale": repr(float(q.shape[-1] ** -0.5 if scale is None else scale)),
            "heads": json.dumps(list(range(q.shape[2]))), "dense": "true", **(extra or {})}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return Path(path)

"""Writing what the CLI produces: mp4 videos (imageio + ffmpeg), side-by-side comparisons, draft-map PNGs.

Frames are ``[F, H, W, C]``: float in ``[0, 1]`` (``pipe(..., output_type="np").frames[0]``) or uint8.
mp4 needs the ``video`` extra (``pip install "draftattention-diffusers[video]"``: imageio and imageio-ffmpeg).

Example:
    >>> import numpy as np
    >>> a = np.zeros((2, 32, 48, 3), np.float32)
    >>> side_by_side([a, a], labels=["dense", "draft"]).shape
    (2, 48, 112, 3)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

VIDEO_SUFFIXES = (".mp4", ".gif")
_GAP = 16  # pixels between side-by-side videos; multiples of 16 keep ffmpeg from resizing
_LABEL_H = 16


def to_uint8(video: Any) -> np.ndarray:
    """``[F, H, W, C]`` (or ``[1, F, H, W, C]``) float in ``[0, 1]`` or uint8 -> uint8 ``[F, H, W, 3]``."""
    x = video.detach().cpu().float().numpy() if isinstance(video, torch.Tensor) else np.asarray(video)
    if x.ndim == 5 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise ValueError(f"video of shape {x.shape}: expected frames [F, H, W, C] with C in (1, 3, 4)")
    if x.dtype != np.uint8:
        x = (np.clip(x.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.ascontiguousarray(x[..., :3])


def video_writer_missing() -> str | None:
    """None if mp4 can be written here, else the reason with the install line."""
    missing = [m for m in ("imageio", "imageio_ffmpeg") if importlib.util.find_spec(m) is None]
    if missing:
        return (f"writing mp4 needs {' and '.join(missing)}: "
                "pip install \"draftattention-diffusers[video]\" (imageio, imageio-ffmpeg)")
    return None


def check_output_path(path: str | Path, suffixes: Sequence[str] = VIDEO_SUFFIXES) -> Path:
    """Make sure ``path`` can be written before spending minutes on generation.

    Creates the parent folder. Raises ``ValueError`` for a wrong suffix, ``OSError`` (with what to do) when the
    folder cannot be created or written.
    """
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"output {str(path)!r}: expected a file name ending in {' or '.join(suffixes)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"output folder {str(path.parent)!r} cannot be created ({e.strerror or e}); "
                      "pass --output in a writable folder") from None
    probe = path.parent / f".{path.name}.write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OSError(f"output folder {str(path.parent)!r} is not writable ({e.strerror or e}); "
                      "pass --output in a writable folder") from None
    return path


def write_video(video: Any, path: str | Path, fps: int = 16) -> Path:
    """Write frames to ``path`` (``.mp4`` with H.264 via imageio-ffmpeg, or ``.gif``); returns the path.

    The file is written under a temporary name and moved into place when complete (:func:`.fileio.atomic_path`):
    an interrupted write keeps an existing file of that name and leaves no truncated video. Odd frame sizes are
    padded by one black pixel row/column (H.264 with yuv420p needs even sizes).
    """
    from .fileio import atomic_path

    frames = to_uint8(video)
    path = Path(path)
    if path.suffix.lower() == ".gif":
        imgs = [Image.fromarray(f) for f in frames]
        with atomic_path(path) as tmp:
            imgs[0].save(tmp, save_all=True, append_images=imgs[1:], duration=max(1, round(1000 / fps)), loop=0)
        return path
    reason = video_writer_missing()
    if reason:
        raise RuntimeError(reason)
    import imageio.v2 as imageio

    f, h, w, _ = frames.shape
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    with atomic_path(path) as tmp:  # an interrupted write leaves the old file, never a truncated one
        # yuv420p + faststart: plays in every browser (the evaluation report embeds these files)
        imageio.mimwrite(tmp, list(frames), fps=fps, codec="libx264", quality=8, macro_block_size=1,
                         pixelformat="yuv420p", output_params=["-movflags", "+faststart"])
    return path


def read_video(path: str | Path) -> np.ndarray:
    """Frames of a video file as uint8 ``[F, H, W, 3]`` (for tests and evaluation)."""
    import imageio.v2 as imageio

    return np.stack([np.asarray(f)[..., :3] for f in imageio.mimread(str(path), memtest=False)])


def _label_bar(width: int, text: str) -> np.ndarray:
    img = Image.new("RGB", (width, _LABEL_H), (0, 0, 0))
    ImageDraw.Draw(img).text((4, 2), text, fill=(255, 255, 255))
    return np.asarray(img)


def side_by_side(videos: Sequence[Any], labels: Sequence[str] | None = None) -> np.ndarray:
    """Videos of equal frame count and height next to each other, 16-pixel gaps, optional label bar on top.

    Returns uint8 ``[F, H (+16 with labels), sum(W) + 16 * (n - 1), 3]``.
    """
    clips = [to_uint8(v) for v in videos]
    if not clips:
        raise ValueError("side_by_side: expected at least one video")
    if len({c.shape[:2] for c in clips}) != 1:
        raise ValueError(f"side_by_side: videos differ in frames x height: {[c.shape[:2] for c in clips]}")
    if labels is not None and len(labels) != len(clips):
        raise ValueError(f"side_by_side: {len(labels)} labels for {len(clips)} videos")
    f = clips[0].shape[0]
    if labels is not None:
        clips = [np.concatenate([np.broadcast_to(_label_bar(c.shape[2], text), (f, _LABEL_H, c.shape[2], 3)), c],
                                axis=1) for c, text in zip(clips, labels)]
    gap = np.zeros((f, clips[0].shape[1], _GAP, 3), np.uint8)
    parts = [clips[0]]
    for c in clips[1:]:
        parts += [gap, c]
    return np.concatenate(parts, axis=2)


# A few anchor colours of viridis (dark blue -> green -> yellow): readable without matplotlib.
_VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in ``[0, 1]`` -> uint8 RGB ``[..., 3]`` (viridis-like, linear between 5 anchors)."""
    v = np.clip(np.nan_to_num(values.astype(np.float64)), 0.0, 1.0) * (len(_VIRIDIS) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_VIRIDIS) - 2)
    t = (v - lo)[..., None]
    return ((1 - t) * _VIRIDIS[lo] + t * _VIRIDIS[lo + 1]).round().astype(np.uint8)


def render_draft_png(scores: Any, kept: Any | None, path: str | Path, title: str = "",
                     num_video_tiles: int | None = None, max_pixels: int = 1024) -> Path:
    """One PNG: the draft map (left) and the computed tiles (right) of one attention head.

    Args:
        scores: float ``[g, g]``, the draft attention map (rows: query regions, columns: key regions; each row a
            softmax). Colour: ``log10`` of the score from the map's minimum (or 3 decades below its maximum)
            to its maximum.
        kept: bool ``[T, T]`` tiles computed (``TileMask.kept[b, h]``; ``T >= g``: tiles from ``g`` on are text
            tiles), or None for a dense call (every tile computed).
        num_video_tiles: ``g`` when ``kept`` includes text tiles (drawn grey-blue when kept); default ``T``.
        max_pixels: cap on each panel's side; a tile is drawn as ``max(1, max_pixels // T)`` pixels.

    White tiles are computed, black ones skipped. Returns the path.
    """
    s = np.asarray(scores.detach().float().cpu() if isinstance(scores, torch.Tensor) else scores, np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"scores of shape {s.shape}: expected a square draft map [g, g]")
    g = s.shape[0]
    if kept is None:
        k = np.ones((g, g), bool)
    else:
        k = np.asarray(kept.detach().cpu() if isinstance(kept, torch.Tensor) else kept, bool)
        if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] < g:
            raise ValueError(f"kept of shape {k.shape}: expected a square tile mask [T, T] with T >= {g}")
    nv = num_video_tiles if num_video_tiles is not None else k.shape[0]
    logs = np.log10(np.maximum(s, 1e-30))
    top = logs.max()
    low = max(logs.min(), top - 3.0)
    left = colormap((logs - low) / (top - low) if top > low else np.ones_like(logs))
    right = np.where(k[..., None], np.uint8(255), np.uint8(0)).repeat(3, axis=-1)
    text = np.zeros_like(k)
    text[nv:, :] = True
    text[:, nv:] = True
    right[text & k] = (110, 140, 190)
    cell = max(1, max_pixels // max(k.shape[0], 1))
    panels = [np.kron(p, np.ones((cell, cell, 1), np.uint8)) for p in (left, right)]
    hgt = max(p.shape[0] for p in panels)
    panels = [np.pad(p, ((0, hgt - p.shape[0]), (0, 0), (0, 0)), constant_values=40) for p in panels]
    body = np.concatenate([panels[0], np.full((hgt, 8, 3), 40, np.uint8), panels[1]], axis=1)
    if title:
        width = max(body.shape[1], 8 + 6 * len(title))  # the default font is about 6 pixels per character
        body = np.pad(body, ((0, 0), (0, width - body.shape[1]), (0, 0)), constant_values=40)
        body = np.concatenate([_label_bar(width, title), body], axis=0)
    img = body
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path

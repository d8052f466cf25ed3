"""Quality lab: attention-fidelity metrics, synthetic video attention, and capture/analysis of real pipelines.

See docs/quality.md. Example:
    >>> from draftattention_diffusers.core import VideoGrid, get_layout
    >>> from draftattention_diffusers.core.selection import select_tiles
    >>> grid = VideoGrid(3, 16, 32)
    >>> q, k, v = synthetic_qkv(grid, ("local", "global"), head_dim=32)
    >>> lay = get_layout(grid)
    >>> tiles = select_tiles(q[:, lay.perm], k[:, lay.perm], lay, 0.75)
    >>> 0.0 < attention_recall(q, k, tiles).mean <= 1.0
    True
"""

from .analyze import analyze, format_rows, summarize_rows
from .capture import Capture, capture, load_capture, save_capture
from .metrics import (HeadMetric, attention_recall, oracle_tile_mask, output_error, recall_from_mass,
                      static_tile_mask, tile_mass)
from .synthetic import HEAD_KINDS, HeadKind, synthetic_qkv

__all__ = ["Capture", "analyze", "capture", "format_rows", "load_capture", "save_capture", "summarize_rows",
           "HeadMetric", "attention_recall", "oracle_tile_mask", "output_error", "recall_from_mass",
           "static_tile_mask", "tile_mass", "HEAD_KINDS", "HeadKind", "synthetic_qkv"]

"""Model- and kernel-independent draft-attention core: token layout, draft map and tile selection.

The entry point, :func:`draftattention_diffusers.draft_attention`, lives one layer up (``attention.py``, above
``backends/``); ``core`` imports no backend. ``draft_attention`` and ``StageTimer`` are still reachable here, lazily,
for code written against the old place.
"""

from typing import Any

from .layout import TokenLayout, VideoGrid, get_layout
from .selection import TileMask, pool_tiles, select_tiles, select_video_tiles

_MOVED = {"draft_attention", "StageTimer"}  # now in draftattention_diffusers.attention


def __getattr__(name: str) -> Any:
    if name in _MOVED:  # imported on first use only: importing core must not import backends
        from .. import attention

        return getattr(attention, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TokenLayout", "VideoGrid", "get_layout", "TileMask", "pool_tiles", "select_tiles", "select_video_tiles"]

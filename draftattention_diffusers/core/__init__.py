"""Model-independent draft-attention core: token layout, draft map and tile selection, the entry point."""

from .attention import StageTimer, draft_attention
from .layout import TokenLayout, VideoGrid, get_layout
from .selection import TileMask, pool_tiles, select_tiles, select_video_tiles

__all__ = ["StageTimer", "draft_attention", "TokenLayout", "VideoGrid", "get_layout", "TileMask",
           "pool_tiles", "select_tiles", "select_video_tiles"]

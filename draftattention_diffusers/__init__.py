"""draftattention_diffusers: training-free draft attention for diffusers video transformers.

Example:
    >>> from draftattention_diffusers import DraftAttentionConfig
    >>> DraftAttentionConfig(sparsity=0.9).region_size
    (8, 16)
"""

from .config import DraftAttentionConfig, load_preset
from .core import VideoGrid, draft_attention

__version__ = "0.1.0"

__all__ = ["DraftAttentionConfig", "load_preset", "VideoGrid", "draft_attention", "__version__"]

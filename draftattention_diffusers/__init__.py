"""draftattention_diffusers: training-free draft attention for diffusers video transformers.

Example:
    >>> from draftattention_diffusers import DraftAttentionConfig
    >>> DraftAttentionConfig(sparsity=0.9).region_size
    (8, 16)
"""

from .attention import draft_attention
from .config import DraftAttentionConfig, load_preset
from .core import VideoGrid
from .integration import (AttentionEvent, DraftAttentionWarning, DraftAttnProcessor, DraftStats,
                          HunyuanVideoDraftAttnProcessor, WanDraftAttnProcessor, disable_draft_attention,
                          draft_attention_enabled, enable_draft_attention, get_draft_processor, get_draft_stats)
from .integration.stack import FastStack, disable_fast_stack, enable_fast_stack, get_fast_stack
from .models.hunyuan_video import hunyuan_video_cp_plan

__version__ = "0.1.0"

__all__ = ["DraftAttentionConfig", "load_preset", "VideoGrid", "draft_attention", "enable_draft_attention",
           "disable_draft_attention", "draft_attention_enabled", "get_draft_stats", "get_draft_processor",
           "DraftAttnProcessor", "WanDraftAttnProcessor", "HunyuanVideoDraftAttnProcessor", "DraftStats",
           "AttentionEvent", "DraftAttentionWarning", "hunyuan_video_cp_plan", "enable_fast_stack",
           "disable_fast_stack", "get_fast_stack", "FastStack", "__version__"]

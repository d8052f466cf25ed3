"""diffusers integration: the processor, one-line enable/disable, run statistics."""

from .enable import (disable_draft_attention, draft_attention_enabled, enable_draft_attention, get_draft_processor,
                     get_draft_stats)
from .processor import DraftAttnProcessor, HunyuanVideoDraftAttnProcessor, WanDraftAttnProcessor, num_dense_steps
from .stats import AttentionEvent, DraftAttentionWarning, DraftStats

__all__ = ["disable_draft_attention", "draft_attention_enabled", "enable_draft_attention", "get_draft_processor",
           "get_draft_stats", "DraftAttnProcessor", "HunyuanVideoDraftAttnProcessor", "WanDraftAttnProcessor",
           "num_dense_steps", "AttentionEvent", "DraftAttentionWarning", "DraftStats"]

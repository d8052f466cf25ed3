"""What a model family tells the processor: which attention modules are video self-attention, the token grid of
a forward call, the model's own dense processor, and how to compute q, k, v around our attention call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from ..core.layout import VideoGrid

# attend(q, k, v, text_len, attention_mask) -> out [B, S, H, D] in the order of q
AttendFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, Any], torch.Tensor]


@dataclass(frozen=True)
class AttentionRole:
    """What one attention module of a transformer is.

    ``video_self``: video self-attention that draft attention may sparsify; ``block_index`` is what
    ``dense_layers`` refers to. Everything else (cross-attention, text refiner) always runs ``default_processor``.
    """

    name: str
    video_self: bool
    block_index: int | None
    default_processor: Any


class ModelFamily:
    """One supported model family (a plug-in): subclasses fill the class attributes and the four methods."""

    name: ClassVar[str] = ""
    transformer_classes: ClassVar[tuple[str, ...]] = ()

    def grid(self, transformer: torch.nn.Module, latents: torch.Tensor) -> VideoGrid:
        """The token grid of a forward call, from its latent input ``[B, C, T, H, W]``."""
        raise NotImplementedError

    def roles(self, transformer: torch.nn.Module, current: dict[str, Any]) -> dict[torch.nn.Module, AttentionRole]:
        """Role of every attention module; ``current`` maps ``"<module name>.processor"`` to its processor now
        (kept as the default where it is the model's own, else the model's default class is used)."""
        raise NotImplementedError

    def self_attention(self, attn, hidden_states, encoder_hidden_states, attention_mask, rope, attend: AttendFn):
        """The model processor's computation with ``attend`` in place of its attention call."""
        raise NotImplementedError

    def call_default(self, processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope, **kwargs):
        """Call the model's own processor exactly as the model would."""
        raise NotImplementedError

    def tile_order_hooks(self, transformer: torch.nn.Module, order: "TileOrder") -> list | None:
        """Hooks that put the video tokens (and everything indexed by them: RoPE tables, per-token timesteps) in
        tile order once per forward while ``order.active``, and back before the output projection. Returns the
        hook handles, or None where the model cannot run reordered (then every call gathers instead)."""
        return None


class TileOrder:
    """The video-token permutation of the current forward, for the tile-order hooks of a model family."""

    def __init__(self) -> None:
        self.active = False
        self._perm: torch.Tensor | None = None
        self._inv: torch.Tensor | None = None

    def set(self, perm: torch.Tensor | None, inv: torch.Tensor | None) -> None:
        self.active = perm is not None
        self._perm, self._inv = perm, inv

    def to_tiles(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return x.index_select(dim, self._perm.to(x.device))

    def from_tiles(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return x.index_select(dim, self._inv.to(x.device))


def keep_or_default(current: Any, default_cls: type) -> Any:
    """The module's current processor if it is of the model's own class (keeps its settings), else a new one."""
    return current if isinstance(current, default_cls) else default_cls()

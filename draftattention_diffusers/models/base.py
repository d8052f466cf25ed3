"""What a model family tells the processor: which attention modules are video self-attention, the token grid of
a forward call, the model's own dense processor, and how to compute q, k, v around our attention call."""

from __future__ import annotations

import functools
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
    ``dense_layers`` refers to. Everything else (cross-attention, text refiner) always runs ``default_processor``:
    the processor the module had before draft attention (the user's, if they set one), which is also the dense
    path of video self-attention. ``custom``: that processor is not of the model's own class (a user's processor;
    sparse calls bypass it, which draft attention warns about).
    """

    name: str
    video_self: bool
    block_index: int | None
    default_processor: Any
    custom: bool = False


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

    def tile_order_hooks(self, transformer: torch.nn.Module, order: "TileOrder") -> bool:
        """Register (with :func:`register_hook`) the hooks that put the video tokens (and everything indexed by them:
        RoPE tables, per-token timesteps) in tile order once per forward while ``order.active``, and back before the
        output projection. Returns False (registering nothing) where the model cannot run reordered; every call
        then gathers instead."""
        return False


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


class DraftHook(functools.partial):
    """A torch module hook that belongs to draft attention. Hooks are found and removed by this type, not by
    handles: a handle of a deep-copied transformer would point at the original's hook table. (A ``partial``: under
    torch.compile each hook then runs its own code, not one shared ``__call__`` that dynamo would recompile.)"""


def register_hook(module: torch.nn.Module, kind: str, fn: Callable, with_kwargs: bool = False) -> None:
    """``module.register_forward_pre_hook`` (``kind="pre"``) or ``register_forward_hook`` (``"post"``) of ``fn``
    wrapped in a :class:`DraftHook`."""
    register = module.register_forward_pre_hook if kind == "pre" else module.register_forward_hook
    register(DraftHook(fn), with_kwargs=with_kwargs)


_HOOK_TABLES = ("_forward_pre_hooks", "_forward_hooks")
_HOOK_SETS = ("_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs", "_forward_hooks_always_called")


def remove_draft_hooks(root: torch.nn.Module) -> int:
    """Remove every :class:`DraftHook` from ``root`` and its submodules; returns how many were removed."""
    removed = 0
    for module in root.modules():
        for table in _HOOK_TABLES:
            hooks = getattr(module, table)
            for key in [k for k, h in hooks.items() if isinstance(h, DraftHook)]:
                del hooks[key]
                for extra in _HOOK_SETS:
                    getattr(module, extra, {}).pop(key, None)
                removed += 1
    return removed


def count_hooks(root: torch.nn.Module, draft_only: bool = False) -> int:
    """Forward (pre-)hooks on ``root`` and its submodules (only draft attention's with ``draft_only``)."""
    return sum(1 for m in root.modules() for t in _HOOK_TABLES for h in getattr(m, t).values()
               if not draft_only or isinstance(h, DraftHook))


def keep_or_default(current: Any, default_cls: type) -> Any:
    """The module's current processor (the user's choice, kept as the dense path), or a new one of the model's own
    class where there is none or it is draft attention's own."""
    if current is None or getattr(current, "_is_draft_attention", False):
        return default_cls()
    return current

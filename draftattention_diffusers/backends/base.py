"""What every sparse-attention backend is: a name, its limits, and one forward over a tile mask."""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.selection import TileMask


_capabilities: dict[int | None, tuple[int, int]] = {}


@torch.compiler.disable  # queried once per device, outside compiled graphs
def _capability(index: int | None) -> tuple[int, int]:
    _capabilities[index] = torch.cuda.get_device_capability(index)
    return _capabilities[index]


@dataclass(frozen=True)
class AttentionInputs:
    """The facts a backend checks before it runs (one per call; hashable for caching the choice)."""

    device_type: str
    compute_capability: tuple[int, int] | None
    dtype: torch.dtype
    head_dim: int
    value_dim: int
    tile_size: int
    has_key_padding: bool
    needs_grad: bool = False  # a backward pass will follow (training)

    @classmethod
    def from_tensors(cls, q: torch.Tensor, v: torch.Tensor, tile_size: int, has_key_padding: bool = False
                     ) -> "AttentionInputs":
        cc = (_capabilities.get(q.device.index) or _capability(q.device.index)) if q.device.type == "cuda" else None
        needs_grad = torch.is_grad_enabled() and (q.requires_grad or v.requires_grad)
        return cls(q.device.type, cc, q.dtype, q.shape[-1], v.shape[-1], tile_size, has_key_padding, needs_grad)

    @property
    def key(self) -> tuple:
        """The fields as a plain tuple (a dict key that torch.compile can trace)."""
        return (self.device_type, self.compute_capability, self.dtype, self.head_dim, self.value_dim, self.tile_size,
                self.has_key_padding, self.needs_grad)

    def describe(self) -> str:
        cc = f" sm{self.compute_capability[0]}{self.compute_capability[1]}" if self.compute_capability else ""
        return (f"device={self.device_type}{cc}, dtype={str(self.dtype).replace('torch.', '')}, "
                f"head_dim={self.head_dim}, tile_size={self.tile_size}")


@functools.lru_cache(maxsize=None)
def import_error(modules: tuple[str, ...]) -> str | None:
    """None if every module imports, else the first failure (any exception: missing package, CUDA libraries...)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:
            return f"{type(e).__name__}: {e}"
    return None


class SparseAttentionBackend:
    """A block-sparse attention kernel behind one interface.

    Subclasses set ``name``, ``install_hint`` and the tolerances their tests use against the reference backend,
    and implement :meth:`package_missing`, :meth:`not_supported_reasons` and :meth:`forward`.
    """

    name: ClassVar[str] = ""
    install_hint: ClassVar[str] = ""
    package: ClassVar[str] = ""  # what to name when the imports fail
    requires: ClassVar[tuple[str, ...]] = ()  # modules that must import for the backend to run
    supports_backward: ClassVar[bool] = False  # gradients flow through forward (training)
    # max |out - reference| / max |reference| allowed in tests, per dtype name
    tolerance: ClassVar[dict[str, float]] = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}

    def package_missing(self) -> str | None:
        """None if the backend's package imports, else a reason with the install line."""
        err = import_error(self.requires)
        return None if err is None else f"{self.package} is not importable ({err}); install: {self.install_hint}"

    def not_supported_reasons(self, inputs: AttentionInputs) -> list[str]:
        """Every reason this backend cannot run on ``inputs`` (empty list: it can). Each names actual and allowed."""
        missing = self.package_missing()
        reasons = [missing] if missing else []
        if inputs.needs_grad and not self.supports_backward:
            reasons.append("no backward pass (training needs gradients): use backend 'flex' (CUDA) or 'reference'")
        return reasons

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tiles: TileMask,
                key_lengths: torch.Tensor | None, scale: float) -> torch.Tensor:
        """Block-sparse attention on the permuted sequence.

        Args:
            q, k, v: ``[B, S, H, D]`` in tile order (see :mod:`draftattention_diffusers.core.layout`).
            tiles: which ``tile_size x tile_size`` tiles to compute (``tiles.kept``: bool ``[B, H, T, T]``).
            key_lengths: int ``[B]`` or None; keys at positions ``>= key_lengths[b]`` are never attended.
            scale: softmax scale.

        Returns ``[B, S, H, Dv]`` in ``q.dtype``. A query row with no kept key returns zeros.
        """
        raise NotImplementedError

    def dense_forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_lengths: torch.Tensor | None,
                      scale: float) -> torch.Tensor:
        """Dense attention ``[B, S, H, D] -> [B, S, H, Dv]`` (any token order), for dense steps when this backend
        is the config's ``dense_backend``. Backends without a dense kernel raise ``NotImplementedError``."""
        raise NotImplementedError(f"backend {self.name!r} has no dense kernel")


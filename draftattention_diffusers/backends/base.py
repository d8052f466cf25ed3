"""What every sparse-attention backend is: a name, its limits (as data), and one forward over a tile mask.

Adding a kernel is one module with a :class:`SparseAttentionBackend` subclass, mostly data, plus one line in
``backends/__init__.py::_BACKENDS`` and its name in ``config.py::BACKEND_NAMES``. The subclass declares what its
kernel supports; the base class checks every declared limit in :meth:`~SparseAttentionBackend.not_supported_reasons`
and words each reason the same way, ``"<what>=<actual> (supported: <allowed>)"``. A ``*_note`` adds the why after
the generated list::

    class MyBackend(SparseAttentionBackend):
        name = "mine"
        package, requires, install_hint = "my-kernels", ("my_kernels",), "pip install my-kernels"
        devices = ("cuda",)
        min_compute_capability = (8, 0)             # "GPU sm75 (supported: sm80 or newer)"
        dtypes = (torch.float16, torch.bfloat16)    # "dtype=float32 (supported: float16, bfloat16)"
        head_dims = (64, 128)                       # or head_dim_range = (8, 256, 8): multiples of 8 from 8 to 256
        tile_sizes = (128,)
        tile_size_note = ", the kernel's fixed block size"

        def forward(self, q, k, v, tiles, key_lengths, scale):
            ...

Override :meth:`~SparseAttentionBackend.runtime_reasons` only for a check that is not a declared limit (FlexAttention:
Triton on CUDA).
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any, ClassVar

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


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# The region sizes (h, w) that make 128-token tiles, for the tile-size reasons of 128-only kernels.
TILE_128_NOTE = ", i.e. region_size (8, 16) or (16, 8)"


class SparseAttentionBackend:
    """A block-sparse attention kernel behind one interface, its limits declared as class data.

    Subclasses set ``name``, the package they need (``package``, ``requires``, ``install_hint``), their limits
    (below; ``None`` = no limit), the tolerances their tests use against the reference backend, and implement
    :meth:`forward`. :meth:`not_supported_reasons` checks the limits; override :meth:`runtime_reasons` for a check
    that is not one of them.
    """

    name: ClassVar[str] = ""
    install_hint: ClassVar[str] = ""
    package: ClassVar[str] = ""  # what to name when the imports fail
    requires: ClassVar[tuple[str, ...]] = ()  # modules that must import for the backend to run
    supports_backward: ClassVar[bool] = False  # gradients flow through forward (training)

    # ---- limits (None: any). Each *_note is appended to the generated list of allowed values, to say why.
    devices: ClassVar[tuple[str, ...] | None] = None  # torch device types, e.g. ("cuda",)
    device_note: ClassVar[str] = ""
    # inclusive bounds on CUDA's (major, minor), checked when the device is "cuda"; unknown counts as (0, 0)
    min_compute_capability: ClassVar[tuple[int, int] | None] = None
    max_compute_capability: ClassVar[tuple[int, int] | None] = None
    capability_note: ClassVar[str] = ""
    dtypes: ClassVar[tuple[torch.dtype, ...] | None] = None
    dtype_note: ClassVar[str] = ""
    # head dims of queries/keys and of values: an explicit tuple, or (min, max, multiple) (at most one of the two)
    head_dims: ClassVar[tuple[int, ...] | None] = None
    head_dim_range: ClassVar[tuple[int, int, int] | None] = None
    value_dim_equals_head_dim: ClassVar[bool] = False  # one reason for both dims, which must also be equal
    head_dim_note: ClassVar[str] = ""
    tile_sizes: ClassVar[tuple[int, ...] | None] = None
    tile_size_note: ClassVar[str] = ""
    backward_note: ClassVar[str] = ": use backend 'flex' (CUDA) or 'reference'"

    # max |out - reference| / max |reference| allowed in tests, per dtype name
    tolerance: ClassVar[dict[str, float]] = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.head_dims is not None and cls.head_dim_range is not None:
            raise TypeError(f"{cls.__name__}: declare head_dims or head_dim_range, not both")
        for limit in ("devices", "dtypes", "head_dims", "tile_sizes", "requires"):
            if not isinstance(getattr(cls, limit), (tuple, type(None))):
                raise TypeError(f"{cls.__name__}.{limit} must be a tuple, not {type(getattr(cls, limit)).__name__}")

    def package_missing(self) -> str | None:
        """None if the backend's package imports, else a reason with the install line."""
        err = import_error(self.requires)
        return None if err is None else f"{self.package} is not importable ({err}); install: {self.install_hint}"

    # ---- the words, one place
    @classmethod
    def capability_text(cls) -> str:
        """The supported compute capabilities in words (``"sm80 or newer"``, ``"sm90"``, ``"sm80 to sm90"``)."""
        lo, hi = cls.min_compute_capability, cls.max_compute_capability
        sm = "sm{}{}".format
        if lo is not None and hi is not None:
            text = sm(*lo) if lo == hi else f"{sm(*lo)} to {sm(*hi)}"
        elif lo is not None:
            text = f"{sm(*lo)} or newer"
        elif hi is not None:
            text = f"{sm(*hi)} or older"
        else:
            text = "any"
        return text + cls.capability_note

    @classmethod
    def head_dim_text(cls) -> str:
        """The supported head dims in words (``"16, 32, 64"``, ``"multiples of 8 from 8 to 256"``)."""
        if cls.head_dim_range is not None:
            lo, hi, step = cls.head_dim_range
            text = f"multiples of {step} from {lo} to {hi}"
        elif cls.head_dims is not None:
            text = ", ".join(map(str, cls.head_dims))
            text = f"one of {text}" if cls.value_dim_equals_head_dim else text
        else:
            text = "any"
        if cls.value_dim_equals_head_dim:
            text = "equal" if text == "any" else f"equal, {text}"
        return text + cls.head_dim_note

    @classmethod
    def head_dim_ok(cls, d: int) -> bool:
        if cls.head_dim_range is not None:
            lo, hi, step = cls.head_dim_range
            return lo <= d <= hi and d % step == 0
        return cls.head_dims is None or d in cls.head_dims

    @classmethod
    def limits(cls) -> dict[str, str]:
        """Every declared limit in words (``{"device": "cuda", "dtype": "float16, bfloat16", ...}``), for docs and
        reports; the same words as the reasons."""
        out = {}
        if cls.devices is not None:
            out["device"] = ", ".join(cls.devices) + cls.device_note
        if cls.min_compute_capability is not None or cls.max_compute_capability is not None:
            out["compute capability"] = cls.capability_text()
        if cls.dtypes is not None:
            out["dtype"] = ", ".join(map(_dtype_name, cls.dtypes)) + cls.dtype_note
        if cls.head_dims is not None or cls.head_dim_range is not None or cls.value_dim_equals_head_dim:
            out["head_dim"] = cls.head_dim_text()
        if cls.tile_sizes is not None:
            out["tile_size"] = ", ".join(map(str, cls.tile_sizes)) + cls.tile_size_note
        out["backward"] = "yes" if cls.supports_backward else "no"
        return out

    # ---- the checks
    def not_supported_reasons(self, inputs: AttentionInputs) -> list[str]:
        """Every reason this backend cannot run on ``inputs`` (empty list: it can). Each names actual and allowed.

        In order: package, backward, device (or, on CUDA, compute capability), :meth:`runtime_reasons`, dtype,
        head dims, tile size.
        """
        missing = self.package_missing()
        reasons = [missing] if missing else []
        if inputs.needs_grad and not self.supports_backward:
            reasons.append(f"no backward pass (training needs gradients){self.backward_note}")
        limits = self.limits()
        if self.devices is not None and inputs.device_type not in self.devices:
            reasons.append(f"device={inputs.device_type} (supported: {limits['device']})")
        else:
            cc = inputs.compute_capability or (0, 0)
            lo, hi = self.min_compute_capability, self.max_compute_capability
            if inputs.device_type == "cuda" and ((lo is not None and cc < lo) or (hi is not None and cc > hi)):
                reasons.append(f"GPU sm{cc[0]}{cc[1]} (supported: {limits['compute capability']})")
            reasons += self.runtime_reasons(inputs)
        if self.dtypes is not None and inputs.dtype not in self.dtypes:
            reasons.append(f"dtype={_dtype_name(inputs.dtype)} (supported: {limits['dtype']})")
        h, v = inputs.head_dim, inputs.value_dim
        if self.value_dim_equals_head_dim:
            if not self.head_dim_ok(h) or v != h:
                reasons.append(f"head_dim={h}, value head_dim={v} (supported: {limits['head_dim']})")
        else:
            for label, d in (("head_dim", h), ("value head_dim", v)):
                if not self.head_dim_ok(d):
                    reasons.append(f"{label}={d} (supported: {limits['head_dim']})")
        if self.tile_sizes is not None and inputs.tile_size not in self.tile_sizes:
            reasons.append(f"tile_size={inputs.tile_size} (supported: {limits['tile_size']})")
        return reasons

    def runtime_reasons(self, inputs: AttentionInputs) -> list[str]:
        """Reasons beyond the declared limits, looked up on this machine (checked only on a supported device).

        Override for something truly special; the default has none."""
        return []

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


"""The one public configuration of draft attention, and preset loading."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SELECTIONS = ("topk", "paper", "row_topk", "topk_heads")
"""Tile-selection rules, see :func:`draftattention_diffusers.core.selection.select_tiles`."""

POOLINGS = ("avg", "max")
REORDERS = ("per_forward", "per_call")

BACKEND_NAMES: tuple[str, ...] = ("fa4", "flex", "bsa", "reference")
"""Sparse-attention backends, fastest first (the order ``"auto"`` tries them in). Here, in a module with no package
imports, so that the config validates names without importing the kernels; ``backends/__init__.py::_BACKENDS`` maps
each name to its class (and checks at import that the two agree)."""


def _plain_number(x: Any) -> Any:
    """numpy (or other ``numbers``) scalars as Python ``int`` / ``float``; anything else unchanged for validation.

    ``bool`` is left alone so that validation rejects it (``True`` is an ``int`` to Python, never a sparsity).
    """
    if isinstance(x, bool):
        return x
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Real):
        return float(x)
    return x


def _plain_tuple(value: Any, name: str, expected: str, ordered: bool = False) -> tuple:
    """``value`` (a list, tuple or array: YAML gives lists) as a tuple of plain numbers; ``ValueError`` if it is
    not a collection (``tuple(0)`` would raise ``TypeError``, and a string would split into characters), or, with
    ``ordered``, if it has no order (a set: ``{16, 8}`` would not say which is the height)."""
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__") or \
            (ordered and isinstance(value, (set, frozenset))):
        raise ValueError(f"{name}={value!r}: expected {expected}")
    try:
        return tuple(_plain_number(x) for x in value)
    except TypeError:  # e.g. a 0-d array or tensor: iterable type, no items
        raise ValueError(f"{name}={value!r}: expected {expected}") from None


@dataclass(frozen=True)
class DraftAttentionConfig:
    """How draft attention sparsifies the video self-attention of a diffusion transformer.

    Attributes:
        sparsity: fraction of video-video tiles (region pairs) that are skipped, in ``[0, 1)``. ``0.9`` computes
            10% of the video-video attention tiles. Text rows and columns (HunyuanVideo) are always computed and
            do not count.
        region_size: ``(h, w)`` tokens of one draft region inside a frame. ``h * w`` tokens form one tile of the
            block-sparse kernel; the GPU kernels need ``h * w == 128`` (the paper's ``(8, 16)``).
        selection: how tiles are chosen from the draft map (per batch item and head):
            ``"topk"`` (default): the ``ceil((1 - sparsity) * g^2)`` highest-scoring region pairs of the whole
            ``g x g`` map, where every query region first keeps its best key region, so no query row is empty;
            ``"paper"``: the published rule and arithmetic (threshold = the ``k``-th smallest score with
            ``k = int((1 - (1 - sparsity)) * g^2)``, keep ``score >= threshold``; keeps one tile more than the
            budget, plus ties, and may leave rows empty);
            ``"row_topk"``: the same number of key regions for every query region.
            ``"topk_heads"``: ``"topk"`` with the budget of all heads of a batch item shared among them (diffuse
            heads get more tiles, concentrated ones fewer; same total); measured in docs/quality.md.
        pooling: ``"avg"`` (paper) or ``"max"`` pooling of Q and K inside a region (max is worse; for studies).
        dense_steps_fraction: fraction of the denoising steps, from the first, that run dense attention
            (``ceil(fraction * num_steps)`` steps). ``1.0`` means always dense.
        warmup_sparsity: opt-in, for studies of the warm-up's cost: the warm-up steps (the first
            ``dense_steps_fraction``, when that is in ``(0, 1)``) run draft attention at this sparsity instead of
            dense attention (a milder warm-up). ``None`` (default): the paper's dense warm-up.
        dense_layers: indices of transformer blocks that always run dense (per transformer).
        backend: ``"auto"`` (fastest backend that can run on the inputs) or a backend name
            (``"fa4"``, ``"flex"``, ``"bsa"``, ``"reference"``); see ``python -m draftattention_diffusers info``.
        dense_backend: what computes self-attention in dense steps and dense layers: ``"auto"`` (default):
            flash-attn-4 dense where it can run (Hopper, bf16/fp16), unless you chose diffusers' attention backend
            (``transformer.set_attention_backend(...)``, the ``attention_backend(...)`` context manager,
            ``DIFFUSERS_ATTN_BACKEND``) or installed a processor of your own: then, and where flash-attn-4 cannot
            run, the model's own processor; ``"diffusers"``: always the model's own processor and attention
            backend; or a backend name with a dense kernel (``"fa4"``).
        reorder: when tokens are put in tile order: ``"per_forward"`` (default) once per transformer forward, after
            the patch embedding (RoPE tables too), and back before the output projection, so attention calls need no
            gathers; ``"per_call"``: gather q, k, v and scatter the output in every attention call. Same result up
            to float rounding. With ``per_forward`` every forward that can be sparse (``dense_steps_fraction < 1``)
            runs in tile order, dense steps too, so that step caches see one token order. It applies to a single
            process (not under context parallelism, not HunyuanVideo's token-replace I2V); elsewhere ``per_call``
            is used.

    Example:
        >>> cfg = DraftAttentionConfig(sparsity=0.75, dense_layers=(0,))
        >>> cfg.tile_size
        128

    The config is frozen: change a field with :meth:`replace` (a validated copy). numpy scalars are accepted and
    stored as Python numbers.

    Raises:
        ValueError: a field is out of range; the message names the field and the allowed values.
    """

    sparsity: float = 0.9
    region_size: tuple[int, int] = (8, 16)
    selection: str = "topk"
    pooling: str = "avg"
    dense_steps_fraction: float = 0.25
    warmup_sparsity: float | None = None
    dense_layers: tuple[int, ...] = ()
    backend: str = "auto"
    dense_backend: str = "auto"
    reorder: str = "per_forward"

    def __post_init__(self) -> None:
        # frozen: normalise through object.__setattr__, before validation and before anyone sees the object
        set_ = object.__setattr__
        set_(self, "sparsity", _plain_number(self.sparsity))
        set_(self, "dense_steps_fraction", _plain_number(self.dense_steps_fraction))
        if self.warmup_sparsity is not None:
            set_(self, "warmup_sparsity", _plain_number(self.warmup_sparsity))
        set_(self, "region_size", _plain_tuple(self.region_size, "region_size",
                                               "two positive integers (h, w), e.g. (8, 16)", ordered=True))
        set_(self, "dense_layers", _plain_tuple(self.dense_layers, "dense_layers",
                                                "a sequence of non-negative block indices, e.g. (0,) or ()"))
        self.validate()

    @property
    def tile_size(self) -> int:
        """Tokens per tile: one region of ``region_size``."""
        return self.region_size[0] * self.region_size[1]

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that is out of range (called on construction)."""
        s = self.sparsity
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not (0.0 <= s < 1.0) or math.isnan(s):
            raise ValueError(f"sparsity={s!r}: expected a number in [0, 1)")
        rs = self.region_size
        if len(rs) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in rs):
            raise ValueError(f"region_size={rs!r}: expected two positive integers (h, w), e.g. (8, 16)")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection={self.selection!r}: expected one of {SELECTIONS}")
        if self.reorder not in REORDERS:
            raise ValueError(f"reorder={self.reorder!r}: expected one of {REORDERS}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r}: expected one of {POOLINGS}")
        w = self.warmup_sparsity
        if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float)) or not (0.0 <= w < 1.0)):
            raise ValueError(f"warmup_sparsity={w!r}: expected None (dense warm-up) or a number in [0, 1)")
        f = self.dense_steps_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not (0.0 <= f <= 1.0):  # NaN fails too
            raise ValueError(f"dense_steps_fraction={f!r}: expected a number in [0, 1]")
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.dense_layers):
            raise ValueError(f"dense_layers={self.dense_layers!r}: expected non-negative block indices")
        if not isinstance(self.backend, str) or not self.backend:
            raise ValueError(f"backend={self.backend!r}: expected 'auto' or a backend name")
        if self.backend != "auto" and self.backend not in BACKEND_NAMES:
            raise ValueError(f"backend={self.backend!r}: expected 'auto' or one of {BACKEND_NAMES}")
        if self.dense_backend not in ("auto", "diffusers") and self.dense_backend not in BACKEND_NAMES:
            raise ValueError(f"dense_backend={self.dense_backend!r}: expected 'auto', 'diffusers' or one of "
                             f"{BACKEND_NAMES}")

    def replace(self, **overrides: Any) -> "DraftAttentionConfig":
        """A copy with some fields changed (validated); unknown field names raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown DraftAttentionConfig field(s) {unknown}; expected some of {sorted(known)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (tuples stay tuples)."""
        return dataclasses.asdict(self)


def make_config(config: DraftAttentionConfig | dict | None = None, **overrides: Any) -> DraftAttentionConfig:
    """Normalise ``config`` (None, a dict or a config) and apply ``overrides``."""
    if config is None:
        config = DraftAttentionConfig()
    elif isinstance(config, dict):
        config = DraftAttentionConfig().replace(**config)
    elif not isinstance(config, DraftAttentionConfig):
        raise ValueError(f"config: expected a DraftAttentionConfig, a dict or None, got {type(config).__name__}")
    return config.replace(**overrides) if overrides else config


@dataclass
class Preset:
    """A YAML preset: a generation setting plus the draft-attention fields (shipped ones: :func:`preset_dir`).

    Keys: ``model`` (hub id or local path), ``height``, ``width``, ``num_frames``, ``num_inference_steps``,
    ``guidance_scale``, optional ``description``, ``flow_shift`` and ``draft_attention`` (the fields of
    :class:`DraftAttentionConfig`); optional ``guidance_scale_2`` (Wan2.2's second, low-noise expert) and ``fps``
    (of the written video).
    """

    model: str
    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    draft_attention: DraftAttentionConfig = field(default_factory=DraftAttentionConfig)
    description: str = ""
    flow_shift: float | None = None
    guidance_scale_2: float | None = None
    fps: int | None = None


def load_preset(path_or_name: str | Path) -> Preset:
    """Load a preset by file path or by name (a file ``<name>.yaml`` of :func:`preset_dir`, shipped in the package).

    Raises ``ValueError`` naming the unknown key or the bad value, ``FileNotFoundError`` listing known presets.
    """
    import yaml

    path = Path(path_or_name)
    if not path.exists():
        cand = preset_dir() / f"{path_or_name}.yaml"
        if not cand.exists():
            known = ", ".join(sorted(p.stem for p in preset_dir().glob("*.yaml"))) or "none found"
            raise FileNotFoundError(f"preset {str(path_or_name)!r} not found; known presets: {known}")
        path = cand
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:  # includes tags the safe loader refuses (e.g. !!python/object)
        raise ValueError(f"{path}: not a valid preset YAML file ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of preset keys")
    known = {f.name for f in dataclasses.fields(Preset)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    missing = sorted(f.name for f in dataclasses.fields(Preset)
                     if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                     and f.name not in data)
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}")
    draft = data.pop("draft_attention", None) or {}
    if not isinstance(draft, dict):
        raise ValueError(f"{path}: draft_attention must be a mapping of DraftAttentionConfig fields")
    try:
        cfg = DraftAttentionConfig().replace(**draft)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: draft_attention: {e}") from None
    for key in ("height", "width", "num_frames", "num_inference_steps", "fps"):
        val = data.get(key)
        if (val is not None or key != "fps") and (not isinstance(val, int) or isinstance(val, bool) or val <= 0):
            raise ValueError(f"{path}: {key}={val!r}: expected a positive integer")
    for key in ("guidance_scale", "guidance_scale_2", "flow_shift"):
        val = data.get(key)
        if val is None and key != "guidance_scale":
            continue
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not val >= 0 or math.isinf(val):
            raise ValueError(f"{path}: {key}={val!r}: expected a non-negative number")
    if not isinstance(data["model"], str) or not data["model"].strip():
        raise ValueError(f"{path}: model={data['model']!r}: expected a hub id or a local path")
    if not isinstance(data.get("description", ""), str):
        raise ValueError(f"{path}: description: expected a string")
    return Preset(draft_attention=cfg, **data)


def preset_dir() -> Path:
    """The folder of the shipped presets: ``configs/`` inside the package (package data, so a wheel has it too)."""
    return Path(__file__).resolve().parent / "configs"

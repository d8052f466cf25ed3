"""Synthetic video attention: q, k, v with the structure of a video diffusion transformer, for fidelity studies
where no model weights are available.

It is *not* a real model. It reproduces the ingredients that decide which attention tiles matter:

* **3D RoPE exactly as Wan applies it** (interleaved pairs; head dim split into frame / row / column axes as
  ``WanRotaryPosEmbed``, theta 10,000). A constant vector ``u`` in q and k, rotated by RoPE, gives a logit that
  depends only on the relative position: ``pos_a * sum_i s_i cos(w_i * d_a)`` per axis ``a``, with shares ``s_i``
  of the RoPE frequencies ``w_i`` (a peak at distance 0 that decays with distance, like the positional locality of
  real heads). Which axes carry it makes the head
  local (all three), *spatial* in Sparse VideoGen's sense (mainly the frame axis: the same frame), *temporal*
  (only the row/column axes: the same place in every frame) or close to *global* (none).
* **Content**: a smooth random field over ``(frame, row, column)`` per head (Gaussian-smoothed white noise with
  correlation lengths in frames and tokens) that moves with a constant velocity (a camera pan), added to q and k:
  tokens with similar content attend to each other wherever they are. This is what makes attention depend on the
  input, so a static pattern cannot capture it but a draft map can.
* **Token noise**: independent per token, so that tiles are not perfectly uniform inside.
* **First-frame sink** (optional per head): keys of frame 0 get a logit bonus through the lowest-frequency frame
  pair (practically unrotated), like the first-frame sinks reported for Wan-class models.

Amplitudes are in logits (nats): ``pos_t = 6`` adds 6 to the logit of a key in the same frame, relative to a
far one. ``v`` is a per-head mean vector plus a smooth field plus token noise (each channel: mean ~N(0, 1), then
variance 1 + 0.25).

Limits: one random field per head is a crude stand-in for learned features; real heads mix these behaviours, have
layer- and step-dependent sharpness, massive activations and text interaction; the kinds and amplitudes below were
chosen by hand to span diffuse to concentrated heads (dense-attention statistics printed by ``scripts/fidelity.py
--stats``). Conclusions drawn here must be checked on captured q/k from a real model (``draftattention
capture`` / ``analyze``).

Example:
    >>> from draftattention_diffusers.core import VideoGrid
    >>> q, k, v = synthetic_qkv(VideoGrid(3, 8, 16), heads=("local", "temporal"), head_dim=32, seed=0)
    >>> q.shape
    torch.Size([1, 384, 2, 32])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core.layout import VideoGrid


@dataclass(frozen=True)
class HeadKind:
    """Logit amplitudes (nats) of one synthetic head.

    Attributes:
        pos: positional peak per axis ``(frame, row, column)``.
        content: logit between tokens of identical content (unit-norm content vectors).
        noise: standard deviation of the per-token logit noise.
        sink: logit bonus of frame-0 keys.
        sharpness: RoPE pair ``i`` of an axis carries a share of ``pos`` proportional to ``w_i ** sharpness``
            (``w_i`` its frequency): 0 spreads it evenly (a slowly decaying peak), 1 favours high frequencies (a
            peak a few tokens wide).
        corr: correlation lengths of the content field ``(frames, rows, columns)`` (Gaussian sigma).
        content_low_freq: put the content only in channel pairs whose RoPE frequency is below 0.02 (nearly
            unrotated across the grid): content similarity then attracts at any distance; otherwise RoPE makes it
            fade with distance.
        classes: 0 for a continuous content field; ``K > 0`` segments the video into ``K`` content classes
            (blobs of the smooth field, softly assigned to ``K`` random prototype vectors): tokens attend to all
            tokens of their class, near or far (a semantic head).
    """

    pos: tuple[float, float, float]
    content: float
    noise: float = 1.0
    sink: float = 0.0
    sharpness: float = 1.0
    corr: tuple[float, float, float] = (2.0, 3.0, 3.0)
    content_low_freq: bool = False
    classes: int = 0


HEAD_KINDS: dict[str, HeadKind] = {
    # nearby tokens in space and time
    "local": HeadKind(pos=(8.0, 10.0, 10.0), content=4.0),
    # Sparse VideoGen "spatial" head: its own frame, wide in space
    "spatial": HeadKind(pos=(14.0, 3.0, 3.0), content=5.0),
    # Sparse VideoGen "temporal" head: the same place in every frame
    "temporal": HeadKind(pos=(0.0, 12.0, 12.0), content=3.0),
    # content-driven, weak position
    "global": HeadKind(pos=(1.5, 1.5, 1.5), content=10.0, corr=(3.0, 5.0, 5.0), content_low_freq=True,
                       classes=6),
    # local plus a first-frame sink
    "sink": HeadKind(pos=(8.0, 8.0, 8.0), content=4.0, sink=7.0),
}
"""Head kinds of the generator; extend with your own :class:`HeadKind`."""

DEFAULT_HEADS = ("local", "spatial", "temporal", "global")


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels per RoPE axis ``(frame, row, column)``, split as ``WanRotaryPosEmbed`` does."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _rope_angles(grid: VideoGrid, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Rotation angle of every interleaved channel pair at every token: float64 ``[S, head_dim // 2]``."""
    angles = []
    F_, H, W = grid.frames, grid.height, grid.width
    pos = [torch.arange(n, dtype=torch.float64) for n in (F_, H, W)]
    for axis, d in enumerate(rope_axis_dims(head_dim)):
        freqs = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        a = pos[axis][:, None] * freqs[None]  # [n_axis, d/2]
        shape = [1, 1, 1, d // 2]
        shape[axis] = a.shape[0]
        angles.append(a.view(shape).expand(F_, H, W, d // 2))
    return torch.cat(angles, dim=-1).reshape(F_ * H * W, head_dim // 2)


def _pair_freqs(head_dim: int, theta: float = 10000.0) -> list[float]:
    """RoPE frequency of every interleaved channel pair, axes concatenated (frame, row, column)."""
    out = []
    for d in rope_axis_dims(head_dim):
        out += (1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)).tolist()
    return out


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of ``x [S, D]`` by ``angles [S, D/2]`` (Wan's convention)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out


def _gaussian_smooth(x: torch.Tensor, sigmas: tuple[float, float, float]) -> torch.Tensor:
    """Separable Gaussian smoothing of ``x [C, F, H, W]`` over its last three dims (reflect padding)."""
    for axis, s in zip((1, 2, 3), sigmas):
        if s <= 0:
            continue
        r = min(math.ceil(3 * s), x.shape[axis] - 1)
        if r <= 0:
            continue
        t = torch.arange(-r, r + 1, dtype=x.dtype)
        kernel = torch.exp(-0.5 * (t / s) ** 2)
        kernel = (kernel / kernel.sum()).view(1, 1, -1)
        moved = x.movedim(axis, -1)
        shp = moved.shape
        flat = F.pad(moved.reshape(-1, 1, shp[-1]), (r, r), mode="reflect")
        x = F.conv1d(flat, kernel).reshape(shp).movedim(-1, axis)
    return x


def smooth_field(grid: VideoGrid, channels: int, corr: tuple[float, float, float], generator: torch.Generator,
                 velocity: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """A smooth random field ``[S, channels]`` (diffusers token order), unit variance per channel.

    White noise on a canvas large enough for the motion, smoothed with Gaussian ``corr`` sigmas (frames, rows,
    columns), then frame ``f`` is cropped at offset ``velocity * f`` (rows, columns): the content pans.
    """
    F_, H, W = grid.frames, grid.height, grid.width
    vy, vx = velocity
    my, mx = math.ceil(abs(vy) * (F_ - 1)), math.ceil(abs(vx) * (F_ - 1))
    noise = torch.randn(channels, F_, H + my, W + mx, generator=generator)
    field = _gaussian_smooth(noise, corr)
    frames = []
    for f in range(F_):
        oy = round(vy * f) + (my if vy < 0 else 0)
        ox = round(vx * f) + (mx if vx < 0 else 0)
        frames.append(field[:, f, oy:oy + H, ox:ox + W])
    out = torch.stack(frames, dim=1).reshape(channels, -1).T  # [S, C]
    return (out - out.mean(0)) / out.std(0).clamp_min(1e-6)


def synthetic_head(grid: VideoGrid, kind: HeadKind, head_dim: int, generator: torch.Generator,
                   velocity: tuple[float, float] = (0.5, 1.0)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of one head, float32 ``[S, head_dim]`` each (after RoPE, as the kernel sees them).

    Logit (softmax scale ``head_dim ** -0.5``) between query at ``p`` and key at ``p'``::

        sum_a pos_a * sum_i s_ai cos(w_ai (p_a - p'_a))   positional (RoPE of a constant vector, shares s_ai)
        + content * <c(p), R c(p')>                       content similarity (c unit norm, R: relative RoPE)
        + noise * N(0, 1)-like per pair                   token noise
        + sink * [frame(p') == 0]                         first-frame sink
        + cross terms of these (small, key dependent)
    """
    D = head_dim
    root = D ** 0.5
    dims = rope_axis_dims(D)
    S = grid.num_tokens
    angles = _rope_angles(grid, D).float()

    # Positional vector on the first channel of every pair of an axis, pair i weighted by freq_i ** sharpness
    # (the shares of one axis sum to 1); the lowest-frequency frame pair is reserved for the sink.
    u = torch.zeros(D)
    start = 0
    for axis, d in enumerate(dims):
        n = d // 2 - (1 if axis == 0 else 0)
        freqs = 1.0 / 10000.0 ** (torch.arange(0, 2 * n, 2, dtype=torch.float64) / d)
        share = freqs ** kind.sharpness
        share = (share / share.sum()).float()
        u[start:start + 2 * n:2] = (kind.pos[axis] * root * share).sqrt()
        start += d
    sink_ch = 2 * (dims[0] // 2 - 1)

    if kind.classes > 0:
        z = smooth_field(grid, kind.classes, kind.corr, generator, velocity)
        prototypes = torch.randn(kind.classes, D, generator=generator)
        c = torch.softmax(4.0 * z, dim=1) @ prototypes  # nearly hard segments
    else:
        c = smooth_field(grid, D, kind.corr, generator, velocity)
    if kind.content_low_freq:
        c = c * (angles[-1:].new_tensor(_pair_freqs(D)) < 0.02).repeat_interleave(2).float()
    c = c / c.norm(dim=1, keepdim=True).clamp_min(1e-6) * math.sqrt(kind.content * root)
    sigma = math.sqrt(kind.noise)
    q = u + c + sigma * torch.randn(S, D, generator=generator)
    k = u + c + sigma * torch.randn(S, D, generator=generator)
    if kind.sink > 0:
        a = math.sqrt(kind.sink * root)
        q[:, sink_ch] += a
        k[: grid.height * grid.width, sink_ch] += a
    # Values: a per-head mean (real value vectors are far from zero-mean) plus a smooth field and token noise.
    mean = torch.randn(D, generator=generator)
    v = mean + smooth_field(grid, D, (1.0, 2.0, 2.0), generator, velocity) + 0.5 * torch.randn(S, D,
                                                                                             generator=generator)
    return apply_rope(q, angles), apply_rope(k, angles), v


def synthetic_qkv(
    grid: VideoGrid,
    heads: tuple[str | HeadKind, ...] = DEFAULT_HEADS,
    head_dim: int = 128,
    seed: int = 0,
    batch: int = 1,
    velocity: tuple[float, float] = (0.5, 1.0),
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthetic q, k, v ``[batch, S, H, head_dim]`` in diffusers order (frame-major, row-major; no text).

    Args:
        grid: video token grid (e.g. ``VideoGrid(21, 30, 52)`` for Wan 480p, 81 frames).
        heads: one :data:`HEAD_KINDS` name or :class:`HeadKind` per head.
        head_dim: channels per head (even, >= 12; real models: 128).
        seed: head ``h`` of batch item ``b`` uses ``torch.Generator().manual_seed(seed + 1000 * b + h)``: the same
            seed gives the same tensors on every machine, and adding heads does not change the earlier ones.
        velocity: content motion in tokens per frame ``(rows, columns)``.

    Raises ``ValueError`` for an unknown head kind or an odd / too small ``head_dim``.
    """
    if head_dim % 2 or head_dim < 12:
        raise ValueError(f"head_dim={head_dim}: expected an even number >= 12")
    kinds = []
    for h in heads:
        if isinstance(h, str):
            if h not in HEAD_KINDS:
                raise ValueError(f"head kind {h!r}: expected one of {tuple(HEAD_KINDS)} or a HeadKind")
            h = HEAD_KINDS[h]
        kinds.append(h)
    if not kinds:
        raise ValueError("heads: expected at least one head kind")
    qs, ks, vs = [], [], []
    for b in range(batch):
        per = [synthetic_head(grid, kind, head_dim, torch.Generator().manual_seed(seed + 1000 * b + i), velocity)
               for i, kind in enumerate(kinds)]
        qs.append(torch.stack([p[0] for p in per], dim=1))
        ks.append(torch.stack([p[1] for p in per], dim=1))
        vs.append(torch.stack([p[2] for p in per], dim=1))
    return tuple(torch.stack(x).to(dtype) for x in (qs, ks, vs))

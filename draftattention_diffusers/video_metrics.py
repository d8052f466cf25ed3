"""Video quality metrics for dense-vs-draft comparisons: PSNR, SSIM and (optionally) LPIPS.

Videos are ``[F, H, W, C]`` frames (what ``pipe(..., output_type="np").frames[0]`` returns): float in ``[0, 1]`` or
uint8 in ``[0, 255]``, as numpy arrays or torch tensors. Conventions (those of the paper's evaluation code family):

* PSNR: one mean squared error over every pixel of the video, ``10 * log10(1 / mse)`` (``inf`` for identical
  videos).
* SSIM: Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), ``K1 = 0.01``, ``K2 = 0.03``, data range 1,
  reflect-padded borders, averaged over pixels, channels and frames. Computed by ``torchmetrics`` (in float32) when
  it is installed (``pip install torchmetrics``), else by the small built-in implementation below, which follows the
  same definition (the tests check that both agree).
* LPIPS: ``torchmetrics`` (with ``torchvision``) or the ``lpips`` package, AlexNet backbone, frames scaled to
  ``[-1, 1]``, averaged over frames. It needs the ImageNet backbone weights in the torch hub cache; when a package
  or the weights are missing, :func:`lpips_unavailable_reason` says which, and nothing is computed.

Example:
    >>> import numpy as np
    >>> a = np.random.default_rng(0).uniform(0.2, 0.8, (3, 32, 32, 3)).astype(np.float32)
    >>> round(psnr(a, a + 0.01), 3)
    40.0
    >>> round(ssim(a, a), 6)
    1.0
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

_WINDOW, _SIGMA, _K1, _K2 = 11, 1.5, 0.01, 0.03
# torchvision's AlexNet ImageNet weights, which both LPIPS implementations load as their backbone.
_ALEXNET_WEIGHTS = "alexnet-owt-7be5be79.pth"


def to_frames(video: Any) -> torch.Tensor:
    """A video as float64 ``[F, C, H, W]`` in ``[0, 1]``.

    Accepts ``[F, H, W, C]`` (or ``[1, F, H, W, C]``) float in ``[0, 1]`` or uint8, numpy or torch, ``C`` in 1..4.
    Raises ``ValueError`` for another shape.
    """
    x = torch.as_tensor(np.asarray(video) if not isinstance(video, torch.Tensor) else video).detach().cpu()
    if x.dim() == 5 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 4 or not 1 <= x.shape[-1] <= 4:
        raise ValueError(f"video of shape {tuple(x.shape)}: expected frames [F, H, W, C] with C in 1..4")
    x = x.to(torch.float64) / 255.0 if x.dtype == torch.uint8 else x.to(torch.float64)
    return x.permute(0, 3, 1, 2).contiguous()


def _pair(a: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = to_frames(a), to_frames(b)
    if x.shape != y.shape:
        raise ValueError(f"videos differ in shape: {tuple(x.shape)} vs {tuple(y.shape)} (as [F, C, H, W]); "
                         "compare videos of the same size and frame count")
    return x, y


def psnr(reference: Any, test: Any) -> float:
    """PSNR in dB of ``test`` against ``reference`` over the whole video (data range 1); ``inf`` if identical."""
    x, y = _pair(reference, test)
    mse = float(torch.mean((x - y) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def psnr_per_frame(reference: Any, test: Any) -> list[float]:
    """PSNR in dB of each frame (data range 1; ``inf`` for an identical frame): where in the video they differ."""
    x, y = _pair(reference, test)
    mse = torch.mean((x - y) ** 2, dim=(1, 2, 3)).tolist()
    return [math.inf if m == 0.0 else 10.0 * math.log10(1.0 / m) for m in mse]


def _gaussian_window(channels: int, dtype: torch.dtype) -> torch.Tensor:
    coords = torch.arange(_WINDOW, dtype=dtype) - (_WINDOW - 1) / 2
    g = torch.exp(-(coords**2) / (2 * _SIGMA**2))
    g = g / g.sum()
    return torch.outer(g, g).expand(channels, 1, _WINDOW, _WINDOW)


def ssim_builtin(reference: Any, test: Any) -> float:
    """SSIM as defined in the module doc, in plain PyTorch (float64). Frames must be at least 11 x 11 pixels."""
    x, y = _pair(reference, test)
    _, c, h, w = x.shape
    if min(h, w) < _WINDOW:
        raise ValueError(f"frames of {h}x{w} pixels: SSIM needs at least {_WINDOW}x{_WINDOW}")
    pad = (_WINDOW - 1) // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    y = F.pad(y, (pad, pad, pad, pad), mode="reflect")
    win = _gaussian_window(c, x.dtype)
    mx, my, xx, yy, xy = F.conv2d(torch.cat([x, y, x * x, y * y, x * y]), win, groups=c).split(x.shape[0])
    var_x = (xx - mx * mx).clamp_min(0.0)
    var_y = (yy - my * my).clamp_min(0.0)
    cov = xy - mx * my
    c1, c2 = _K1**2, _K2**2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (var_x + var_y + c2))
    return float(s.mean())


def ssim_backend() -> str:
    """``"torchmetrics"`` when it is installed (then :func:`ssim` uses it), else ``"builtin"``."""
    return "torchmetrics" if importlib.util.find_spec("torchmetrics") else "builtin"


def ssim(reference: Any, test: Any) -> float:
    """Mean SSIM over frames (see module doc), by ``torchmetrics`` if installed, else :func:`ssim_builtin`."""
    if ssim_backend() == "builtin":
        return ssim_builtin(reference, test)
    from torchmetrics.functional.image import structural_similarity_index_measure

    x, y = _pair(reference, test)
    if min(x.shape[-2:]) < _WINDOW:
        raise ValueError(f"frames of {x.shape[-2]}x{x.shape[-1]} pixels: SSIM needs at least {_WINDOW}x{_WINDOW}")
    # float32: on a CPU about 10x faster than float64 (whose depthwise convolutions have no fast kernel); the mean
    # differs by ~1e-8, far below the 4 decimals shown
    return float(structural_similarity_index_measure(y.float(), x.float(), gaussian_kernel=True, sigma=_SIGMA,
                                                     data_range=1.0, k1=_K1, k2=_K2))


def _lpips_package() -> str | None:
    """Which LPIPS implementation can be imported: ``"torchmetrics"``, ``"lpips"`` or None."""
    if importlib.util.find_spec("torchmetrics") and importlib.util.find_spec("torchvision"):
        return "torchmetrics"
    if importlib.util.find_spec("lpips"):
        return "lpips"
    return None


def lpips_unavailable_reason() -> str | None:
    """None when LPIPS can be computed here; else why not, with what to do."""
    if _lpips_package() is None:
        return ("LPIPS skipped: neither torchmetrics+torchvision nor lpips is installed "
                "(pip install torchmetrics torchvision, or pip install lpips)")
    weights = Path(torch.hub.get_dir()) / "checkpoints" / _ALEXNET_WEIGHTS
    if not weights.is_file():
        return (f"LPIPS skipped: its AlexNet backbone weights are not in the torch hub cache ({weights}); "
                "run once with network access to download them")
    return None


_lpips_models: dict[str, torch.nn.Module] = {}


def lpips(reference: Any, test: Any, device: str | torch.device = "cpu") -> float:
    """Mean LPIPS (AlexNet) over frames. Raises ``RuntimeError`` with the reason when it cannot run here."""
    reason = lpips_unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    x, y = _pair(reference, test)
    if x.shape[1] != 3:
        raise ValueError(f"LPIPS needs RGB frames, got {x.shape[1]} channels")
    pkg = _lpips_package()
    if pkg not in _lpips_models:
        if pkg == "torchmetrics":
            from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

            _lpips_models[pkg] = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=False).net
        else:
            import lpips as lpips_pkg

            _lpips_models[pkg] = lpips_pkg.LPIPS(net="alex", verbose=False)
    net = _lpips_models[pkg].to(device).eval()
    scores = []
    with torch.no_grad():
        for i in range(x.shape[0]):  # one frame at a time: bounded memory for long, large videos
            a = (x[i : i + 1].float() * 2 - 1).to(device)
            b = (y[i : i + 1].float() * 2 - 1).to(device)
            scores.append(float(net(a, b).mean()))
    return float(np.mean(scores))


def video_metrics(reference: Any, test: Any, with_lpips: bool = True, device: str | torch.device = "cpu"
                  ) -> dict[str, Any]:
    """PSNR, SSIM and LPIPS of ``test`` against ``reference``.

    Returns ``{"psnr", "ssim", "ssim_backend", "lpips", "lpips_skipped"}``: ``lpips`` is None and
    ``lpips_skipped`` says why when it is not computed (``with_lpips=False`` or unavailable).
    """
    out: dict[str, Any] = {"psnr": psnr(reference, test), "ssim": ssim(reference, test),
                           "ssim_backend": ssim_backend(), "lpips": None, "lpips_skipped": None}
    if not with_lpips:
        out["lpips_skipped"] = "LPIPS skipped: not requested"
        return out
    reason = lpips_unavailable_reason()
    if reason:
        out["lpips_skipped"] = reason
    else:
        out["lpips"] = lpips(reference, test, device=device)
    return out

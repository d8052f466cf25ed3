"""What this machine can run: package versions, the GPU, and every backend's status with its reasons; and the
supported models.

``python -m draftattention_diffusers info`` prints :func:`backend_status_report` and :func:`supported_models_report`
(also ``python -m draftattention_diffusers.info``).
"""

from __future__ import annotations

import platform
from importlib import metadata

import torch

_PACKAGES = ("diffusers", "flash-attn-4", "nvidia-cutlass-dsl", "triton", "block_sparse_attn")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def backend_status_report(device: str | torch.device | None = None, dtype: torch.dtype = torch.bfloat16,
                          head_dim: int = 128, tile_size: int = 128, key_padding: bool = True) -> str:
    """A text report: versions, GPU, and for each backend "ok" or every reason it cannot run.

    The backends are checked against typical inputs of the target models (``dtype`` bf16, ``head_dim`` 128,
    128-token tiles, padded text keys) on ``device`` (default: the first CUDA GPU, else the CPU). The last line says
    what ``backend="auto"`` picks for such inputs.

    Example:
        >>> print(backend_status_report())  # doctest: +SKIP
        draftattention_diffusers 0.1.0 | python 3.12.3 | torch 2.11.0+cu130 (CUDA 13.0)
        ...
        auto -> fa4
    """
    from . import __version__
    from .backends import BACKEND_NAMES, AttentionInputs, backend_report

    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    lines = [f"draftattention_diffusers {__version__} | python {platform.python_version()} | torch {torch.__version__}"
             f" (CUDA {torch.version.cuda or 'none'})"]
    lines.append("packages: " + ", ".join(f"{p} {_version(p)}" for p in _PACKAGES))
    cc = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        cc = (props.major, props.minor)
        lines.append(f"GPU: {props.name}, sm{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB")
    else:
        lines.append("GPU: none (CUDA available: " + str(torch.cuda.is_available()) + ")")
    inputs = AttentionInputs(device.type, cc, dtype, head_dim, head_dim, tile_size, key_padding)
    lines.append(f"backends for {inputs.describe()}, key padding={key_padding} (fastest first):")
    report = backend_report(inputs)
    width = max(map(len, BACKEND_NAMES))
    for name in BACKEND_NAMES:
        reasons = report[name]
        status = "ok" if not reasons else "cannot run: " + "; ".join(reasons)
        lines.append(f"  {name:<{width}}  {status}")
    auto = next((n for n in BACKEND_NAMES if not report[n]), None)
    lines.append(f"auto -> {auto or 'none (every backend has a reason above)'}")
    return "\n".join(lines)


def supported_models_report() -> str:
    """One line per model family: its transformer classes, the pipelines the command line loads (with the inputs
    each takes), those served by the Python API only, and its tiny models.

    Example:
        >>> print(supported_models_report().splitlines()[0])
        supported models (family: transformer; command-line pipelines; Python API only; tiny models):
    """
    from .models import families

    lines = ["supported models (family: transformer; command-line pipelines; Python API only; tiny models):"]
    for f in families():
        loads = ", ".join(name + "".join(f" --{i.kind}" for i in recipe.inputs) for name, recipe in f.pipelines.items())
        lines.append(f"  {f.title}: {', '.join(f.transformer_classes)}; {loads or '-'}; "
                     f"{', '.join(f.other_pipelines) or '-'}; {', '.join(f.tiny_variants) or '-'}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(backend_status_report())
    print(supported_models_report())

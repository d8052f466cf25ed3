"""The ``draftattention`` command (also ``python -m draftattention_diffusers``).

Subcommands:
  generate  one video with draft attention (or ``--dense``), its time and draft-attention statistics
  compare   the same prompt and seed dense and with draft attention: time ratio, PSNR / SSIM / LPIPS, side by side
  info      versions, GPU and every attention backend's status on this machine
  bench     the attention benchmark (:mod:`.benchmark_attention`; arguments are passed through)
  capture   save q/k/v of chosen layers and steps of a pipeline run (:func:`.quality.capture.capture`)
  analyze   attention recall and output error of tile selections on captured files (:func:`.quality.capture.analyze`)

``--model`` is a diffusers Wan (2.1 / 2.2) or HunyuanVideo pipeline (hub id or local folder), or one of the
embedded tiny random-weight pipelines ``tiny-wan``, ``tiny-wan22``, ``tiny-hunyuan`` (no download, CPU, seconds).

Example:
    $ draftattention generate --model tiny-wan
    $ draftattention compare --preset wan2.1-1.3b-480p --prompt "A cat walks on the grass"

User errors (unknown model, missing weights, bad preset, unwritable output, ...) print one line and exit with
code 1 (2 for bad command-line syntax); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .config import SELECTIONS, DraftAttentionConfig, Preset, load_preset
from .models import ModelFamily, families, family_for_pipeline, tiny_alias, tiny_models

# Everything model-specific comes from the family table (models/): these names are derived from it.
TINY_MODELS = {name: tiny_alias(name) for name in tiny_models()}
"""``--model`` names of the embedded tiny pipelines -> ``build_tiny_pipeline`` name."""

SUPPORTED_PIPELINES = {cls: f.name for f in families() for cls in f.pipelines}
"""Pipeline classes the CLI loads (text-to-video) -> family name. Others can still use the Python API where it
supports them."""

TINY_DEFAULTS = {"height": 256, "width": 512, "num_frames": 9, "num_inference_steps": 6}
"""Small enough for a CPU in seconds; 12 draft regions, so 90% sparsity really skips tiles."""

DEFAULT_FPS = {f.name: f.default_fps for f in families()}
DEFAULT_PROMPT = "A cat walks on the grass, realistic style."


def _listing(items) -> str:
    """``"a"``, ``"a and b"``, ``"a, b and c"``."""
    items = list(items)
    return " and ".join(items) if len(items) < 3 else f"{', '.join(items[:-1])} and {items[-1]}"


_MODELS_TITLE = _listing(f.title for f in families() if f.pipelines)  # "Wan2.1 / Wan2.2 and HunyuanVideo"


class CLIError(Exception):
    """A problem the user can fix: printed as one line with what to do, exit code 1."""


_warned: set[str] = set()  # warnings already printed in this run (evaluate.py calls compare() once per prompt)


def warn(message: str) -> None:
    """Print ``draftattention: warning: <message>`` (one line on stderr), once per run: an option that is ignored."""
    if message not in _warned:
        _warned.add(message)
        print(f"draftattention: warning: {' '.join(message.split())}", file=sys.stderr)


# --------------------------------------------------------------------------------------------- settings
@dataclass
class RunSettings:
    """Everything one generation needs (preset values merged with command-line flags).

    ``None`` for height, width, num_frames, steps or guidance means: the pipeline's own default.
    """

    model: str
    prompt: str = DEFAULT_PROMPT
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None
    flow_shift: float | None = None
    seed: int = 42
    fps: int | None = None
    config: DraftAttentionConfig = dataclasses.field(default_factory=DraftAttentionConfig)

    def validate(self) -> None:
        for name in ("height", "width"):
            v = getattr(self, name)
            if v is not None and (v <= 0 or v % 16):
                raise CLIError(f"--{name} {v}: expected a positive multiple of 16 (the VAE downsamples 8x and "
                               "the transformer patches 2x2)")
        if self.num_frames is not None and (self.num_frames <= 0 or (self.num_frames - 1) % 4):
            raise CLIError(f"--frames {self.num_frames}: expected 4k+1 frames (the VAE compresses time 4x), "
                           "e.g. 9, 33, 81, 129")
        if self.num_inference_steps is not None and self.num_inference_steps <= 0:
            raise CLIError(f"--steps {self.num_inference_steps}: expected a positive integer")
        if self.fps is not None and self.fps <= 0:
            raise CLIError(f"--fps {self.fps}: expected a positive integer")
        for flag, v in (("--guidance", self.guidance_scale), ("guidance_scale_2", self.guidance_scale_2)):
            if v is not None and not (math.isfinite(v) and v >= 0):  # NaN fails both
                raise CLIError(f"{flag} {v}: expected a finite non-negative number, e.g. 5.0 (1.0: no guidance)")
        if self.flow_shift is not None and not (math.isfinite(self.flow_shift) and self.flow_shift > 0):
            raise CLIError(f"--flow-shift {self.flow_shift}: expected a finite positive number, e.g. 3.0 (480p) or "
                           "5.0 (720p)")


def _preset(name: str) -> Preset:
    try:
        return load_preset(name)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(f"invalid preset: {e}") from None


def settings_from_args(args: argparse.Namespace, dense: bool = False) -> RunSettings:
    """Merge, lowest priority first: built-in defaults, tiny-model defaults, ``--preset``, explicit flags.

    Also checks, before any model is loaded, what can be checked without it: the values, a local ``--model``
    path, ``--device``, ``--offload`` and whether ``--backend`` can run on the device (not for ``dense`` runs,
    which do not use it). Raises :class:`CLIError`.
    """
    preset = _preset(args.preset) if args.preset else None
    model = args.model or (preset.model if preset else None)
    if not model:
        raise CLIError(f"no model: pass --model (a hub id, a local folder, or {' / '.join(TINY_MODELS)}) "
                       "or --preset (names: draftattention_diffusers/configs/)")
    s = RunSettings(model=model)
    if model in TINY_MODELS:
        s = dataclasses.replace(s, **TINY_DEFAULTS)
    if preset:
        s = dataclasses.replace(
            s, height=preset.height, width=preset.width, num_frames=preset.num_frames,
            num_inference_steps=preset.num_inference_steps, guidance_scale=preset.guidance_scale,
            guidance_scale_2=preset.guidance_scale_2, flow_shift=preset.flow_shift, fps=preset.fps,
            config=preset.draft_attention)
    flags = {"prompt": args.prompt, "negative_prompt": args.negative_prompt, "height": args.height,
             "width": args.width, "num_frames": args.frames, "num_inference_steps": args.steps,
             "guidance_scale": args.guidance, "seed": args.seed, "fps": args.fps, "flow_shift": args.flow_shift}
    s = dataclasses.replace(s, **{k: v for k, v in flags.items() if v is not None})
    overrides = {"sparsity": args.sparsity, "backend": args.backend, "selection": args.selection,
                 "dense_steps_fraction": args.dense_steps_fraction}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        try:
            s.config = s.config.replace(**overrides)
        except ValueError as e:
            raise CLIError(str(e)) from None
    s.validate()
    check_model_path(s.model)
    dev = pick_device(args.device)
    if args.offload:
        if s.model in TINY_MODELS:
            warn(f"--offload is ignored for {s.model}: tiny models are small and are moved to the device whole")
        elif dev.type != "cuda":
            raise CLIError(f"--offload needs a CUDA device (the device is {dev}); drop --offload")
    if not dense:
        check_backend(s, dev)
    return s


def check_backend(s: RunSettings, device: torch.device) -> None:
    """``CLIError`` with the backend's own reasons when ``s.config.backend`` cannot run on ``device`` with the
    dtype the CLI loads the transformer in (bfloat16; tiny models float32) and head_dim 128 (every supported model);
    ``"auto"`` always finds one (``reference`` runs anywhere)."""
    from .backends import AttentionInputs, get_backend

    name = s.config.backend
    if name == "auto":
        return
    cc = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    dtype = torch.float32 if s.model in TINY_MODELS else torch.bfloat16
    inputs = AttentionInputs(device.type, cc, dtype, 128, 128, s.config.tile_size, False)
    reasons = get_backend(name).not_supported_reasons(inputs)
    if reasons:
        raise CLIError(f"--backend {name} cannot run on {inputs.describe()}: {'; '.join(reasons)}; use --backend "
                       "auto (the fastest that can run) or see `draftattention info`")


# ---------------------------------------------------------------------------------------------- loading
DEVICE_FORMS = "auto, cpu, cuda, cuda:N (N: GPU index, e.g. cuda:1), or another torch device type such as mps"


def pick_device(device: str) -> torch.device:
    """``--device`` as a ``torch.device`` (``auto``: cuda if available, else cpu); ``CLIError`` if torch does not
    know the string, or it names CUDA (or a GPU index) this machine does not have."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise CLIError(f"--device {device!r}: not a device torch knows; expected {DEVICE_FORMS}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {device}: CUDA is not available here (torch {torch.__version__}); "
                           "use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise CLIError(f"--device {device}: this machine has {n} CUDA device(s) (cuda:0 .. cuda:{n - 1})")
    return dev


_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")  # "name" or "owner/name": what the Hugging Face hub accepts


def looks_like_local_path(model: str) -> bool:
    """Whether ``model`` can only be a local path, never a hub id: absolute, ``~``, explicitly relative
    (``./``, ``../``), a Windows path, or anything that is not ``name`` / ``owner/name`` (``a/b/c``, ``dir/``,
    spaces). An ``owner/name`` is tried on the hub too, even if a folder ``owner`` exists here."""
    if model in (".", "..") or model.startswith(("/", "./", "../", "~")):
        return True
    if any(sep and sep != "/" and sep in model for sep in (os.sep, os.altsep)) or Path(model).is_absolute():
        return True
    return _HUB_ID.fullmatch(model) is None


def check_model_path(model: str) -> None:
    """``CLIError`` when ``model`` is a local path (:func:`looks_like_local_path`) that does not exist or is a
    file, before any loading (and without asking the hub)."""
    if model in TINY_MODELS:
        return
    path = Path(os.path.abspath(Path(model).expanduser()))  # the message names the folder that was looked in
    if looks_like_local_path(model) and not path.exists():
        raise CLIError(f"model {model!r}: local path {str(path)!r} does not exist; pass the folder of a downloaded "
                       "pipeline (with model_index.json) or a hub id such as Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    if path.is_file():
        raise CLIError(f"model {model!r}: local path {str(path)!r} is a file; expected a pipeline folder (the one "
                       "holding model_index.json)")


def family_of(pipe) -> ModelFamily:
    """The model family of a pipeline the CLI loads (:data:`SUPPORTED_PIPELINES`); ``CLIError`` otherwise."""
    family = family_for_pipeline(pipe, loadable=True)
    if family is None:
        raise CLIError(f"unsupported pipeline {type(pipe).__name__}; supported: {', '.join(SUPPORTED_PIPELINES)}")
    return family


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _pipeline_class_name(model: str) -> tuple[str, bool]:
    """The ``_class_name`` of ``model``'s ``model_index.json`` and whether it was found without the network."""
    from diffusers import DiffusionPipeline

    check_model_path(model)
    local = Path(model).expanduser()
    try:
        return DiffusionPipeline.load_config(str(local) if local.exists() else model,
                                             local_files_only=True)["_class_name"], True
    except OSError:
        pass
    if local.exists():
        raise CLIError(f"{str(local)!r} is not a diffusers pipeline folder (no model_index.json); pass the folder "
                       f"that holds model_index.json, e.g. from `huggingface-cli download <id> --local-dir DIR`")
    # "owner/name" with a folder "owner" here: maybe a mistyped local path, maybe a hub id; the hub decides
    owner = Path(model.split("/")[0])
    local_note = (f" (no local folder {model!r} either, though {str(owner)!r} exists)"
                  if "/" in model and owner.is_dir() else "")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise CLIError(f"model {model!r} not found locally{local_note} and HF_HUB_OFFLINE is set; pass a local path "
                       "(--model /path/to/pipeline) or unset HF_HUB_OFFLINE")
    try:
        return DiffusionPipeline.load_config(model)["_class_name"], False
    except (OSError, ValueError) as e:
        raise CLIError(f"model {model!r} not found locally{local_note} and the hub is unreachable or has no such "
                       f"model ({_first_line(e)}); pass a local path (--model /path/to/pipeline)") from None


def load_pipeline(model: str, device: str | torch.device = "auto", offload: bool = False):
    """A ready pipeline for ``model``: a tiny one (``tiny-wan`` ...) or a Wan / HunyuanVideo pipeline.

    Real models load with their family's recipe (``ModelFamily.pipelines``), as the diffusers docs recommend: Wan
    transformer(s) in bfloat16 with the VAE in float32; HunyuanVideo transformer in bfloat16, the rest in float16,
    VAE tiling on. ``offload`` uses ``enable_model_cpu_offload`` (less GPU memory, slower) instead of moving
    everything to the device; tiny models ignore it.

    Raises :class:`CLIError` (one line, with what to do) for an unknown or unreachable model, a folder without
    weights and an unsupported pipeline class.
    """
    dev = device if isinstance(device, torch.device) else pick_device(device)
    if model in TINY_MODELS:
        from .tiny import build_tiny_pipeline

        return build_tiny_pipeline(TINY_MODELS[model]).to(dev)
    class_name, local_only = _pipeline_class_name(model)
    family = family_for_pipeline(class_name, loadable=True)
    if family is None:
        raise CLIError(f"model {model!r} is a {class_name}; the CLI supports {', '.join(SUPPORTED_PIPELINES)} "
                       f"({_MODELS_TITLE} text-to-video) and {', '.join(TINY_MODELS)}")
    try:
        pipe = family.pipelines[class_name].load(class_name, model, local_files_only=local_only)
    except (OSError, ValueError) as e:
        raise CLIError(f"could not load {class_name} from {model!r}: weights missing or incomplete "
                       f"({_first_line(e)}); download the complete pipeline and pass its folder") from None
    if offload:
        if dev.type != "cuda":
            raise CLIError("--offload needs a CUDA device")
        pipe.enable_model_cpu_offload(device=dev)
    else:
        pipe.to(dev)
    return pipe


def apply_flow_shift(pipe, shift: float | None) -> None:
    """Set the scheduler's flow shift (``flow_shift`` for UniPC as Wan uses, ``shift`` for flow-match Euler)."""
    if shift is None:
        return
    cfg = pipe.scheduler.config
    key = "flow_shift" if "flow_shift" in cfg else "shift" if "shift" in cfg else None
    if key is None:
        raise CLIError(f"--flow-shift: scheduler {type(pipe.scheduler).__name__} has no flow shift")
    pipe.scheduler = type(pipe.scheduler).from_config(cfg, **{key: shift})


# ----------------------------------------------------------------------------------------------- running
def prompt_seed(prompt: str) -> int:
    """A stable seed from a prompt: tiny pipelines have no text encoder, each prompt gets fixed random embeddings."""
    return zlib.crc32(prompt.encode("utf-8"))


def call_kwargs(pipe, s: RunSettings) -> dict[str, Any]:
    """Keyword arguments of ``pipe(...)`` for settings ``s`` (frames come back as numpy ``[B, F, H, W, 3]``)."""
    family = family_of(pipe)
    kw: dict[str, Any] = {"output_type": "np"}
    if s.model in TINY_MODELS:
        from .tiny import tiny_prompt_kwargs

        kw.update(tiny_prompt_kwargs(pipe, seed=prompt_seed(s.prompt)))
    else:
        kw["prompt"] = s.prompt
    if s.negative_prompt is not None:
        if not family.takes_negative_prompt:
            warn(f"--negative-prompt is ignored: {family.negative_prompt_note}")
        elif s.model in TINY_MODELS:
            warn(f"--negative-prompt is ignored: {s.model} has no text encoder (fixed random embeddings stand in "
                 "for the prompts)")
        else:
            kw["negative_prompt"] = s.negative_prompt
    for key in ("height", "width", "num_frames", "num_inference_steps", "guidance_scale"):
        if getattr(s, key) is not None:
            kw[key] = getattr(s, key)
    if s.guidance_scale_2 is not None:
        if getattr(pipe, "transformer_2", None) is None:
            raise CLIError("guidance_scale_2 needs a Wan2.2 pipeline with two experts (transformer_2)")
        kw["guidance_scale_2"] = s.guidance_scale_2
    return family.pipeline_kwargs(pipe, kw)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_pipeline(pipe, kwargs: dict[str, Any], seed: int) -> tuple[np.ndarray, dict[str, float]]:
    """Run ``pipe(**kwargs)`` with a seeded CPU generator (same noise on any device).

    Returns ``(frames, times)``: frames float ``[F, H, W, 3]`` in ``[0, 1]`` (first video); times in seconds:
    ``total`` (the whole call) and ``denoise`` (from the call to the end of the last denoising step: text encoding
    and the transformer, not the VAE decode).
    """
    device = pipe._execution_device
    marks: list[float] = []

    def on_step_end(_pipe, step, _t, cb_kwargs):
        if step == _pipe.num_timesteps - 1:
            _sync(device)
            marks.append(time.perf_counter())
        return {}

    _sync(device)
    start = time.perf_counter()
    out = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(seed), callback_on_step_end=on_step_end)
    _sync(device)
    end = time.perf_counter()
    frames = out.frames[0]
    frames = frames.float().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    return frames, {"total": end - start, "denoise": (marks[-1] if marks else end) - start}


def _default_fps(pipe, s: RunSettings) -> int:
    return s.fps or family_of(pipe).default_fps


def _slug(model: str) -> str:
    return Path(model.rstrip("/")).name.lower() or "video"


# ------------------------------------------------------------------------------------------ mask pictures
def _parse_set(text: str, what: str) -> set[int] | None:
    """``"all"`` -> None, ``"0,3,5"`` -> {0, 3, 5}."""
    if text.strip().lower() == "all":
        return None
    try:
        values = {int(x) for x in text.split(",") if x.strip()}
    except ValueError:
        raise CLIError(f"--mask-{what} {text!r}: expected 'all' or comma-separated integers, e.g. 0,5") from None
    if not values or min(values) < 0:
        raise CLIError(f"--mask-{what} {text!r}: expected 'all' or non-negative integers")
    return values


class MaskSaver:
    """Observer that writes PNGs of the draft map and the computed tiles (:func:`video.render_draft_png`).

    One PNG per (step, layer, head) for the chosen block indices, steps and heads, from the first call of each
    step (with Wan's classifier-free guidance: the conditional pass) and batch item 0. Dense calls show the draft
    map that would have been used and every tile computed.
    """

    def __init__(self, out_dir: str | Path, config: DraftAttentionConfig, layers: set[int] | None,
                 steps: set[int] | None, heads: set[int] | None) -> None:
        self.out_dir, self.config = Path(out_dir), config
        self.layers, self.steps, self.heads = layers, steps, heads
        self.written: list[Path] = []
        self._seen: set[tuple] = set()

    def draft_map(self, event) -> torch.Tensor:
        """The draft map of batch item 0, float32 ``[H, g, g]`` in tile order (the order of ``event.tiles``),
        recomputed from ``event.q`` / ``event.k`` (diffusers' token order) as draft attention computes it."""
        from .core import get_layout, pool_tiles
        from .core.selection import draft_scores

        layout = get_layout(event.grid, event.text_len, self.config.region_size, event.q.device)
        q, k = (x[:1].index_select(1, layout.perm) for x in (event.q, event.k))
        return draft_scores(pool_tiles(q, layout, self.config.pooling), pool_tiles(k, layout, self.config.pooling),
                            event.scale)[0]

    def __call__(self, event) -> None:
        from .core import get_layout
        from .video import render_draft_png

        step = event.step
        if event.grid is None or (self.steps is not None and step not in self.steps):
            return
        if self.layers is not None and event.block_index not in self.layers:
            return
        key = (step, event.layer)
        if key in self._seen:
            return
        self._seen.add(key)
        num_heads = event.q.shape[2]
        heads = sorted(self.heads) if self.heads is not None else list(range(num_heads))
        if heads[-1] >= num_heads:
            raise CLIError(f"--mask-heads {heads[-1]}: this model has {num_heads} heads (0..{num_heads - 1})")
        layout = get_layout(event.grid, event.text_len, self.config.region_size, event.q.device)
        scores = self.draft_map(event)
        for h in heads:
            kept = event.tiles.kept[0, h] if event.tiles is not None else None
            state = ("dense" if event.tiles is None
                     else f"sparsity {float(event.tiles.video_sparsity[0, h]):.3f}")
            when = f"step {step}/{event.num_steps}" if step is not None else "step ?"
            name = f"step{step if step is not None else 'x'}_{event.layer.replace('.', '-')}_head{h}.png"
            self.written.append(render_draft_png(scores[h], kept, self.out_dir / name,
                                                 title=f"{when} {event.layer} head {h} {state}",
                                                 num_video_tiles=layout.num_video_tiles))


# ------------------------------------------------------------------------------------------- subcommands
def _print_settings(pipe, s: RunSettings, dense: bool) -> None:
    size = f"{s.height or 'default'}x{s.width or 'default'}, {s.num_frames or 'default'} frames, " \
           f"{s.num_inference_steps or 'default'} steps"
    print(f"model: {s.model} ({type(pipe).__name__}), {size}, seed {s.seed}")
    if s.model in TINY_MODELS:
        print("note: tiny random-weight model: the prompt only seeds fixed random embeddings; the video is noise")
    if dense:
        print("draft attention: off (dense attention)")
    else:
        c = s.config
        print(f"draft attention: sparsity {c.sparsity}, selection {c.selection}, dense for the first "
              f"{c.dense_steps_fraction:.0%} of steps, dense layers {list(c.dense_layers) or 'none'}, "
              f"backend {c.backend}")


def _write_json(path: str | None, data: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2, default=str))


def check_writable(path: str | Path | None, flag: str, folder: bool = False) -> None:
    """``CLIError`` unless ``path`` (a file, or with ``folder`` a folder, created with its missing parents when
    written) can be written: not a folder where a file is meant, not a file where a folder is meant (``path`` or
    any parent), and its nearest existing parent a folder the user may write to. Nothing is created."""
    if not path:
        return
    p = Path(path).expanduser()
    if not folder and p.is_dir():
        raise CLIError(f"{flag} {str(path)!r} is a folder; expected a file name")
    if folder and p.exists() and not p.is_dir():
        raise CLIError(f"{flag} {str(path)!r} is a file; expected a folder (created if missing)")
    existing = p if folder else p.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CLIError(f"{flag} {str(path)!r} cannot be created: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} {str(path)!r} cannot be written: no write permission in {str(existing)!r}")
    if not folder and p.exists() and not os.access(p, os.W_OK):
        raise CLIError(f"{flag} {str(path)!r} cannot be written: the file is read-only")


def _check_output(path: str | Path) -> Path:
    from .video import check_output_path, video_writer_missing

    if Path(path).is_dir():  # a folder named like a video: the suffix check would pass it
        raise CLIError(f"--output {str(path)!r} is a folder; expected a video file name ending in .mp4 or .gif")
    try:
        out = check_output_path(path)
    except (ValueError, OSError) as e:
        raise CLIError(str(e)) from None
    if out.suffix.lower() == ".mp4" and video_writer_missing():
        raise CLIError(video_writer_missing())
    return out


def cmd_generate(args: argparse.Namespace) -> int:
    from .video import write_video

    s = settings_from_args(args, dense=args.dense)
    if args.save_masks and args.dense:
        raise CLIError("--save-masks shows draft attention's choices: drop --dense")
    check_writable(args.json, "--json")
    check_writable(args.save_masks, "--save-masks", folder=True)
    mask_sets = [_parse_set(text, what) if text else None for text, what in
                 ((args.mask_layers, "layers"), (args.mask_steps, "steps"), (args.mask_heads, "heads"))
                 ] if args.save_masks else None
    out = _check_output(args.output or f"outputs/{_slug(s.model)}-{'dense' if args.dense else 'draft'}.mp4")
    pipe = load_pipeline(s.model, args.device, args.offload)
    apply_flow_shift(pipe, s.flow_shift)
    pipe.set_progress_bar_config(disable=args.no_progress)
    kwargs = call_kwargs(pipe, s)
    _print_settings(pipe, s, args.dense)
    saver = None
    with contextlib.ExitStack() as stack:
        if not args.dense:
            from . import draft_attention_enabled, get_draft_processor

            stack.enter_context(draft_attention_enabled(pipe, s.config))
            if args.save_masks:
                layers, steps, heads = mask_sets
                if not args.mask_layers:  # the first block that is not always dense
                    layers = {min(set(range(len(s.config.dense_layers) + 1)) - set(s.config.dense_layers))}
                saver = MaskSaver(args.save_masks, s.config, layers, steps, heads)
                proc = get_draft_processor(pipe)
                proc.add_observer(saver)
                stack.callback(proc.remove_observer, saver)
        frames, times = run_pipeline(pipe, kwargs, s.seed)
        stats = None
        if not args.dense:
            from . import get_draft_stats

            stats = get_draft_stats(pipe)
            summary = stats.summary()
    write_video(frames, out, fps=_default_fps(pipe, s))
    print(f"wrote {out} ({frames.shape[0]} frames, {frames.shape[1]}x{frames.shape[2]})")
    print(f"time: {times['total']:.2f} s (denoising {times['denoise']:.2f} s)")
    if stats is not None:
        print(stats.format())
    if saver is not None:
        print(f"wrote {len(saver.written)} mask pictures to {args.save_masks}")
    _write_json(args.json, {"model": s.model, "output": str(out), "times": times, "settings": dataclasses.asdict(s),
                            "draft_attention": summary if stats is not None else None})
    return 0


def compare(pipe, s: RunSettings, warmup: int = 0, with_lpips: bool = True) -> dict[str, Any]:
    """Run ``pipe`` dense, then with draft attention (same settings and seed); return frames, times and metrics.

    ``warmup`` runs per mode before timing (2 steps, latent output) take compilation and autotuning out of the
    times. Returns ``{"dense": frames, "draft": frames, "times": {"dense": {...}, "draft": {...}},
    "speedup": dense/draft denoising time, "speedup_total": the same for whole calls, "metrics": video_metrics,
    "draft_attention": stats summary, "stats_text": formatted stats}``.
    """
    from . import draft_attention_enabled, get_draft_stats
    from .metrics import video_metrics

    kwargs = call_kwargs(pipe, s)
    short = dict(kwargs, num_inference_steps=2, output_type="latent")
    for _ in range(warmup):
        pipe(**short, generator=torch.Generator("cpu").manual_seed(s.seed))
        with draft_attention_enabled(pipe, s.config):
            pipe(**short, generator=torch.Generator("cpu").manual_seed(s.seed))
    dense, t_dense = run_pipeline(pipe, kwargs, s.seed)
    with draft_attention_enabled(pipe, s.config):
        draft, t_draft = run_pipeline(pipe, kwargs, s.seed)
        stats = get_draft_stats(pipe)
        summary, text = stats.summary(), stats.format()
    device = pipe._execution_device
    return {"dense": dense, "draft": draft, "times": {"dense": t_dense, "draft": t_draft},
            "speedup": t_dense["denoise"] / t_draft["denoise"], "speedup_total": t_dense["total"] / t_draft["total"],
            "metrics": video_metrics(dense, draft, with_lpips=with_lpips, device=device),
            "draft_attention": summary, "stats_text": text}


def cmd_compare(args: argparse.Namespace) -> int:
    from .video import side_by_side, write_video

    s = settings_from_args(args)
    check_writable(args.json, "--json")
    out = _check_output(args.output or f"outputs/{_slug(s.model)}-compare.mp4")
    pipe = load_pipeline(s.model, args.device, args.offload)
    apply_flow_shift(pipe, s.flow_shift)
    pipe.set_progress_bar_config(disable=args.no_progress)
    _print_settings(pipe, s, dense=False)
    r = compare(pipe, s, warmup=args.warmup, with_lpips=not args.no_lpips)
    td, tr, m = r["times"]["dense"], r["times"]["draft"], r["metrics"]
    write_video(side_by_side([r["dense"], r["draft"]],
                             labels=[f"dense {td['total']:.1f}s", f"draft {s.config.sparsity:g} {tr['total']:.1f}s"]),
                out, fps=_default_fps(pipe, s))
    print(f"wrote {out} (left: dense, right: draft attention)")
    print(f"dense: {td['total']:.2f} s (denoising {td['denoise']:.2f} s); draft: {tr['total']:.2f} s "
          f"(denoising {tr['denoise']:.2f} s); speedup {r['speedup']:.2f}x denoising, {r['speedup_total']:.2f}x "
          f"whole call (warm-up runs: {args.warmup})")
    if pipe._execution_device.type == "cpu":
        print("note: on a CPU draft attention runs the reference backend (for correctness): these times say "
              "nothing about GPU speed")
    lp = f"LPIPS {m['lpips']:.4f}" if m["lpips"] is not None else m["lpips_skipped"]
    print(f"draft vs dense: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f} ({m['ssim_backend']}), {lp}")
    print(r["stats_text"])
    _write_json(args.json, {"model": s.model, "output": str(out), "settings": dataclasses.asdict(s),
                            "times": r["times"], "speedup": r["speedup"], "speedup_total": r["speedup_total"],
                            "metrics": m, "draft_attention": r["draft_attention"]})
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    try:
        from .info import backend_status_report
    except ImportError as e:
        raise CLIError(f"the backend report is not available in this install ({e})") from None
    print(backend_status_report())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .benchmark_attention import main as bench_main  # in the package: works from an installed wheel

    try:
        bench_main(args.passthrough, prog="draftattention bench --")
    except SystemExit as e:  # the benchmark's own exit status (argparse: --help 0, bad arguments 2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def _csv_list(text: str, what: str, convert: Callable[[str], Any] = str) -> list:
    try:
        values = [convert(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CLIError(f"{what} {text!r}: expected a comma-separated list") from None
    if not values:
        raise CLIError(f"{what} {text!r}: expected at least one value")
    return values


def _layer_selector(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def cmd_capture(args: argparse.Namespace) -> int:
    from .quality.capture import capture

    s = settings_from_args(args, dense=not args.draft)
    out_dir = Path(args.out_dir or f"captures/{_slug(s.model)}")
    check_writable(out_dir, "--out-dir", folder=True)
    layers = _csv_list(args.layers, "--layers", _layer_selector) if args.layers else None
    steps = _csv_list(args.capture_steps, "--capture-steps", int) if args.capture_steps else None
    heads = _csv_list(args.heads, "--heads", int) if args.heads else None
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    pipe = load_pipeline(s.model, args.device, args.offload)
    apply_flow_shift(pipe, s.flow_shift)
    pipe.set_progress_bar_config(disable=args.no_progress)
    _print_settings(pipe, s, dense=not args.draft)
    kwargs = dict(call_kwargs(pipe, s), output_type="latent",  # q/k/v are all we need: skip the VAE
                  generator=torch.Generator("cpu").manual_seed(s.seed))
    try:
        paths = capture(pipe, layers=layers, steps=steps, out_dir=out_dir, heads=heads, save_v=not args.no_v,
                        dtype=dtypes[args.dtype] if args.dtype else None,
                        config=s.config if args.draft else None, **kwargs)
    except ValueError as e:
        raise CLIError(str(e)) from None
    print(f"wrote {len(paths)} capture files to {out_dir} (analyze them: draftattention analyze {out_dir}/*)")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from .quality.capture import analyze, format_rows, summarize_rows

    check_writable(args.json, "--json")
    paths = [Path(p) for p in args.files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise CLIError(f"capture file(s) not found: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    regions = []
    for r in _csv_list(args.regions, "--regions"):
        try:
            h, w = (int(x) for x in r.lower().split("x"))
        except ValueError:
            raise CLIError(f"--regions {r!r}: expected HxW, e.g. 8x16") from None
        regions.append((h, w))
    try:
        rows = analyze(paths, sparsity=_csv_list(args.sparsity, "--sparsity", float),
                       selections=_csv_list(args.selections, "--selections"),
                       poolings=_csv_list(args.poolings, "--poolings"), region_sizes=regions,
                       static=_csv_list(args.static, "--static") if args.static else (), oracle=not args.no_oracle,
                       error=not args.no_error, error_rows=args.error_rows or None,
                       device=pick_device(args.device))
    except ValueError as e:
        raise CLIError(str(e)) from None
    print(format_rows(rows if args.per_file else summarize_rows(rows)))
    _write_json(args.json, {"rows": rows})
    return 0


# ------------------------------------------------------------------------------------------------ parser
def add_run_options(p: argparse.ArgumentParser, outputs: bool = True) -> None:
    """The model, video, draft-attention and running options shared by ``generate``, ``compare`` and
    ``scripts/evaluate.py`` (read back with :func:`settings_from_args`); ``outputs`` adds --output and --json."""
    g = p.add_argument_group("model and video")
    g.add_argument("--model", help=f"hub id or local folder of a {' / '.join(SUPPORTED_PIPELINES)} diffusers "
                                   f"pipeline, or {' / '.join(TINY_MODELS)} (embedded, no download)")
    g.add_argument("--preset", help="a preset name (draftattention_diffusers/configs/, e.g. wan2.1-14b-720p) "
                                    "or a YAML file; flags override its values")
    g.add_argument("--prompt", help=f"text prompt (default: {DEFAULT_PROMPT!r})")
    g.add_argument("--negative-prompt", help="negative prompt (" + ", ".join(
        f.title for f in families() if f.pipelines and f.takes_negative_prompt) + ")")
    g.add_argument("--height", type=int, help="pixels, multiple of 16")
    g.add_argument("--width", type=int, help="pixels, multiple of 16")
    g.add_argument("--frames", type=int, help="number of frames, 4k+1")
    g.add_argument("--steps", type=int, help="denoising steps")
    g.add_argument("--guidance", type=float, help="guidance scale")
    g.add_argument("--flow-shift", type=float, help="scheduler flow shift (Wan: 3 for 480p, 5 for 720p)")
    g.add_argument("--seed", type=int, help="random seed (default 42)")
    g.add_argument("--fps", type=int, help="frames per second of the written video")
    d = p.add_argument_group("draft attention")
    d.add_argument("--sparsity", type=float, help="fraction of video attention tiles skipped, in [0, 1)")
    d.add_argument("--backend", help="auto, fa4, flex, bsa or reference (see `draftattention info`)")
    d.add_argument("--selection", help=f"tile selection rule: {', '.join(SELECTIONS)}")
    d.add_argument("--dense-steps-fraction", type=float, help="fraction of the first steps that run dense")
    r = p.add_argument_group("running")
    r.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:1, cpu")
    r.add_argument("--offload", action="store_true", help="enable_model_cpu_offload (less GPU memory)")
    r.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    if outputs:
        r.add_argument("--output", "-o", help="output video (.mp4 or .gif); default outputs/<model>-<mode>.mp4")
        r.add_argument("--json", help="also write the results as JSON to this file")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="draftattention", description=f"Draft attention for diffusers video pipelines ({_MODELS_TITLE}): "
                                           "generate, compare with dense, inspect backends.")
    parser.add_argument("--version", action="version", version=f"draftattention_diffusers {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    g = sub.add_parser("generate", parents=[debug], help="generate one video",
                       description="Generate a video with draft attention (or --dense) and print its time and the "
                                   "draft-attention statistics.")
    add_run_options(g)
    g.add_argument("--dense", action="store_true", help="switch draft attention off")
    m = g.add_argument_group("mask pictures")
    m.add_argument("--save-masks", metavar="DIR", help="write PNGs of the draft map and the computed tiles")
    m.add_argument("--mask-layers", help="block indices, or 'all' (default: the first block not in dense_layers)")
    m.add_argument("--mask-steps", default="all", help="denoising steps, or 'all' (default)")
    m.add_argument("--mask-heads", default="0", help="attention heads, or 'all' (default: 0)")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("compare", parents=[debug], help="dense vs draft attention: time and quality",
                       description="Run the same prompt and seed dense and with draft attention; print the time "
                                   "ratio, PSNR / SSIM / LPIPS of draft against dense, write a side-by-side video.")
    add_run_options(c)
    c.add_argument("--warmup", type=int, default=1, help="untimed 2-step warm-up runs per mode (default 1)")
    c.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    c.set_defaults(func=cmd_compare)

    i = sub.add_parser("info", parents=[debug], help="versions, GPU and attention backends",
                       description="Print versions, the GPU and whether each attention backend can run here, "
                                   "with the reasons when it cannot.")
    i.set_defaults(func=cmd_info)

    b = sub.add_parser("bench", parents=[debug], help="attention benchmark (draftattention_diffusers."
                                                      "benchmark_attention)",
                       description="Run the attention benchmark (draftattention_diffusers.benchmark_attention, also "
                                   "scripts/benchmark_attention.py); other arguments are passed to it "
                                   "(draftattention bench -- --help shows them).")
    b.set_defaults(func=cmd_bench)

    cap = sub.add_parser("capture", parents=[debug], help="save q/k/v of chosen layers and steps (quality lab)",
                         description="Run a pipeline and save q, k (and v) of chosen video self-attention layers and "
                                     "steps, as the attention kernel sees them, one safetensors file per call. By "
                                     "default the model runs dense (the unmodified model); --draft runs it with "
                                     "draft attention.")
    add_run_options(cap, outputs=False)
    cap.add_argument("--layers", help="block indices and/or layer-name patterns, e.g. 0,10,blocks.3.attn1 "
                                      "(default: every layer)")
    cap.add_argument("--capture-steps", help="denoising steps, e.g. 10,-1 (negative: from the end; default: all)")
    cap.add_argument("--heads", help="head indices to keep, e.g. 0,4,8 (default: all; real models are large)")
    cap.add_argument("--out-dir", help="folder for the files (default captures/<model>)")
    cap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="save in this dtype")
    cap.add_argument("--no-v", action="store_true", help="do not save v (no output error in analyze)")
    cap.add_argument("--draft", action="store_true", help="run with draft attention (the preset's or flags' "
                                                          "settings) instead of dense")
    cap.set_defaults(func=cmd_capture)

    an = sub.add_parser("analyze", parents=[debug], help="attention recall and output error on captured files",
                        description="Attention recall and output error of tile selections on capture files "
                                    "(draftattention capture), next to the oracle mask of the same budget.")
    an.add_argument("files", nargs="+", help="capture files (.safetensors)")
    an.add_argument("--sparsity", default="0.5,0.75,0.9", help="comma-separated sparsities (default 0.5,0.75,0.9)")
    an.add_argument("--selections", default="topk,paper", help="selection rules (default topk,paper)")
    an.add_argument("--poolings", default="avg", help="poolings: avg, max (default avg)")
    an.add_argument("--regions", default="8x16", help="region sizes HxW (default 8x16)")
    an.add_argument("--static", help="static patterns to add, e.g. window,spatial,temporal")
    an.add_argument("--no-oracle", action="store_true", help="skip the oracle mask")
    an.add_argument("--no-error", action="store_true", help="skip the output error")
    an.add_argument("--error-rows", type=int, default=1024,
                    help="query rows sampled for the output error (0: all rows, exact, slow; default 1024)")
    an.add_argument("--per-file", action="store_true", help="one row per file instead of the mean over files")
    an.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cpu")
    an.add_argument("--json", help="also write the rows as JSON to this file")
    an.set_defaults(func=cmd_analyze)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``draftattention``; returns the exit code."""
    _warned.clear()  # each run warns again (several runs in one process: tests, notebooks)
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        args.passthrough = [a for a in extra if a != "--"]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("draftattention: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line for users; --debug shows the traceback
        if args.debug:
            raise
        if isinstance(e, CLIError):
            message = str(e)
        else:
            message = f"{type(e).__name__}: {_first_line(e)} (run with --debug for the traceback)"
        print(f"draftattention: error: {' '.join(message.split())}", file=sys.stderr)
        return 1


__all__ = ["main", "build_parser", "add_run_options", "load_pipeline", "call_kwargs", "run_pipeline", "compare",
           "settings_from_args", "RunSettings", "CLIError", "MaskSaver", "TINY_MODELS", "SUPPORTED_PIPELINES",
           "pick_device", "check_backend", "check_model_path", "check_writable", "looks_like_local_path", "warn"]

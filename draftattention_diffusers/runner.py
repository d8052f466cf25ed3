"""The runner: settings, loading and running of a pipeline, and dense-vs-draft comparison.

A library for the ``draftattention`` command (:mod:`.cli`, which adds the argument parsing, printing and exit codes)
and for scripts (``scripts/evaluate.py``):

* settings: :class:`RunSettings`, what one generation needs, from :func:`resolve_settings` (preset values merged
  with explicit values and checked before any model is loaded) or from the shared command-line options
  (:func:`add_run_options`, read back by :func:`settings_from_args`);
* loading: :func:`load_pipeline` (tiny models, or a real pipeline with its family's recipe), :func:`apply_flow_shift`;
* running: :func:`call_kwargs`, :func:`run_pipeline`, and :func:`compare` (dense, then draft attention: times and
  video metrics).

Problems the user can fix raise :class:`CLIError` with one line that says what to do (the command prints it and
exits with code 1); an option that is ignored prints one warning line per run (:func:`warn`).

Example (tiny random-weight model, CPU, seconds):
    >>> s = resolve_settings(model="tiny-wan", num_inference_steps=2)  # doctest: +SKIP
    >>> pipe = load_pipeline(s.model, "cpu")                           # doctest: +SKIP
    >>> r = compare(pipe, s, with_lpips=False)                         # doctest: +SKIP
    >>> r["speedup"], r["metrics"]["psnr"]                             # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


MODELS_TITLE = _listing(f.title for f in families() if f.pipelines)  # "Wan2.1 / Wan2.2 and HunyuanVideo"


class CLIError(Exception):
    """A problem the user can fix: the message is one line that says what to do (the command prints it and exits
    with code 1)."""


_warned: set[str] = set()  # warnings already printed in this run (evaluate.py calls compare() once per prompt)


def warn(message: str) -> None:
    """Print ``draftattention: warning: <message>`` (one line on stderr), once per run: an option that is ignored."""
    if message not in _warned:
        _warned.add(message)
        print(f"draftattention: warning: {' '.join(message.split())}", file=sys.stderr)


def reset_warnings() -> None:
    """Start a new run: :func:`warn` prints each warning again (the command calls it at the start of each run)."""
    _warned.clear()


# --------------------------------------------------------------------------------------------- settings
@dataclass
class RunSettings:
    """Everything one generation needs (preset values merged with command-line flags or explicit values:
    :func:`resolve_settings`).

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


def resolve_settings(
    model: str | None = None,
    preset: str | None = None,
    *,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    height: int | None = None,
    width: int | None = None,
    num_frames: int | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int | None = None,
    fps: int | None = None,
    flow_shift: float | None = None,
    sparsity: float | None = None,
    backend: str | None = None,
    selection: str | None = None,
    dense_steps_fraction: float | None = None,
    device: str = "auto",
    offload: bool = False,
    dense: bool = False,
) -> RunSettings:
    """Merge, lowest priority first: built-in defaults, tiny-model defaults, ``preset`` (a preset name or YAML file),
    explicit values (None: not given; ``sparsity`` ... ``dense_steps_fraction`` override the draft-attention
    config).

    Also checks, before any model is loaded, what can be checked without it: the values, a local ``model``
    path, ``device``, ``offload`` and whether the backend can run on the device (not for ``dense`` runs, which do
    not use it). Raises :class:`CLIError` (its messages name the command-line flags, e.g. ``--frames``).
    """
    p = _preset(preset) if preset else None
    model = model or (p.model if p else None)
    if not model:
        raise CLIError(f"no model: pass --model (a hub id, a local folder, or {' / '.join(TINY_MODELS)}) "
                       "or --preset (names: draftattention_diffusers/configs/)")
    s = RunSettings(model=model)
    if model in TINY_MODELS:
        s = dataclasses.replace(s, **TINY_DEFAULTS)
    if p:
        s = dataclasses.replace(
            s, height=p.height, width=p.width, num_frames=p.num_frames,
            num_inference_steps=p.num_inference_steps, guidance_scale=p.guidance_scale,
            guidance_scale_2=p.guidance_scale_2, flow_shift=p.flow_shift, fps=p.fps,
            config=p.draft_attention)
    values = {"prompt": prompt, "negative_prompt": negative_prompt, "height": height, "width": width,
              "num_frames": num_frames, "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
              "seed": seed, "fps": fps, "flow_shift": flow_shift}
    s = dataclasses.replace(s, **{k: v for k, v in values.items() if v is not None})
    overrides = {"sparsity": sparsity, "backend": backend, "selection": selection,
                 "dense_steps_fraction": dense_steps_fraction}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        try:
            s.config = s.config.replace(**overrides)
        except ValueError as e:
            raise CLIError(str(e)) from None
    s.validate()
    check_model_path(s.model)
    dev = pick_device(device)
    if offload:
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


# ---------------------------------------------------------------------------------- command-line options
# The options of a run and their reading back live together here: the CLI (generate, compare, capture) and scripts
# (scripts/evaluate.py) share them.
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


def settings_from_args(args: argparse.Namespace, dense: bool = False) -> RunSettings:
    """:func:`resolve_settings` from the options of :func:`add_run_options` (``args``: any object with their
    attributes, e.g. the parsed ``argparse.Namespace``). Raises :class:`CLIError`."""
    return resolve_settings(
        args.model, args.preset, prompt=args.prompt, negative_prompt=args.negative_prompt, height=args.height,
        width=args.width, num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=args.guidance,
        seed=args.seed, fps=args.fps, flow_shift=args.flow_shift, sparsity=args.sparsity, backend=args.backend,
        selection=args.selection, dense_steps_fraction=args.dense_steps_fraction, device=args.device,
        offload=args.offload, dense=dense)


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


def first_line(e: BaseException) -> str:
    """The first line of ``e``'s message (its type name when the message is empty)."""
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
                       f"model ({first_line(e)}); pass a local path (--model /path/to/pipeline)") from None


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
                       f"({MODELS_TITLE} text-to-video) and {', '.join(TINY_MODELS)}")
    try:
        pipe = family.pipelines[class_name].load(class_name, model, local_files_only=local_only)
    except (OSError, ValueError) as e:
        raise CLIError(f"could not load {class_name} from {model!r}: weights missing or incomplete "
                       f"({first_line(e)}); download the complete pipeline and pass its folder") from None
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


def video_fps(pipe, s: RunSettings) -> int:
    """Frames per second of a written video: ``s.fps``, else the model family's default."""
    return s.fps or family_of(pipe).default_fps


def compare(pipe, s: RunSettings, warmup: int = 0, with_lpips: bool = True) -> dict[str, Any]:
    """Run ``pipe`` dense, then with draft attention (same settings and seed); return frames, times and metrics.

    ``warmup`` runs per mode before timing (2 steps, latent output) take compilation and autotuning out of the
    times. Returns ``{"dense": frames, "draft": frames, "times": {"dense": {...}, "draft": {...}},
    "speedup": dense/draft denoising time, "speedup_total": the same for whole calls, "metrics": video_metrics,
    "draft_attention": stats summary, "stats_text": formatted stats}``.
    """
    from . import draft_attention_enabled, get_draft_stats
    from .video_metrics import video_metrics

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


__all__ = ["RunSettings", "CLIError", "resolve_settings", "add_run_options", "settings_from_args", "load_pipeline",
           "apply_flow_shift", "call_kwargs", "run_pipeline", "compare", "check_backend", "check_model_path",
           "pick_device", "looks_like_local_path", "family_of", "prompt_seed", "video_fps", "warn", "reset_warnings",
           "first_line", "TINY_MODELS", "SUPPORTED_PIPELINES", "TINY_DEFAULTS", "DEFAULT_FPS", "DEFAULT_PROMPT",
           "DEVICE_FORMS", "MODELS_TITLE"]

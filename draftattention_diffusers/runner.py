"""The runner: settings, loading and running of a pipeline, and dense-vs-draft comparison.

A library for the ``draftattention`` command (:mod:`.cli`, which adds the argument parsing, printing and exit codes)
and for scripts (``scripts/evaluate.py``):

* settings: :class:`RunSettings`, what one generation needs, from :func:`resolve_settings` (preset values merged
  with explicit values and checked before any model is loaded) or from the shared command-line options
  (:func:`add_run_options`, read back by :func:`settings_from_args`);
* input files: ``--image`` / ``--video`` (:func:`load_image_input`, :func:`load_video_input`), checked against what
  the pipeline takes (its family's declaration, ``LoadRecipe.inputs``) before it loads (:func:`check_inputs`);
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
import functools
import inspect
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
from .models import ModelFamily, families, family_for_pipeline, tiny_alias, tiny_builder, tiny_models
from .models.base import INPUT_KINDS, TinyPipeline

# Everything model-specific comes from the family table (models/): these names are derived from it.
TINY_MODELS = {name: tiny_alias(name) for name in tiny_models()}
"""``--model`` names of the embedded tiny pipelines -> ``build_tiny_pipeline`` name."""

SUPPORTED_PIPELINES = {cls: f.name for f in families() for cls in f.pipelines}
"""Pipeline classes the CLI loads (text-to-video, image-to-video, ...) -> family name. Others can still use the
Python API where it supports them."""

INPUT_FLAGS = {kind: f"--{kind}" for kind in INPUT_KINDS}
"""The command-line flag of each input kind a pipeline can take (``PipelineInput.kind``): --image, --video."""

TINY_DEFAULTS = {"height": 256, "width": 512, "num_frames": 9, "num_inference_steps": 6}
"""Small enough for a CPU in seconds; 12 draft regions, so 90% sparsity really skips tiles. The frame count is the
least one at or above this that the family's pipelines take (:func:`tiny_frames`)."""


def tiny_frames(family: ModelFamily, at_least: int = TINY_DEFAULTS["num_frames"]) -> int:
    """The least ``frame_step * k + 1`` frames at or above ``at_least`` (9 for most families, 13 for Mochi, 33 for
    Helios's 33-frame chunks)."""
    return at_least + (-(at_least - 1)) % family.frame_step

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
    image: str | None = None
    video: str | None = None

    @property
    def inputs(self) -> tuple[str, ...]:
        """The input kinds given (``"image"``, ``"video"``): what ``load_pipeline(..., inputs=)`` takes."""
        return tuple(k for k in INPUT_KINDS if getattr(self, k) is not None)

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
    warmup_sparsity: float | None = None,
    device: str = "auto",
    offload: bool = False,
    dense: bool = False,
    image: str | None = None,
    video: str | None = None,
) -> RunSettings:
    """Merge, lowest priority first: built-in defaults, tiny-model defaults, ``preset`` (a preset name or YAML file),
    explicit values (None: not given; ``sparsity`` ... ``warmup_sparsity`` override the draft-attention
    config).

    Also checks, before any model is loaded, what can be checked without it: the values, a local ``model``
    path, ``device``, ``offload``, whether the backend can run on the device (not for ``dense`` runs, which do
    not use it) and that ``image`` / ``video`` files can be read (whether the pipeline takes them:
    :func:`check_inputs`). Raises :class:`CLIError` (its messages name the command-line flags, e.g. ``--frames``).
    """
    p = _preset(preset) if preset else None
    model = model or (p.model if p else None)
    if not model:
        raise CLIError(f"no model: pass --model (a hub id, a local folder, or {' / '.join(TINY_MODELS)}) "
                       "or --preset (names: draftattention_diffusers/configs/)")
    s = RunSettings(model=model)
    if model in TINY_MODELS:
        family, builder = tiny_builder(model)
        recipe = family.pipelines.get(getattr(builder, "pipeline", None))
        least = max(TINY_DEFAULTS["num_frames"], recipe.min_frames if recipe else 1)
        s = dataclasses.replace(s, **dict(TINY_DEFAULTS, num_frames=tiny_frames(family, least)))
    if p:
        s = dataclasses.replace(
            s, height=p.height, width=p.width, num_frames=p.num_frames,
            num_inference_steps=p.num_inference_steps, guidance_scale=p.guidance_scale,
            guidance_scale_2=p.guidance_scale_2, flow_shift=p.flow_shift, fps=p.fps,
            config=p.draft_attention)
    values = {"prompt": prompt, "negative_prompt": negative_prompt, "height": height, "width": width,
              "num_frames": num_frames, "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
              "seed": seed, "fps": fps, "flow_shift": flow_shift, "image": image, "video": video}
    s = dataclasses.replace(s, **{k: v for k, v in values.items() if v is not None})
    overrides = {"sparsity": sparsity, "backend": backend, "selection": selection,
                 "dense_steps_fraction": dense_steps_fraction, "warmup_sparsity": warmup_sparsity}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        try:
            s.config = s.config.replace(**overrides)
        except ValueError as e:
            raise CLIError(str(e)) from None
    s.validate()
    if s.model.startswith("tiny-") and s.model not in TINY_MODELS and not Path(s.model).expanduser().exists():
        raise CLIError(f"--model {s.model!r}: no such tiny model; the embedded ones are {', '.join(TINY_MODELS)} "
                       "(a local folder of that name does not exist either)")
    if s.image is not None:
        load_image_input(s.image)
    if s.video is not None:
        load_video_input(s.video)
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
    for kind, what in (("image", "an image (png, jpg)"), ("video", "a video (mp4, gif, or a folder of frames)")):
        g.add_argument(INPUT_FLAGS[kind], metavar="PATH",
                       help=f"{what} for the pipelines that take one: {', '.join(_takers(families(), kind))}")
    d = p.add_argument_group("draft attention")
    d.add_argument("--sparsity", type=float, help="fraction of video attention tiles skipped, in [0, 1)")
    d.add_argument("--backend", help="auto, fa4, flex, bsa or reference (see `draftattention info`)")
    d.add_argument("--selection", help=f"tile selection rule: {', '.join(SELECTIONS)}")
    d.add_argument("--dense-steps-fraction", type=float, help="fraction of the first steps that run dense")
    d.add_argument("--warmup-sparsity", type=float, help="opt-in milder warm-up: run those first steps sparse at this "
                                                         "sparsity instead of dense (e.g. 0.75; default: dense)")
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
        selection=args.selection, dense_steps_fraction=args.dense_steps_fraction,
        warmup_sparsity=args.warmup_sparsity, device=args.device,
        offload=args.offload, dense=dense, image=getattr(args, "image", None), video=getattr(args, "video", None))


# ------------------------------------------------------------------------------------------- input files
_FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _existing_file(path: str, flag: str, expected: str, folder_ok: bool = False) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise CLIError(f"{flag} {path!r}: no such file; expected {expected}")
    if p.is_dir() and not folder_ok:
        raise CLIError(f"{flag} {path!r} is a folder; expected {expected}")
    return p


def _cache_key(p: Path) -> tuple[str, int, int]:
    st = p.stat()  # a file changed on disk is read again
    return str(p.resolve()), st.st_mtime_ns, st.st_size


def load_image_input(path: str):
    """``--image PATH`` as an RGB PIL image (png, jpg, anything PIL reads); ``CLIError`` saying why when the file is
    missing or cannot be read. Read once per file (the settings check and every pipeline call share it)."""
    p = _existing_file(path, "--image", "an image file (png, jpg)")
    return _read_image("--image", path, *_cache_key(p))


@functools.lru_cache(maxsize=256)  # a video given as a folder has one entry per frame
def _read_image(flag: str, path: str, resolved: str, mtime_ns: int, size: int):
    from PIL import Image

    try:
        with Image.open(resolved) as im:
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise CLIError(f"{flag} {path!r} cannot be read as an image ({first_line(e)}); expected a png or jpg "
                       "file") from None


def load_video_input(path: str) -> tuple:
    """``--video PATH`` as a tuple of RGB PIL frames: a video file (mp4, gif, anything diffusers' ``load_video``
    reads with imageio) or a folder of frames (png / jpg, in name order). ``CLIError`` saying why when it is missing,
    cannot be read, has no frames or frames of different sizes. Read once per file."""
    p = _existing_file(path, "--video", "a video file (mp4, gif) or a folder of frames (png, jpg)", folder_ok=True)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in _FRAME_SUFFIXES)
        if not files:
            raise CLIError(f"--video {path!r} is a folder without frames; expected png or jpg files in it")
        frames = tuple(_read_image("--video", str(f), *_cache_key(f)) for f in files)  # errors name the frame
    else:
        frames = _read_video(path, *_cache_key(p))
    if not frames:
        raise CLIError(f"--video {path!r} has no frames")
    sizes = {f.size for f in frames}
    if len(sizes) > 1:
        raise CLIError(f"--video {path!r}: frames of different sizes {sorted(sizes)}; expected one size")
    return frames


@functools.lru_cache(maxsize=2)
def _read_video(path: str, resolved: str, mtime_ns: int, size: int) -> tuple:
    from diffusers.utils import load_video

    try:
        return tuple(f.convert("RGB") for f in load_video(resolved))
    except Exception as e:  # noqa: BLE001 - imageio and PIL raise many types for a file they cannot read
        raise CLIError(f"--video {path!r} cannot be read as a video ({type(e).__name__}: {first_line(e)}); expected "
                       "an mp4 or gif file (mp4 needs imageio-ffmpeg) or a folder of frames") from None


def _recipe_class(family: ModelFamily, pipe) -> str:
    """The class of ``pipe`` (or a base class of it) that ``family.pipelines`` declares."""
    return next(c.__name__ for c in type(pipe).__mro__ if c.__name__ in family.pipelines)


def _takers(fams, kind: str) -> list[str]:
    """The pipelines of ``fams`` that take an input of ``kind``, worded for messages: ``WanImageToVideoPipeline``,
    ``WanVACEPipeline (as reference_images)``, ``WanPipeline with expand_timesteps (as WanImageToVideoPipeline)``."""
    out = []
    for f in fams:
        for cls, r in f.pipelines.items():
            spec = r.takes(kind)
            if spec is not None:
                out.append(cls if spec.argument == kind else f"{cls} (as {spec.argument})")
            elif kind in r.loads_as:
                out.append(f"{cls}{f' with {r.loads_as_if}' if r.loads_as_if else ''} (as {r.loads_as[kind]})")
    return out


def _not_taken(family: ModelFamily, cls: str, kind: str, model_index: dict[str, Any]) -> str:
    takers = _takers([family], kind)
    flag = INPUT_FLAGS[kind]
    recipe = family.pipelines[cls]
    other = recipe.loads_as_for([kind], model_index)
    if other is not None:  # a pipeline built or loaded without the inputs it runs with
        return (f"{flag}: {cls} takes no {kind}; this checkpoint takes one as {other}: load it with "
                f"load_pipeline(..., inputs=settings.inputs)")
    if kind in recipe.loads_as:  # the checkpoint does not set what would load it as the class that takes it
        return (f"{flag}: {cls} takes no {kind}; a {cls} checkpoint whose model_index.json sets "
                f"{recipe.loads_as_if} loads as {recipe.loads_as[kind]}, which does, and this one does not; pass "
                f"--model with one that does, or drop {flag} (pipelines that take one: {', '.join(takers)})")
    if not takers:
        return (f"{flag}: {cls} takes no {kind}, nor does any {family.title} pipeline the command line loads; "
                f"drop {flag}")
    return (f"{flag}: {cls} takes no {kind}; the {family.title} pipelines that do: {', '.join(takers)}; pass --model "
            f"with one of those, or drop {flag}")


PIPELINE_PACKAGES = {"LTX2ImageToVideoPipeline": ("av", "PyAV", "it re-compresses the input image as an H.264 "
                                                                 "video")}
"""Pipeline class -> (module, package name, why) of a package diffusers imports only inside its call: checked
before loading (the ``video`` extra installs them)."""


def _check_inputs_for(family: ModelFamily, cls: str, s: RunSettings, model_index: dict[str, Any]) -> None:
    """``CLIError`` unless the input files of ``s`` fit pipeline class ``cls`` (its ``model_index.json`` entries:
    ``model_index``) as its family declares it, and the packages it needs at run time are installed."""
    import importlib.util

    if cls in PIPELINE_PACKAGES and importlib.util.find_spec(PIPELINE_PACKAGES[cls][0]) is None:
        module, package, why = PIPELINE_PACKAGES[cls]
        raise CLIError(f"{cls} needs {package} ({why}), which is not installed: pip install "
                       f"\"draftattention-diffusers[video]\" (or pip install {module})")
    recipe = family.pipelines[cls]
    if s.num_frames is not None and s.num_frames < recipe.min_frames:
        raise CLIError(f"--frames {s.num_frames}: {cls} needs at least {recipe.min_frames} frames "
                       f"({recipe.min_frames_why})")
    for kind in s.inputs:
        if recipe.takes(kind) is None:
            raise CLIError(_not_taken(family, cls, kind, model_index))
    for i in recipe.inputs:
        if i.required and getattr(s, i.kind) is None:
            raise CLIError(f"{cls} needs an input {i.kind} (its {i.argument!r} argument): pass "
                           f"{INPUT_FLAGS[i.kind]} PATH")
    if recipe.needs_one_of and all(getattr(s, kind) is None for kind in recipe.needs_one_of):
        raise CLIError(f"{cls} needs an input: pass " + " or ".join(f"{INPUT_FLAGS[k]} PATH"
                                                                   for k in recipe.needs_one_of))
    spec = recipe.takes("video")
    if spec is None or s.video is None:
        return
    frames = load_video_input(s.video)
    n, (w, h) = len(frames), frames[0].size
    if spec.same_frames and s.num_frames is not None and n != s.num_frames:
        raise CLIError(f"--video {s.video!r} has {n} frames; {cls} needs exactly as many as it generates "
                       f"(--frames {s.num_frames}): pass a video of {s.num_frames} frames"
                       + (f" or --frames {n}" if (n - 1) % 4 == 0 else ""))
    if spec.same_frames and s.num_frames is None and (n - 1) % 4:
        raise CLIError(f"--video {s.video!r} has {n} frames; {cls} generates as many frames as it has, and frame "
                       "counts must be 4k+1 (e.g. 9, 33, 81): pass a video of 4k+1 frames")
    for flag, given, own in (("--height", s.height, h), ("--width", s.width, w)):
        if given is None and own % 16:
            raise CLIError(f"--video {s.video!r}: frames of {w}x{h} pixels set the size when {flag} is not given, "
                           f"and {own} is not a multiple of 16; pass --height and --width (frames are resized to "
                           "them)")


def _tiny_pipeline(model: str) -> tuple[ModelFamily, TinyPipeline | None]:
    family, builder = tiny_builder(TINY_MODELS[model])
    return family, builder if isinstance(builder, TinyPipeline) else None


def _pipeline_to_load(model: str, inputs) -> tuple[ModelFamily, str, dict[str, Any]] | None:
    if model in TINY_MODELS:
        family, tiny = _tiny_pipeline(model)
        if tiny is None:
            return None
        class_name, index = tiny.pipeline, tiny.model_index
        if class_name not in family.pipelines:
            raise CLIError(f"{model} is a {class_name}, which the command line does not run ({family.title}: "
                           f"Python API only); use build_tiny_pipeline({tiny_alias(model)!r}) in Python, or one of "
                           f"the command line's pipelines: {', '.join(family.pipelines) or 'none'}")
    else:
        index, _ = _model_index(model)
        class_name = index["_class_name"]
        family = _loadable_family(model, class_name)
    recipe = family.pipelines.get(class_name)
    return family, (recipe.loads_as_for(inputs, index) if recipe else None) or class_name, index


def pipeline_to_load(model: str, inputs=()) -> tuple[ModelFamily, str] | None:
    """``(family, pipeline class)`` that :func:`load_pipeline` loads for ``model`` and the given input kinds
    (a checkpoint may load as another class of its family with some inputs: ``LoadRecipe.loads_as``), found without
    loading: from ``model_index.json`` (a local folder, else the hub) or a tiny model's declaration. None for a tiny
    model whose builder declares no class (:class:`~.models.base.TinyPipeline`). ``CLIError`` for a model the
    command line cannot load."""
    found = _pipeline_to_load(model, inputs)
    return None if found is None else found[:2]


def _check_sizes_for(family, s: RunSettings) -> None:
    """Frame count and pixel sizes the family's pipelines take as given (LTX: 8k+1 frames, multiples of 32)."""
    n, step = s.num_frames, family.frame_step
    if n is not None and (n - 1) % step:
        raise CLIError(f"--frames {n}: {family.title} takes {step}k+1 frames (its VAE compresses time {step}x), e.g. "
                       f"{', '.join(str(step * k + 1) for k in (1, 4, 15))}")
    for name in ("height", "width"):
        v = getattr(s, name)
        if v is not None and v % family.pixel_step:
            raise CLIError(f"--{name} {v}: {family.title} takes multiples of {family.pixel_step}")


def check_inputs(s: RunSettings) -> str | None:
    """Check ``--image`` / ``--video`` of ``s`` against the pipeline :func:`load_pipeline` will load, before it
    loads: a pipeline that takes no image (or video) names those of its family that do; one that needs an input
    says so; a video with another frame count than the pipeline needs says what it expected. Returns that pipeline
    class (None for a tiny builder that declares none: :func:`call_kwargs` checks once it is built). Raises
    :class:`CLIError`."""
    found = _pipeline_to_load(s.model, s.inputs)
    if found is not None:
        _check_sizes_for(found[0], s)
    if found is None or found[1] not in found[0].pipelines:
        return None
    family, cls, index = found
    _check_inputs_for(family, cls, s, index)
    return cls


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


def stack_cache(name: str | None, flag: str) -> str | None:
    """A fast-stack cache named on the command line (``flag``: the option, for the message), checked before any
    model loads: ``enable_fast_stack``'s ``cache`` (None for no flag or ``none``). Raises :class:`CLIError`."""
    from .integration.stack import CACHE_NAMES

    if name is None or name == "none":
        return None
    if name not in CACHE_NAMES:
        raise CLIError(f"{flag} {name}: expected none or one of {', '.join(CACHE_NAMES)}")
    return name


def first_line(e: BaseException) -> str:
    """The first line of ``e``'s message (its type name when the message is empty)."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _model_index(model: str) -> tuple[dict[str, Any], bool]:
    """``model``'s ``model_index.json`` (pipeline class and config) and whether it was found without the network."""
    from diffusers import DiffusionPipeline

    check_model_path(model)
    local = Path(model).expanduser()
    try:
        return dict(DiffusionPipeline.load_config(str(local) if local.exists() else model,
                                                  local_files_only=True)), True
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
        return dict(DiffusionPipeline.load_config(model)), False
    except (OSError, ValueError) as e:
        raise CLIError(f"model {model!r} not found locally{local_note} and the hub is unreachable or has no such "
                       f"model ({first_line(e)}); pass a local path (--model /path/to/pipeline)") from None


def _loadable_family(model: str, class_name: str) -> ModelFamily:
    family = family_for_pipeline(class_name, loadable=True)
    if family is None:
        raise CLIError(f"model {model!r} is a {class_name}; the CLI supports {', '.join(SUPPORTED_PIPELINES)} "
                       f"({MODELS_TITLE}) and {', '.join(TINY_MODELS)}")
    return family


def _rebuilt_as(pipe, class_name: str):
    """A tiny pipeline as another pipeline class of diffusers, from the same components and config (real
    checkpoints load as that class directly, as the diffusers docs do; ``from_pipe`` would cast every component to
    float32)."""
    import diffusers

    cls = getattr(diffusers, class_name)
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in pipe.components.items() if k in params}
    kwargs.update({k: v for k, v in pipe.config.items() if k in params and k not in kwargs})
    return cls(**kwargs)


def load_pipeline(model: str, device: str | torch.device = "auto", offload: bool = False, inputs=()):
    """A ready pipeline for ``model``: a tiny one (``tiny-wan`` ...) or a real pipeline of a supported family.

    Real models load with their family's recipe (``ModelFamily.pipelines``), as the diffusers docs recommend: Wan
    transformer(s) in bfloat16 with the VAE (and Wan2.1 I2V's image encoder) in float32; HunyuanVideo transformer in
    bfloat16, the rest in float16, VAE tiling on. ``inputs``: the input kinds the run passes (``("image",)``,
    :attr:`RunSettings.inputs`): a checkpoint whose recipe says so loads as another class of its family with them
    (``LoadRecipe.loads_as``: Wan2.2 TI2V-5B, a ``WanPipeline``, does image-to-video as
    ``WanImageToVideoPipeline``). ``offload`` uses ``enable_model_cpu_offload`` (less GPU memory, slower) instead of
    moving everything to the device; tiny models ignore it.

    Raises :class:`CLIError` (one line, with what to do) for an unknown or unreachable model, a folder without
    weights and an unsupported pipeline class.
    """
    dev = device if isinstance(device, torch.device) else pick_device(device)
    if model in TINY_MODELS:
        from .tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline(TINY_MODELS[model])
        family = family_for_pipeline(pipe, loadable=True)
        recipe = family.pipelines.get(type(pipe).__name__) if family is not None else None
        other = recipe.loads_as_for(inputs, dict(pipe.config)) if recipe is not None else None
        return (pipe if other is None else _rebuilt_as(pipe, other)).to(dev)
    index, local_only = _model_index(model)
    family = _loadable_family(model, index["_class_name"])
    class_name = family.pipelines[index["_class_name"]].loads_as_for(inputs, index) or index["_class_name"]
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
    """Keyword arguments of ``pipe(...)`` for settings ``s`` (frames come back as numpy ``[B, F, H, W, 3]``).

    The input files go in under the pipeline's own argument names (``LoadRecipe.inputs``): an image as it is (the
    pipeline resizes it to the run's size), a video's frames resized to ``s.height x s.width``; without those, the
    video's size is the run's (and a pipeline that needs ``num_frames`` video frames gets the video's count).
    A setting the pipeline takes no argument for is left out with a warning (HunyuanVideo-1.5 I2V takes no height
    or width: its video has the image's aspect ratio at the model's resolution).
    Raises :class:`CLIError` when the inputs do not fit the pipeline (:func:`check_inputs`, checked again here
    for the built pipeline)."""
    from PIL import Image

    family = family_of(pipe)
    recipe_class = _recipe_class(family, pipe)
    _check_inputs_for(family, recipe_class, s, dict(getattr(pipe, "config", None) or {}))
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
    for spec in family.pipelines[recipe_class].inputs:
        path = getattr(s, spec.kind)
        if path is None:
            continue
        if spec.kind == "image":
            kw[spec.argument] = load_image_input(path)
            continue
        frames = load_video_input(path)
        size = (kw.setdefault("width", frames[0].width), kw.setdefault("height", frames[0].height))
        kw[spec.argument] = [f if f.size == size else f.resize(size, Image.BICUBIC) for f in frames]
        if spec.same_frames:
            kw.setdefault("num_frames", len(frames))
    return _drop_unaccepted(pipe, family.pipeline_kwargs(pipe, kw))


_SETTING_FLAGS = {"height": "--height", "width": "--width", "num_frames": "--frames", "num_inference_steps": "--steps",
                  "guidance_scale": "--guidance"}


def _drop_unaccepted(pipe, kw: dict[str, Any]) -> dict[str, Any]:
    """``kw`` without the run's settings that ``pipe.__call__`` takes no argument for (HunyuanVideo-1.5 I2V sizes
    the video from its image: no height, width), with a warning naming them."""
    params = inspect.signature(type(pipe).__call__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return kw
    dropped = [k for k in _SETTING_FLAGS if k in kw and k not in params]
    if dropped:
        given = ", ".join(f"{_SETTING_FLAGS[k]} {kw[k]}" for k in dropped)
        sizes = " (it sizes the video itself, from its input)" if {"height", "width"} & set(dropped) else ""
        warn(f"{given} ignored: {type(pipe).__name__} takes no {' or '.join(dropped)} argument{sizes}")
    return {k: v for k, v in kw.items() if k not in dropped}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_timing_unavailable(pipe) -> str | None:
    """Why :func:`run_pipeline` cannot time the denoising of ``pipe`` (its ``__call__`` takes no
    ``callback_on_step_end``, e.g. HunyuanVideo-1.5's pipelines in diffusers 0.42.1), or None when it can."""
    params = inspect.signature(type(pipe).__call__).parameters
    if "callback_on_step_end" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return (f"{type(pipe).__name__} takes no callback_on_step_end, so per-step timing is unavailable: only the whole "
            "call is timed")


def run_pipeline(pipe, kwargs: dict[str, Any], seed: int, on_step=None) -> tuple[np.ndarray, dict[str, Any]]:
    """Run ``pipe(**kwargs)`` with a seeded CPU generator (same noise on any device).

    Returns ``(frames, times)``: frames float ``[F, H, W, 3]`` in ``[0, 1]`` (first video); times in seconds:
    ``total`` (the whole call) and ``denoise`` (from the call to the end of the last denoising step: text encoding
    and the transformer, not the VAE decode). ``denoise`` is measured with a ``callback_on_step_end``; for a pipeline
    that takes none it is None and ``denoise_unavailable`` says why (:func:`step_timing_unavailable`).
    ``on_step(step)``, if given, is called at the end of every denoising step (after its time mark; not called
    for a pipeline without a step callback).
    """
    device = pipe._execution_device
    marks: list[float] = []

    def on_step_end(_pipe, step, _t, cb_kwargs):
        if step == _pipe.num_timesteps - 1:
            _sync(device)
            marks.append(time.perf_counter())
        if on_step is not None:
            on_step(step)
        return {}

    unavailable = step_timing_unavailable(pipe)
    callback = {} if unavailable else {"callback_on_step_end": on_step_end}
    _sync(device)
    start = time.perf_counter()
    out = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(seed), **callback)
    _sync(device)
    end = time.perf_counter()
    frames = out.frames[0]
    frames = frames.float().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if unavailable:
        return frames, {"total": end - start, "denoise": None, "denoise_unavailable": unavailable}
    return frames, {"total": end - start, "denoise": (marks[-1] if marks else end) - start}


def format_times(times: dict[str, Any]) -> str:
    """``"1.23 s (denoising 1.01 s)"``, or the whole call's time and why the denoising was not timed."""
    if times["denoise"] is None:
        return f"{times['total']:.2f} s (denoising not timed: {times['denoise_unavailable']})"
    return f"{times['total']:.2f} s (denoising {times['denoise']:.2f} s)"


SPARSITY_GAP = 0.1
"""Achieved sparsity this far below the requested one gets a warning (and a note in the evaluation report)."""


def sparsity_gap_note(requested: float, achieved: float | None) -> str | None:
    """A one-line note when the achieved mean sparsity is more than :data:`SPARSITY_GAP` below the requested one
    (few video tiles: every query row keeps at least its best tile, and text tiles are always computed)."""
    if achieved is None or requested - achieved <= SPARSITY_GAP:
        return None
    return (f"achieved sparsity {achieved:.3f} is far below the requested {requested:g}: the video has too few "
            "draft tiles per row for it (every query row keeps at least one tile; text tiles are always computed); "
            "larger sizes or more frames reach the requested sparsity")


def video_fps(pipe, s: RunSettings) -> int:
    """Frames per second of a written video: ``s.fps``, else the model family's default."""
    return s.fps or family_of(pipe).default_fps


def compare(pipe, s: RunSettings, warmup: int = 0, with_lpips: bool = True) -> dict[str, Any]:
    """Run ``pipe`` dense, then with draft attention (same settings and seed); return frames, times and metrics.

    ``warmup`` runs per mode before timing (2 steps, latent output) take compilation and autotuning out of the
    times. Returns ``{"dense": frames, "draft": frames, "times": {"dense": {...}, "draft": {...}},
    "speedup": dense/draft denoising time (None where the pipeline's denoising cannot be timed: the times'
    ``denoise_unavailable`` says why), "speedup_total": the same for whole calls, "metrics": video_metrics,
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
            "speedup": None if t_draft["denoise"] is None else t_dense["denoise"] / t_draft["denoise"],
            "speedup_total": t_dense["total"] / t_draft["total"],
            "metrics": video_metrics(dense, draft, with_lpips=with_lpips, device=device),
            "draft_attention": summary, "stats_text": text}


__all__ = ["RunSettings", "CLIError", "resolve_settings", "add_run_options", "settings_from_args", "load_pipeline",
           "apply_flow_shift", "call_kwargs", "run_pipeline", "compare",
           "step_timing_unavailable", "format_times", "check_backend", "check_model_path",
           "pick_device", "looks_like_local_path", "family_of", "prompt_seed", "video_fps", "warn", "reset_warnings",
           "first_line", "stack_cache", "TINY_MODELS", "SUPPORTED_PIPELINES", "TINY_DEFAULTS", "DEFAULT_FPS", "DEFAULT_PROMPT",
           "DEVICE_FORMS", "MODELS_TITLE", "tiny_frames", "INPUT_FLAGS", "check_inputs", "pipeline_to_load", "load_image_input",
           "load_video_input", "sparsity_gap_note", "SPARSITY_GAP", "PIPELINE_PACKAGES"]

"""The ``draftattention`` command (also ``python -m draftattention_diffusers``).

Subcommands:
  generate  one video with draft attention (or ``--dense``), its time and draft-attention statistics
  compare   the same prompt and seed dense and with draft attention: time ratio, PSNR / SSIM / LPIPS, side by side
  info      versions, GPU and every attention backend's status on this machine
  bench     the attention benchmark (:mod:`..benchmark_attention`; arguments are passed through)
  capture   save q/k/v of chosen layers and steps of a pipeline run (:func:`..quality.capture.capture`)
  analyze   attention recall and output error of tile selections on captured files (:func:`..quality.analyze.analyze`)

``--model`` is a diffusers Wan (2.1 / 2.2) or HunyuanVideo pipeline (hub id or local folder), or one of the
embedded tiny random-weight pipelines ``tiny-wan``, ``tiny-wan22``, ``tiny-hunyuan`` (no download, CPU, seconds).

Example:
    $ draftattention generate --model tiny-wan
    $ draftattention compare --preset wan2.1-1.3b-480p --prompt "A cat walks on the grass"

User errors (unknown model, missing weights, bad preset, unwritable output, ...) print one line and exit with
code 1 (2 for bad command-line syntax); ``--debug`` shows the traceback instead.

Layout: :mod:`.commands` is the command layer (parser, ``cmd_*``, printing, exit codes, :func:`main`),
:mod:`.masks` the ``--save-masks`` pictures; settings, loading and running are the library
:mod:`draftattention_diffusers.runner` (which scripts import). The runner's names are re-exported here for
compatibility: replace them on :mod:`draftattention_diffusers.runner`, where the commands look them up.
"""

from ..runner import (DEFAULT_FPS, DEFAULT_PROMPT, SUPPORTED_PIPELINES, TINY_DEFAULTS, TINY_MODELS, CLIError,
                      RunSettings, add_run_options, apply_flow_shift, call_kwargs, check_backend, check_model_path,
                      compare, family_of, load_pipeline, looks_like_local_path, pick_device, resolve_settings,
                      run_pipeline, settings_from_args, warn)
from .commands import build_parser, check_writable, main
from .masks import MaskSaver

__all__ = ["main", "build_parser", "add_run_options", "load_pipeline", "call_kwargs", "run_pipeline", "compare",
           "settings_from_args", "resolve_settings", "RunSettings", "CLIError", "MaskSaver", "TINY_MODELS",
           "SUPPORTED_PIPELINES", "TINY_DEFAULTS", "DEFAULT_FPS", "DEFAULT_PROMPT", "pick_device", "check_backend",
           "check_model_path", "check_writable", "looks_like_local_path", "family_of", "apply_flow_shift", "warn"]

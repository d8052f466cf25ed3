"""``draftattention evaluate``: a prompt suite run dense and with several draft-attention settings, and an HTML
report of speed, PSNR / SSIM / LPIPS, frames, videos, per-step sparsity and draft maps.

* :mod:`.suite`: the built-in prompt suite (grouped by what stresses sparse attention) and prompt files;
* :mod:`.run`: the resumable run (:class:`.run.Evaluation`), results.json / results.csv;
* :mod:`.report`: the self-contained HTML report (matplotlib plots), rebuilt from results.json.

The command: :func:`draftattention_diffusers.cli.commands.cmd_evaluate`; how to read the report: docs/quality.md.
"""

from .report import write_report
from .run import EvalOptions, EvalSetting, Evaluation, build_settings
from .suite import CATEGORIES, SuitePrompt, builtin_suite, read_prompt_file

__all__ = ["Evaluation", "EvalOptions", "EvalSetting", "build_settings", "write_report", "builtin_suite",
           "read_prompt_file", "SuitePrompt", "CATEGORIES"]

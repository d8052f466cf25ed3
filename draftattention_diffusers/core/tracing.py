"""Which kind of tracing is running, answered the same way by every torch release we support."""

from __future__ import annotations

import torch


def is_exporting() -> bool:
    """True while ``torch.export`` traces (strict or not), False in eager code and in ``torch.compile``.

    ``torch.compiler.is_exporting()`` itself answers True inside every graph ``torch.compile`` traces on torch 2.11
    and older (dynamo hard-coded it; pytorch/pytorch#176347, fixed in 2.12). Code that skips work "while exporting"
    then skipped it under ``torch.compile`` too: draft attention's call counters counted nothing in compiled blocks
    on the GPU machine's torch 2.11. Reading the flag that export sets (``torch.compiler._is_exporting_flag``, a
    module attribute dynamo reads and guards like any other) gives the right answer everywhere; a torch without that
    attribute falls back to the public function."""
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    return torch.compiler.is_exporting() if flag is None else bool(flag)

"""Dense vs draft attention over a prompt suite: ``draftattention evaluate`` (this script is a thin wrapper of it).

    python scripts/evaluate.py --preset wan2.1-1.3b-480p --sparsities 0.75,0.9 --out results/wan480p
    python scripts/evaluate.py --model tiny-wan --prompts prompts.txt --csv /tmp/tiny.csv     # CPU smoke test

Every option is that of ``draftattention evaluate`` (``draftattention evaluate --help``): the built-in prompt suite
or ``--prompts FILE``, several settings in one run, an HTML report with results.json and results.csv (``--csv``
also copies the CSV), resumable.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from draftattention_diffusers.cli import main as cli_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return cli_main(["evaluate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())

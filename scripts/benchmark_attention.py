"""Attention-call benchmark: a wrapper of :mod:`draftattention_diffusers.benchmark_attention` (the code lives in
the package so that ``draftattention bench`` works from an installed wheel too). Same arguments:

    python scripts/benchmark_attention.py --help
    python scripts/benchmark_attention.py --shapes wan14b-720p --sparsities 0.9 --backends fa4 flex
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a source checkout without pip install

from draftattention_diffusers.benchmark_attention import main  # noqa: E402

if __name__ == "__main__":
    main()

"""The prompt suite of ``draftattention evaluate``: a small built-in one, grouped by what stresses sparse attention,
or the user's file.

Why these categories: draft attention keeps the tiles whose pooled (8x16-token) scores are largest. It loses most
where the attention a token needs is far away in space or time and does not stand out at the pooled resolution:

* ``fast-motion``: an object moves many regions between frames, so a query's important keys are in another place in
  other frames;
* ``camera``: the whole frame shifts (pans, dolly, orbit): every region attends to moved content;
* ``texture``: fine detail (hair, fabric, foliage, water) lives inside a region, where pooling averages it away;
* ``text``: letters in the scene must stay consistent across frames and are small;
* ``subjects``: many similar objects (a crowd, a flock) spread the attention over many tiles;
* ``long``: more frames (``--long-frames``): more tiles per row, each query's budget spread thinner.

A prompt file has one prompt per line; blank lines and lines starting with ``#`` are skipped; a line may start with
``[category]`` (a name above or your own). ``[long]`` prompts run with the long frame count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CATEGORIES = {
    "fast-motion": "Fast motion",
    "camera": "Camera moves",
    "texture": "Fine texture",
    "text": "Text in the scene",
    "subjects": "Many subjects",
    "long": "Long videos",
}
"""Built-in categories: name -> title."""

LONG = "long"
"""The category whose prompts run with ``--long-frames`` frames."""


@dataclass(frozen=True)
class SuitePrompt:
    """One prompt of a suite: ``id`` (file-name safe, stable), ``category``, ``text``."""

    id: str
    category: str
    text: str

    @property
    def long(self) -> bool:
        return self.category == LONG


_BUILTIN = {
    "fast-motion": [
        "A cheetah sprints across the savanna at full speed, dust flying behind it, tracking shot, realistic style.",
        "A skateboarder does a kickflip down a flight of stairs in a city plaza, fast motion, handheld camera.",
        "A hummingbird darts between red flowers, wings blurring, close-up, shallow depth of field.",
    ],
    "camera": [
        "A slow aerial drone shot flying over a coastline with cliffs and crashing waves at sunset.",
        "The camera orbits around an old oak tree in an autumn field, leaves falling, cinematic.",
        "A dolly zoom toward a lone lighthouse on a rocky island during a storm.",
    ],
    "texture": [
        "Close-up of a golden retriever's fur blowing in the wind, every hair visible, sunny day.",
        "Macro shot of raindrops rolling over a knitted wool sweater, detailed fabric texture.",
        "Wind moving through a dense field of tall grass and wildflowers, high detail, 4k.",
    ],
    "text": [
        "A neon sign reading \"OPEN 24 HOURS\" flickers above a diner door on a rainy night.",
        "A chalkboard in a classroom with the words \"Hello World\" written on it, a hand underlines them.",
        "A street market with shop signs and price tags in many colours, people walking past.",
    ],
    "subjects": [
        "A crowd of people crossing a busy intersection in Tokyo seen from above, rush hour.",
        "A flock of hundreds of starlings forming shapes in the evening sky over a lake.",
        "A school of colourful fish swimming around a coral reef, sunlight rays through the water.",
    ],
    "long": [
        "A hiker walks along a mountain ridge from morning to sunset, clouds drifting below, continuous shot.",
        "A train travels through changing landscapes: a city, a forest, then snowy mountains, side view.",
        "A paper boat floats down a stream, passes under a bridge and reaches a calm pond.",
    ],
}


def builtin_suite() -> list[SuitePrompt]:
    """Every built-in prompt, grouped by category (three each), ids ``<category>-<n>``."""
    return [SuitePrompt(f"{cat}-{i + 1}", cat, text) for cat, texts in _BUILTIN.items() for i, text in enumerate(texts)]


_LINE = re.compile(r"^\[([A-Za-z0-9_-]+)\]\s*(.*)$")


def read_prompt_file(path: str | Path) -> list[SuitePrompt]:
    """Prompts of a file (module doc for the format), ids ``p01``, ``p02``, ... in file order.

    Raises ``ValueError`` (one line: the file and what is wrong) for a missing or empty file or an empty prompt."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--prompts {str(path)!r}: no such file (expected a text file, one prompt per line)")
    out: list[SuitePrompt] = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        category, text = (m.group(1), m.group(2).strip()) if m else ("prompts", line)
        if not text:
            raise ValueError(f"--prompts {str(path)!r} line {n}: a category and no prompt text")
        out.append(SuitePrompt(f"p{len(out) + 1:02d}", category, text))
    if not out:
        raise ValueError(f"--prompts {str(path)!r}: no prompts (expected one prompt per line; # starts a comment)")
    return out


def select(prompts: list[SuitePrompt], categories: list[str] | None = None,
           per_category: int | None = None) -> list[SuitePrompt]:
    """Keep ``categories`` (None: all; an unknown name is a ``ValueError`` that lists the known ones) and the first
    ``per_category`` prompts of each (None: all)."""
    known = list(dict.fromkeys(p.category for p in prompts))
    if categories is not None:
        unknown = [c for c in categories if c not in known]
        if unknown:
            raise ValueError(f"--categories {','.join(unknown)}: not in this suite; its categories: {', '.join(known)}")
        prompts = [p for p in prompts if p.category in categories]
    if per_category is not None:
        if per_category < 1:
            raise ValueError(f"--per-category {per_category}: expected a positive number (or 'all')")
        counts: dict[str, int] = {}
        kept = []
        for p in prompts:
            counts[p.category] = counts.get(p.category, 0) + 1
            if counts[p.category] <= per_category:
                kept.append(p)
        prompts = kept
    return prompts


def category_title(name: str) -> str:
    return CATEGORIES.get(name, name)


__all__ = ["CATEGORIES", "LONG", "SuitePrompt", "builtin_suite", "read_prompt_file", "select", "category_title"]

"""``draftattention generate --save-masks``: PNGs of the draft map and the computed tiles, from the processor's
observer API."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import DraftAttentionConfig
from ..runner import CLIError


def parse_mask_set(text: str, what: str) -> set[int] | None:
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
        from ..core import get_layout, pool_tiles
        from ..core.selection import draft_scores

        layout = get_layout(event.grid, event.text_len, self.config.region_size, event.q.device)
        q, k = (x[:1].index_select(1, layout.perm) for x in (event.q, event.k))
        return draft_scores(pool_tiles(q, layout, self.config.pooling), pool_tiles(k, layout, self.config.pooling),
                            event.scale)[0]

    def __call__(self, event) -> None:
        from ..core import get_layout
        from ..video import render_draft_png

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

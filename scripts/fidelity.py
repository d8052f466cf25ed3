"""Attention-fidelity benchmark on synthetic video attention (no model weights needed).

For synthetic q/k/v on a real token grid (see ``draftattention_diffusers.quality.synthetic``), it measures, for every
selection rule x pooling x region shape x sparsity, the attention recall (share of the dense softmax mass inside
the kept tiles), the worst head's recall, the recall relative to the oracle mask of the same budget, and the output
error against dense attention; next to static patterns (local window, Sparse-VideoGen-style spatial / temporal
heads) and the oracle. Prints Markdown tables (docs/quality.md holds the ones we ran, with their commands).

Examples:
    python scripts/fidelity.py                                   # the default table (CPU, a few minutes)
    python scripts/fidelity.py --grid 21x45x80 --regions 8x16 --device cuda
    python scripts/fidelity.py --time-selection --device cuda    # draft-step time of each selection rule
    python scripts/fidelity.py --grid 5x30x52 --save /tmp/syn    # also write capture files for `analyze`

Method names: ``<selection>/<pooling>`` are the library's rules (``DraftAttentionConfig.selection``);
``x:...`` are experiments that live only in this script; ``static:...`` are input-independent patterns;
``oracle`` keeps the tiles of largest exact mass (per-head budget), ``oracle:shared`` with the budget shared by all
heads (the bound for ``topk_heads``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from draftattention_diffusers.core import VideoGrid, get_layout
from draftattention_diffusers.core.selection import build_tile_mask, draft_scores, keep_budget, pool_tiles, select_tiles
from draftattention_diffusers.quality.metrics import (oracle_tile_mask, output_error, recall_from_mass,
                                                      static_tile_mask, tile_mass)
from draftattention_diffusers.quality.synthetic import DEFAULT_HEADS, HEAD_KINDS, synthetic_qkv

EXPERIMENTS = ("x:topp", "x:topk+first-frame", "x:topk+same-frame")
STATIC = ("window", "spatial", "temporal", "svg-best")


def parse_grid(text: str) -> VideoGrid:
    try:
        f, h, w = (int(x) for x in text.lower().split("x"))
        return VideoGrid(f, h, w)
    except ValueError:
        raise argparse.ArgumentTypeError(f"grid {text!r}: expected FRAMESxHEIGHTxWIDTH tokens, e.g. 21x30x52")


def parse_region(text: str) -> tuple[int, int]:
    try:
        h, w = (int(x) for x in text.lower().split("x"))
        return h, w
    except ValueError:
        raise argparse.ArgumentTypeError(f"region {text!r}: expected HxW tokens, e.g. 8x16")


def csv(kind):
    return lambda text: [kind(x) for x in text.split(",") if x]


# ------------------------------------------------------------------------------------------- experiments
def tile_frame_range(layout) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last frame of the tokens of every video tile (edge tiles may span two frames)."""
    g, t = layout.num_video_tiles, layout.tile_size
    tok = layout.perm[: min(layout.num_video_tokens, g * t)].cpu()
    frame = tok // (layout.grid.height * layout.grid.width)
    tile = torch.arange(tok.numel()) // t
    lo = torch.full((g,), 1 << 30).scatter_reduce(0, tile, frame, "amin")
    hi = torch.zeros(g, dtype=torch.long).scatter_reduce(0, tile, frame, "amax")
    return lo, hi


def topk_forced(scores: torch.Tensor, sparsity: float, forced: torch.Tensor) -> torch.Tensor:
    """``topk`` where the ``forced [g, g]`` tiles rank first (after each row's best), same budget."""
    B, H, g, _ = scores.shape
    n = g * g
    budget = max(keep_budget(sparsity, n), g)
    boosted = scores + 2.0 * forced.to(scores.device)
    boosted = boosted.scatter(-1, scores.argmax(dim=-1, keepdim=True), 4.0).reshape(B, H, n)
    idx = boosted.topk(budget, dim=-1).indices
    return torch.zeros(B, H, n, dtype=torch.bool, device=scores.device).scatter_(-1, idx, True).view(B, H, g, g)


def topp_matched(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Per-row top-p with the p of each head chosen so the head keeps exactly the ``topk`` budget: keep the
    entries with the least draft mass ranked before them in their row (each row's best has none)."""
    B, H, g, _ = scores.shape
    n = g * g
    budget = max(keep_budget(sparsity, n), g)
    srt, order = scores.sort(dim=-1, descending=True)
    before = srt.cumsum(dim=-1) - srt
    idx = (-before).reshape(B, H, n).topk(budget, dim=-1).indices
    keep_sorted = torch.zeros(B, H, n, dtype=torch.bool, device=scores.device).scatter_(-1, idx, True)
    return torch.zeros(B, H, g, g, dtype=torch.bool, device=scores.device).scatter_(-1, order,
                                                                                    keep_sorted.view(B, H, g, g))


def experiment_masks(qp, kp, layout, sparsity, scale):
    scores = draft_scores(pool_tiles(qp, layout, "avg"), pool_tiles(kp, layout, "avg"), scale)
    lo, hi = tile_frame_range(layout)
    first = (lo == 0).view(1, -1).expand(len(lo), -1)
    same = (lo.view(-1, 1) <= hi.view(1, -1)) & (lo.view(1, -1) <= hi.view(-1, 1))
    return {
        "x:topp": build_tile_mask(topp_matched(scores, sparsity), layout),
        "x:topk+first-frame": build_tile_mask(topk_forced(scores, sparsity, first), layout),
        "x:topk+same-frame": build_tile_mask(topk_forced(scores, sparsity, same), layout),
    }


def static_masks(layout, sparsity, mass, B, H, device, patterns):
    out = {f"static:{p}": static_tile_mask(layout, p, sparsity, batch=B, heads=H, device=device)
           for p in ("window", "spatial", "temporal") if p in patterns or (p != "window" and "svg-best" in patterns)}
    if "svg-best" in patterns:
        # Sparse VideoGen profiles each head online and picks its spatial or temporal pattern; picking by the exact
        # recall here is an upper bound on that choice.
        sp, tp = out["static:spatial"], out["static:temporal"]
        better = recall_from_mass(mass, sp).per_head >= recall_from_mass(mass, tp).per_head  # [B, H]
        kept = torch.where(better[:, :, None, None].to(device), sp.kept, tp.kept)
        g = layout.num_video_tiles
        out["static:svg-best"] = build_tile_mask(kept[:, :, :g, :g], layout)
    return {k: v for k, v in out.items() if k.split(":")[1] in patterns}


# ------------------------------------------------------------------------------------------------ tables
def run_table(args) -> list[dict]:
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # exact float32 reference on GPUs too
    t0 = time.perf_counter()
    q, k, v = synthetic_qkv(args.grid, tuple(args.heads), args.head_dim, args.seed)
    q, k, v = (x.to(device) for x in (q, k, v))
    B, S, H, D = q.shape
    scale = D ** -0.5
    t_gen = time.perf_counter() - t0
    if args.save:
        from draftattention_diffusers.quality.capture import save_capture

        path = save_capture(Path(args.save) / f"synthetic_{args.grid.frames}x{args.grid.height}x{args.grid.width}"
                            f"_seed{args.seed}.safetensors", q, k, v, args.grid,
                            extra={"heads_kinds": json.dumps(args.heads)})
        print(f"wrote {path}", file=sys.stderr)
    layouts = [get_layout(args.grid, 0, r, device) for r in args.regions]
    t0 = time.perf_counter()
    masses = tile_mass(q, k, layouts, scale=scale)
    t_mass = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(args.seed)
    rows_for_error = torch.randperm(S, generator=gen)[: args.error_rows].sort().values.to(device)
    rows = []
    t0 = time.perf_counter()
    for lay, mass in zip(layouts, masses):
        qp, kp = (x.index_select(1, lay.perm) for x in (q, k))
        region = f"{lay.region_size[0]}x{lay.region_size[1]}"
        for s in args.sparsity:
            masks = {}
            for sel in args.selections:
                for pool in args.poolings:
                    masks[f"{sel}/{pool}"] = select_tiles(qp, kp, lay, s, sel, pool, scale)
            if args.experiments:
                masks.update(experiment_masks(qp, kp, lay, s, scale))
            masks.update(static_masks(lay, s, mass, B, H, device, args.static))
            masks["oracle"] = oracle_tile_mask(mass, lay, sparsity=s)
            masks["oracle:shared"] = oracle_tile_mask(mass, lay, sparsity=s, share_across_heads=True)
            orc = recall_from_mass(mass, masks["oracle"]).mean
            orc_shared = recall_from_mass(mass, masks["oracle:shared"]).mean
            errors = output_error(q, k, v, list(masks.values()), scale=scale, rows=rows_for_error)
            for (name, m), err in zip(masks.items(), errors):
                rec = recall_from_mass(mass, m)
                rows.append({"region": region, "sparsity": s, "method": name,
                             "achieved_sparsity": m.mean_sparsity, "recall": rec.mean,
                             "recall_worst_head": float(rec.per_head.min()), "vs_oracle": rec.mean / orc,
                             "vs_oracle_shared": rec.mean / orc_shared, "output_error": err.mean,
                             "recall_per_head": [float(x) for x in rec.per_head[0]],
                             "error_per_head": [float(x) for x in err.per_head[0]]})
            print(f"  {region} sparsity {s}: {len(masks)} masks", file=sys.stderr)
    t_eval = time.perf_counter() - t0
    print(f"timing: generate {t_gen:.1f} s, tile mass {t_mass:.1f} s, masks and errors {t_eval:.1f} s "
          f"on {device}", file=sys.stderr)
    return rows


def fmt(x) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def print_tables(args, rows) -> None:
    print(f"grid {args.grid.frames}x{args.grid.height}x{args.grid.width} ({args.grid.num_tokens} tokens), heads "
          f"{','.join(args.heads)}, head_dim {args.head_dim}, seed {args.seed}, output error on "
          f"{args.error_rows} sampled query rows\n")
    cols = ["region", "sparsity", "method", "recall", "recall_worst_head", "vs_oracle", "vs_oracle_shared",
            "output_error"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(fmt(r[c]) for c in cols) + " |")
    # Per head kind at the highest sparsity and the first region.
    s_hi, region = max(args.sparsity), f"{args.regions[0][0]}x{args.regions[0][1]}"
    print(f"\nrecall (output error) per head, region {region}, sparsity {s_hi}\n")
    print("| method | " + " | ".join(args.heads) + " |")
    print("|" + "---|" * (len(args.heads) + 1))
    for r in rows:
        if r["sparsity"] == s_hi and r["region"] == region:
            cells = [f"{a:.3f} ({e:.3f})" for a, e in zip(r["recall_per_head"], r["error_per_head"])]
            print(f"| {r['method']} | " + " | ".join(cells) + " |")


def print_stats(args) -> None:
    """Dense-attention statistics per synthetic head: where its mass goes."""
    device = torch.device(args.device)
    q, k, _ = synthetic_qkv(args.grid, tuple(args.heads), args.head_dim, args.seed)
    q, k = q.to(device), k.to(device)
    lay = get_layout(args.grid, 0, args.regions[0], device)
    mass = tile_mass(q, k, lay)[0].cpu()
    g = lay.num_video_tiles
    from draftattention_diffusers.quality.metrics import tile_centroids

    c = tile_centroids(lay)
    df = (c[:, None, 0] - c[None, :, 0]).abs()
    ds = ((c[:, None, 1:] - c[None, :, 1:]) ** 2).sum(-1).sqrt()
    m = mass[:, :g, :g]
    tot = m.sum(dim=(-1, -2))
    share = lambda sel: (m * sel).sum(dim=(-1, -2)) / tot
    orc = {s: recall_from_mass(mass[None], oracle_tile_mask(mass[None], lay, sparsity=s)).per_head[0]
           for s in (0.75, 0.9)}
    print("| head | same frame | within 1 frame | same place (any frame) | frame 0 | oracle recall 75% | "
          "oracle recall 90% |")
    print("|---|---|---|---|---|---|---|")
    for h, name in enumerate(args.heads):
        vals = [share(df < 0.5)[h], share(df < 1.5)[h], share(ds < 1.0)[h], share(c[None, :, 0] < 0.5)[h],
                orc[0.75][h], orc[0.9][h]]
        print(f"| {name} | " + " | ".join(f"{float(x):.3f}" for x in vals) + " |")


def time_selection(args) -> None:
    """Draft-step time (pool, draft map, selection) of each rule at real model shapes, bf16."""
    device = torch.device(args.device)
    shapes = [("Wan 1.3B 480p", VideoGrid(21, 30, 52), 12, 0), ("Wan 14B 720p", VideoGrid(21, 45, 80), 40, 0),
              ("Hunyuan 720p", VideoGrid(33, 45, 80), 24, 256)]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; draft step "
          f"(pool + draft map + selection) at sparsity 0.9, median of {args.reps} runs, ms\n")
    print("| shape | heads x tokens | " + " | ".join(args.selections) + " |")
    print("|---|---|" + "---|" * len(args.selections))
    for name, grid, H, text in shapes:
        lay = get_layout(grid, text, (8, 16), device)
        g = torch.Generator(device=device).manual_seed(0)
        qp = torch.randn(1, lay.seq_len, H, 128, device=device, dtype=dtype, generator=g)
        kp = torch.randn(1, lay.seq_len, H, 128, device=device, dtype=dtype, generator=g)
        cells = []
        for sel in args.selections:
            times = []
            for i in range(args.reps + 2):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                select_tiles(qp, kp, lay, 0.9, sel, "avg")
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i >= 2:  # warm-up
                    times.append((time.perf_counter() - t0) * 1e3)
            cells.append(f"{statistics.median(times):.3f}")
        print(f"| {name} | {H} x {lay.seq_len} | " + " | ".join(cells) + " |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", type=parse_grid, default=VideoGrid(21, 30, 52), help="FxHxW tokens (21x30x52)")
    p.add_argument("--heads", type=csv(str), default=list(DEFAULT_HEADS) + ["sink"],
                   help=f"head kinds, comma-separated, from {','.join(HEAD_KINDS)}")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sparsity", type=csv(float), default=[0.5, 0.75, 0.9])
    p.add_argument("--selections", type=csv(str), default=["paper", "topk", "row_topk", "topk_heads"])
    p.add_argument("--poolings", type=csv(str), default=["avg", "max"])
    p.add_argument("--regions", type=csv(parse_region), default=[(8, 16), (16, 8), (16, 16)])
    p.add_argument("--static", type=csv(str), default=list(STATIC), help=f"static patterns from {STATIC}")
    p.add_argument("--no-experiments", dest="experiments", action="store_false",
                   help=f"leave out the script-only rules {EXPERIMENTS}")
    p.add_argument("--error-rows", type=int, default=512, help="query rows sampled for the output error")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--save", help="also write the synthetic q/k/v as a capture file into this folder")
    p.add_argument("--stats", action="store_true", help="print where each head's dense attention goes, and exit")
    p.add_argument("--time-selection", action="store_true",
                   help="time the draft step of each --selections rule at real model shapes, and exit")
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args(argv)
    bad = [h for h in args.heads if h not in HEAD_KINDS]
    if bad:
        p.error(f"unknown head kind(s) {bad}; expected some of {tuple(HEAD_KINDS)}")
    bad = [s for s in args.static if s not in STATIC]
    if bad:
        p.error(f"unknown static pattern(s) {bad}; expected some of {STATIC}")
    if args.time_selection:
        time_selection(args)
        return
    if args.stats:
        print_stats(args)
        return
    rows = run_table(args)
    print_tables(args, rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows},
                                              indent=1))


if __name__ == "__main__":
    main()

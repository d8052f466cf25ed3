"""Attention-call benchmark at the real shapes: dense baselines vs every sparse backend, with and without the draft
overhead. One table, times in ms and ratios to dense.

Rows per shape (bf16, head_dim 128, batch 1 unless --batch):
  * dense: PyTorch SDPA with its default kernel choice, SDPA forced to cuDNN, flash-attn-4 dense;
  * per sparse backend and sparsity: ``kernel`` (the block-sparse kernel on prepared tile lists),
    ``+draft`` (pooling, draft map, selection, tile structures and kernel on q/k/v already in tile order: what a
    call costs when tokens are reordered once per transformer forward), ``+draft+gather`` (the whole
    ``draft_attention`` call in diffusers' token order, with the per-call gathers of q, k, v and the output).
A second table splits the overhead into parts; ``--memory`` measures the extra memory of masks and tile structures.

Run it as ``draftattention bench -- ARGS``, ``python -m draftattention_diffusers.benchmark_attention ARGS`` or, in a
source checkout, ``python scripts/benchmark_attention.py ARGS`` (a wrapper of this module). Examples:
    draftattention bench                                           # CUDA: the four model shapes; CPU: small shapes
    draftattention bench -- --shapes wan14b-720p --sparsities 0.9 --backends fa4 flex
    python scripts/benchmark_attention.py --device cpu --out /tmp/attn.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .attention import draft_attention
from .backends import BACKEND_NAMES, AttentionInputs, get_backend
from .config import DraftAttentionConfig
from .core import VideoGrid, get_layout, select_tiles

# name: (heads, (frames, height, width) latent tokens after patching, text tokens)
SHAPES = {
    "wan1.3b-480p": (12, (21, 30, 52), 0),
    "wan14b-720p": (40, (21, 45, 80), 0),
    "hunyuan-720p": (24, (33, 45, 80), 256),
    "hunyuan-768p": (24, (32, 48, 80), 256),
    # small shapes for CPU runs
    "cpu-small": (2, (2, 16, 32), 0),
    "cpu-small-text": (2, (2, 15, 26), 40),
}
GPU_SHAPES = ["wan1.3b-480p", "wan14b-720p", "hunyuan-720p", "hunyuan-768p"]
CPU_SHAPES = ["cpu-small", "cpu-small-text"]


class Timing(float):
    """Median milliseconds of one call, each call synchronised on its own (a float), with ``back_to_back``: the
    mean of ``reps`` calls issued back to back and synchronised once, as in a transformer forward, where the host
    queues the next kernels while the GPU runs (host-side launch overhead then hides behind GPU work)."""

    back_to_back: float


def timed(fn, device: torch.device, reps: int, warmup: int = 1) -> Timing:
    """Milliseconds of ``fn()`` after ``warmup`` runs (CUDA events on GPU): see :class:`Timing`."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    out = Timing(statistics.median(times))
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        out.back_to_back = start.elapsed_time(end) / reps
    else:
        out.back_to_back = float(out)
    return out


def sdpa(q, k, v, backend=None):
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    if backend is None:
        return F.scaled_dot_product_attention(qt, kt, vt).transpose(1, 2)
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(qt, kt, vt).transpose(1, 2)


def runnable(names, q, v, padded):
    """Backends in ``names`` with no reason against these inputs, and the reasons of the others."""
    inputs = AttentionInputs.from_tensors(q, v, 128, padded)
    ok, skipped = [], {}
    for name in names:
        reasons = get_backend(name).not_supported_reasons(inputs)
        (skipped.__setitem__(name, reasons) if reasons else ok.append(name))
    return ok, skipped


def bench_shape(name: str, args, device: torch.device, dtype: torch.dtype) -> tuple[list[dict], list[dict]]:
    heads, (frames, height, width), text = SHAPES[name]
    grid = VideoGrid(frames, height, width)
    S = grid.num_tokens + text
    B, D = args.batch, 128 if device.type == "cuda" else 64
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, S, heads, D, device=device, dtype=dtype) for _ in range(3))
    scale = D ** -0.5
    big = device.type == "cuda" and S * heads > 1_000_000
    reps = args.reps or (3 if big else 10)
    rows, parts = [], []
    label = f"{name} ({heads}h x {S:,})"

    def add(method, sparsity, ms: Timing):
        rows.append({"shape": label, "method": method, "sparsity": sparsity, "ms": float(ms),
                     "ms_back_to_back": ms.back_to_back})
        print(f"  {method:<28} {'' if sparsity is None else sparsity:<5} {ms:9.2f} ms  (back to back "
              f"{ms.back_to_back:.2f} ms)", flush=True)

    print(f"{label}: reps={reps}", flush=True)
    # --- dense baselines
    add("dense SDPA (default)", None, timed(lambda: sdpa(q, k, v), device, reps))
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend

        try:
            add("dense SDPA cuDNN", None, timed(lambda: sdpa(q, k, v, SDPBackend.CUDNN_ATTENTION), device, reps))
        except RuntimeError as e:
            print(f"  dense SDPA cuDNN: not run ({str(e)[:100]})")
    fa4 = get_backend("fa4")
    if not fa4.not_supported_reasons(AttentionInputs.from_tensors(q, v, 128, False)):
        add("dense flash-attn-4", None, timed(lambda: fa4.dense_forward(q, k, v, None, scale), device, reps))

    # --- sparse backends
    names = [n for n in (args.backends or BACKEND_NAMES)
             if n != "reference" or device.type != "cuda" or "reference" in (args.backends or [])]
    ok, skipped = runnable(names, q, v, False)
    for n, reasons in skipped.items():
        print(f"  {n}: skipped ({'; '.join(reasons)})")
    lay = get_layout(grid, text, (8, 16), device)
    qp, kp, vp = (x.index_select(1, lay.perm) for x in (q, k, v))
    outputs = {}
    for rule in args.selections:
        tag = "" if rule == "topk" else f" [{rule}]"  # rows of the default rule keep their plain names
        for sparsity in args.sparsities:
            tiles = select_tiles(qp, kp, lay, sparsity, rule, "avg", scale)
            draft_ms = timed(lambda: select_tiles(qp, kp, lay, sparsity, rule, "avg", scale), device, reps)
            gather_ms = timed(lambda: [x.index_select(1, lay.perm) for x in (q, k, v)]
                              + [q.index_select(1, lay.inv_perm)], device, reps)
            part = {"shape": label, "sparsity": sparsity, "selection": rule, "achieved": round(tiles.mean_sparsity, 4),
                    "draft map + selection": draft_ms, "gathers q,k,v + output": gather_ms}
            for n in ok:
                backend = get_backend(n)
                cfg = DraftAttentionConfig(sparsity=sparsity, backend=n, selection=rule)
                if hasattr(backend, "plan"):
                    plan = backend.plan(tiles, None)
                    part[f"{n} tile structures"] = timed(lambda: backend.plan(tiles, None), device, reps)
                    add(f"{n} kernel{tag}", sparsity, timed(lambda: backend.run(qp, kp, vp, plan, scale), device, reps))
                    outputs[(n, sparsity, rule)] = backend.run(qp, kp, vp, plan, scale)

                    def call():
                        t = select_tiles(qp, kp, lay, sparsity, rule, "avg", scale)
                        return backend.run(qp, kp, vp, backend.plan(t, None), scale)
                else:
                    add(f"{n} kernel{tag}", sparsity,
                        timed(lambda: backend.forward(qp, kp, vp, tiles, None, scale), device, reps))
                    outputs[(n, sparsity, rule)] = backend.forward(qp, kp, vp, tiles, None, scale)

                    def call():
                        t = select_tiles(qp, kp, lay, sparsity, rule, "avg", scale)
                        return backend.forward(qp, kp, vp, t, None, scale)
                add(f"{n} +draft{tag}", sparsity, timed(call, device, reps))
                add(f"{n} +draft+gather{tag}", sparsity,
                    timed(lambda: draft_attention(q, k, v, grid, cfg, text_len=text, scale=scale), device, reps))
            parts.append(part)
    # cross-check the backends on the same tiles (and against the reference where it is cheap)
    for sparsity, rule in ((s, r) for s in args.sparsities for r in args.selections):
        outs = {n: o for (n, s, r), o in outputs.items() if (s, r) == (sparsity, rule)}
        if len(outs) > 1:
            base_name, base = next(iter(outs.items()))
            for n, o in outs.items():
                if n != base_name:
                    d = ((o.float() - base.float()).abs().max() / base.float().abs().max()).item()
                    print(f"  check {n} vs {base_name} at {sparsity} ({rule}): max rel diff {d:.2e}")
    if S * heads * B <= 12 * 33_000 and "reference" not in ok and outputs:
        sparsity, rule = args.sparsities[-1], args.selections[0]
        tiles = select_tiles(qp, kp, lay, sparsity, rule, "avg", scale)
        ref = get_backend("reference").forward(qp, kp, vp, tiles, None, scale)
        for (n, s, r), o in outputs.items():
            if (s, r) == (sparsity, rule):
                d = ((o.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
                print(f"  check {n} vs reference at {sparsity}: max rel diff {d:.2e}")
    return rows, parts


def memory_check(args, device, dtype) -> list[dict]:
    """Extra memory of the draft step and each backend's tile structures, HunyuanVideo 720p, batch 2."""
    heads, (f, h, w), text = SHAPES["hunyuan-720p"]
    grid = VideoGrid(f, h, w)
    lay = get_layout(grid, text, (8, 16), device)
    B, S = 2, lay.seq_len
    q = torch.randn(B, S, heads, 128, device=device, dtype=dtype)
    k = torch.randn_like(q)
    kl = torch.tensor([S - 150, S - 20], device=device, dtype=torch.int32)  # padded text keys
    out = []
    for n in [n for n in (args.backends or BACKEND_NAMES) if n != "reference"]:
        backend = get_backend(n)
        if backend.not_supported_reasons(AttentionInputs.from_tensors(q, q, 128, True)) or not hasattr(backend, "plan"):
            continue
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        tiles = select_tiles(q, k, lay, 0.9, "topk", "avg", None, kl)
        plan = backend.plan(tiles, kl)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        held = torch.cuda.memory_allocated() - base
        out.append({"backend": n, "peak MiB": peak / 2**20, "held MiB": held / 2**20})
        print(f"memory hunyuan-720p batch 2, {n}: peak {peak / 2**20:.0f} MiB, held {held / 2**20:.0f} MiB")
        del tiles, plan
    return out


def markdown(rows, parts, memory, meta) -> str:
    lines = [f"Attention benchmark: {meta['date']}, {meta['device']}, torch {meta['torch']}, "
             f"{meta['dtype']}, batch {meta['batch']}", ""]
    lines += ["ms: median of calls synchronised one by one; back to back: mean of calls queued back to back and "
              "synchronised once (as inside a transformer forward, where launch overhead hides behind GPU work).", "",
              "| shape | method | sparsity | ms | / FA4 dense | / SDPA default | back-to-back ms | / FA4 dense (b2b) |",
              "|---|---|---|---|---|---|---|---|"]
    dense = {}
    for r in rows:
        if r["method"] in ("dense flash-attn-4", "dense SDPA (default)"):
            dense[(r["shape"], r["method"])] = r
    for r in rows:
        fa4 = dense.get((r["shape"], "dense flash-attn-4"))
        sd = dense.get((r["shape"], "dense SDPA (default)"))
        ratio = lambda d, key="ms": f"{r[key] / d[key]:.3f}" if d and d.get(key) else "-"  # noqa: E731
        sp = "" if r["sparsity"] is None else r["sparsity"]
        b2b = r.get("ms_back_to_back")
        lines.append(f"| {r['shape']} | {r['method']} | {sp} | {r['ms']:.2f} | {ratio(fa4)} | {ratio(sd)} | "
                     f"{'-' if b2b is None else f'{b2b:.2f}'} | {ratio(fa4, 'ms_back_to_back')} |")
    if parts:
        label_keys = ("shape", "sparsity", "selection", "achieved")
        keys = [k for k in parts[0] if k not in label_keys]
        for p in parts[1:]:
            keys += [k for k in p if k not in keys and k not in label_keys]
        lines += ["", "Overhead parts (ms):", "",
                  "| shape | sparsity | selection | achieved | " + " | ".join(keys) + " |",
                  "|---" * (4 + len(keys)) + "|"]
        for p in parts:
            vals = " | ".join(f"{p[k]:.2f}" if k in p else "-" for k in keys)
            lines.append(f"| {p['shape']} | {p['sparsity']} | {p['selection']} | {p['achieved']} | {vals} |")
    if memory:
        lines += ["", "Extra memory of draft step + tile structures, hunyuan-720p, batch 2, sparsity 0.9, padded keys:",
                  "", "| backend | peak MiB | held MiB |", "|---|---|---|"]
        lines += [f"| {m['backend']} | {m['peak MiB']:.0f} | {m['held MiB']:.0f} |" for m in memory]
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Run the benchmark with command-line arguments ``argv`` (default ``sys.argv[1:]``); ``prog`` names the
    command in ``--help`` (default: the script's file name)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), help="default: the model shapes on CUDA, small on CPU")
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.75, 0.9])
    p.add_argument("--backends", nargs="+", choices=list(BACKEND_NAMES),
                   help="sparse backends to time (default: every one that runs; reference only on CPU)")
    p.add_argument("--selections", nargs="+", default=["topk"], choices=["topk", "paper", "row_topk", "topk_heads"],
                   help="selection rules to time (default: topk, the default config's; others are labelled)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--reps", type=int, default=0, help="timed runs per row (default: 3 at large shapes, else 10)")
    p.add_argument("--memory", action="store_true", help="also measure extra memory at hunyuan-720p batch 2 (CUDA)")
    p.add_argument("--out", help="write the markdown tables here (and a .json beside it)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    shapes = args.shapes or (GPU_SHAPES if device.type == "cuda" else CPU_SHAPES)
    meta = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "dtype": args.dtype, "batch": args.batch,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"}
    rows, parts, memory = [], [], []

    def write():  # after every shape, so a run cut short still leaves its tables
        text = markdown(rows, parts, memory, meta)
        if args.out:
            Path(args.out).write_text(text + "\n")
            Path(args.out).with_suffix(".json").write_text(json.dumps(
                {"meta": meta, "rows": rows, "parts": parts, "memory": memory, "argv": sys.argv}, indent=1))
        return text

    if args.memory and device.type == "cuda":
        memory += memory_check(args, device, dtype)
        torch.cuda.empty_cache()
    for name in shapes:
        r, pt = bench_shape(name, args, device, dtype)
        rows += r
        parts += pt
        write()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("\n" + write())


if __name__ == "__main__":
    main()

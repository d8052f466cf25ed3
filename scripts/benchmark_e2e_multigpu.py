"""Multi-GPU mode of the end-to-end benchmark: one forward of a full-size transformer (random weights, bf16) on N
GPUs under diffusers' Ulysses context parallelism, dense vs draft attention, against the same forward on one GPU.

Every rank builds the model of ``scripts/benchmark_e2e.py`` (same configs and inputs; rank 0's weights are
broadcast), times each setting alone on its GPU, then calls ``enable_parallelism(ContextParallelConfig(
ulysses_degree=N))`` and times each setting again. Rank 0 reports the forward times, the scaling (1-GPU time /
N-GPU time), the relative error of the N-GPU output against the 1-GPU output, and the projected 50-step time
(13 dense steps on the fastest dense setting, 37 sparse; Wan: two calls per step).

Settings: ``diffusers default`` (PyTorch SDPA; for HunyuanVideo under parallelism through our processor with
``dense_steps_fraction=1``, which rebuilds the key mask of the padded prompt), ``flash-attn-4 dense`` (our
processor, ``dense_backend="fa4"``; GPU only) and ``draft <s>`` (every self-attention sparse).

Examples:
    python scripts/benchmark_e2e_multigpu.py --models wan14b-720p --gpus 2 --out /tmp/e2e_multigpu.md
    python scripts/benchmark_e2e_multigpu.py --tiny          # CPU dry run: 2 gloo ranks, tiny Wan and HunyuanVideo
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

STEPS, DENSE_FRACTION = 50, 0.25


def settings(args, family: str, device: torch.device) -> list[tuple[str, dict | None]]:
    """(label, draft-attention config or None for the model's own processors)."""
    out = [("diffusers default", None)]
    if device.type == "cuda" and args.backend in ("auto", "fa4"):
        out.append(("flash-attn-4 dense", dict(dense_steps_fraction=1.0, dense_backend="fa4")))
    out += [(f"draft {s}", dict(sparsity=s, backend=args.backend, dense_steps_fraction=0.0))
            for s in args.sparsities]
    return out


def run_setting(model, kw, cfg, device, args, parallel: bool, family: str):
    """Median forward seconds, output on the CPU, draft statistics (or None)."""
    from benchmark_e2e import time_forward

    from draftattention_diffusers import disable_draft_attention, enable_draft_attention, get_draft_stats

    if cfg is None and parallel and family == "hunyuan":
        cfg = dict(dense_steps_fraction=1.0)  # diffusers' own processor, with the key mask rebuilt for the split
    if cfg is not None:
        enable_draft_attention(model, **cfg)
    try:
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        secs, out = time_forward(model, kw, device, args.reps, args.warmup)
        stats = get_draft_stats(model).summary() if cfg is not None else None
    finally:
        if cfg is not None:
            disable_draft_attention(model)
    return secs, out.float().cpu(), stats


def bench_model(name: str, args, rank: int, world: int, device: torch.device, dtype: torch.dtype) -> dict:
    import benchmark_e2e
    from diffusers import ContextParallelConfig

    from draftattention_diffusers import hunyuan_video_cp_plan

    family, _, _, calls, label = benchmark_e2e.MODELS[name]
    t0 = time.perf_counter()
    model = benchmark_e2e.build(name, device, dtype)
    with torch.no_grad():
        for p in list(model.parameters()) + list(model.buffers()):
            torch.distributed.broadcast(p.data, src=0)  # identical weights on every rank
    kw = benchmark_e2e.inputs(name, device, dtype)
    log(rank, f"== {name}: {label}: built in {time.perf_counter() - t0:.1f} s")
    res = {"model": name, "label": label, "calls_per_step": calls, "gpus": world, "rows": {}, "notes": []}
    outs = {}
    for parallel in (False, True):
        if parallel:
            torch.distributed.barrier()
            model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world),
                                     cp_plan=hunyuan_video_cp_plan() if family == "hunyuan" else None)
        for key, cfg in settings(args, family, device):
            row = res["rows"].setdefault(key, {})
            where = f"{world} GPUs" if parallel else "1 GPU"
            try:
                secs, out, stats = run_setting(model, kw, cfg, device, args, parallel, family)
            except Exception as e:  # one failing setting (OOM, a backend) must not hide the others
                res["notes"].append(f"{key}, {where}: {type(e).__name__}: {str(e)[:300]}")
                log(rank, f"   {key:<22} {where:<7} FAILED {type(e).__name__}: {str(e)[:300]}")
                if rank == 0:
                    traceback.print_exc()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            row["parallel s" if parallel else "single s"] = secs
            if stats is not None:
                row["mean sparsity"] = stats["mean_sparsity"]
                row["fallbacks"] = stats["fallbacks"]
            if parallel and key in outs:
                ref = outs[key]
                row["rel err vs 1 GPU"] = float((out - ref).norm() / ref.norm())
            else:
                outs[key] = out
            log(rank, f"   {key:<22} {where:<7} {secs:8.3f} s" + (
                f"  rel err vs 1 GPU {row['rel err vs 1 GPU']:.2e}" if "rel err vs 1 GPU" in row else ""))
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    res["projection"] = project(res)
    return res


def project(res: dict) -> dict:
    """Projected 50-step seconds on 1 and N GPUs: 13 dense steps on the fastest dense setting, 37 draft steps."""
    rows, calls = res["rows"], res["calls_per_step"]
    n_dense = math.ceil(round(DENSE_FRACTION * STEPS, 9))
    out = {}
    for where in ("single s", "parallel s"):
        dense = {k: r[where] for k, r in rows.items() if not k.startswith("draft") and where in r}
        if not dense:
            continue
        fastest = min(dense, key=dense.get)
        out[where] = {"fastest dense": fastest, "dense 50 steps s": calls * STEPS * dense[fastest],
                      "default 50 steps s": calls * STEPS * dense.get("diffusers default", float("nan"))}
        for k, r in rows.items():
            if k.startswith("draft") and where in r:
                out[where][k] = calls * (n_dense * dense[fastest] + (STEPS - n_dense) * r[where])
    return out


def markdown(results: list[dict], meta: dict) -> str:
    n = meta["gpus"]
    lines = [f"Multi-GPU end-to-end (Ulysses context parallelism): {meta['date']}, {n} x {meta['device']}, torch "
             f"{meta['torch']}, diffusers {meta['diffusers']}, {meta['dtype']}, backend {meta['backend']}, one "
             f"forward each (median of {meta['reps']} after {meta['warmup']} warm-up), rank 0's times", "",
             f"| model | setting | 1 GPU s | {n} GPUs s | scaling | efficiency | rel err {n} vs 1 GPU | "
             "mean sparsity |", "|---|---|---|---|---|---|---|---|"]
    f = lambda x, fmt: format(x, fmt) if isinstance(x, (int, float)) else "-"  # noqa: E731
    for r in results:
        for k, row in r["rows"].items():
            t1, tn = row.get("single s"), row.get("parallel s")
            scale = t1 / tn if t1 and tn else None
            lines.append(f"| {r['label']} | {k} | {f(t1, '.3f')} | {f(tn, '.3f')} | {f(scale, '.2f')}x | "
                         f"{f(scale / n if scale else None, '.0%')} | {f(row.get('rel err vs 1 GPU'), '.1e')} | "
                         f"{f(row.get('mean sparsity'), '.3f')} |")
        for note in r["notes"]:
            lines.append(f"| {r['label']} | note | {note} | | | | | |")
    lines += ["", "Projected 50 steps (13 dense on the fastest dense setting, 37 draft), seconds:", "",
              f"| model | draft setting | 1 GPU | {n} GPUs | {n} GPUs draft vs 1 GPU default | "
              f"vs 1 GPU fastest dense | vs {n} GPUs fastest dense |", "|---|---|---|---|---|---|---|"]
    for r in results:
        p1, pn = r["projection"].get("single s", {}), r["projection"].get("parallel s", {})
        for k in [k for k in pn if k.startswith("draft")]:
            lines.append(f"| {r['label']} | {k} | {f(p1.get(k), '.1f')} | {f(pn[k], '.1f')} | "
                         f"{f(p1.get('default 50 steps s', 0) / pn[k], '.2f')}x | "
                         f"{f(p1.get('dense 50 steps s', 0) / pn[k], '.2f')}x | "
                         f"{f(pn['dense 50 steps s'] / pn[k], '.2f')}x |")
    return "\n".join(lines)


def log(rank: int, msg: str) -> None:
    if rank == 0:
        print(msg, flush=True)


def worker(rank: int, world: int, port: int, args) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if args.tiny:
        torch.accelerator.device_count = lambda: 1  # enable_parallelism: device = rank % count (0 on CPU torch)
        device, dtype = torch.device("cpu"), torch.float32
        dist.init_process_group("gloo", rank=rank, world_size=world)
    else:
        torch.cuda.set_device(rank)
        device, dtype = torch.device("cuda", rank), torch.bfloat16
        dist.init_process_group("nccl", rank=rank, world_size=world, device_id=device)
    import diffusers

    results = [bench_model(name, args, rank, world, device, dtype) for name in args.models]
    if rank == 0:
        meta = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "diffusers": diffusers.__version__,
                "device": torch.cuda.get_device_name() if device.type == "cuda" else "CPU", "gpus": world,
                "backend": args.backend, "reps": args.reps, "warmup": args.warmup,
                "dtype": str(dtype).replace("torch.", "")}
        text = markdown(results, meta)
        print("\n" + text, flush=True)
        if args.out:
            Path(args.out).write_text(text + "\n")
            Path(args.out).with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results,
                                                                       "argv": sys.argv}, indent=1, default=str))
    dist.destroy_process_group()


def main(argv=None) -> None:
    import benchmark_e2e

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", choices=list(benchmark_e2e.MODELS), default=["wan14b-720p"])
    p.add_argument("--gpus", type=int, default=2, help="Ulysses degree = number of ranks (default 2)")
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.9])
    p.add_argument("--backend", default="auto", help="sparse backend for draft attention (default: auto)")
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--tiny", action="store_true", help="CPU dry run: gloo ranks, tiny-wan and tiny-hunyuan")
    p.add_argument("--out", help="write the markdown table here (and a .json beside it)")
    args = p.parse_args(argv)
    if args.tiny:
        args.models = ["tiny-wan", "tiny-hunyuan"]
        args.backend = "reference"
    elif torch.cuda.device_count() < args.gpus:
        raise SystemExit(f"--gpus {args.gpus}: only {torch.cuda.device_count()} CUDA GPUs here")
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(args.gpus, port, args), nprocs=args.gpus, join=True)


if __name__ == "__main__":
    main()

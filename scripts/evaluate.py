"""Dense vs draft attention over a prompt file: time, PSNR / SSIM / LPIPS of draft against dense, one CSV row each.

The prompt file has one prompt per line (blank lines and lines starting with # are skipped). Every prompt runs
dense, then with draft attention, with the same seed; the dense video is the reference.

    python scripts/evaluate.py --preset wan2.1-1.3b-480p --prompts prompts.txt --csv results/wan480p.csv
    python scripts/evaluate.py --model tiny-wan --prompts prompts.txt --csv /tmp/tiny.csv     # CPU smoke test

Options for the model, size, input files (``--image`` / ``--video``, checked before the model loads) and draft
attention are those of ``draftattention compare``. A pipeline that takes no step callback (HunyuanVideo-1.5) has no
denoising time: its ``speedup`` column is empty and ``speedup_total`` (whole calls) is what there is.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from draftattention_diffusers.runner import (CLIError, add_run_options, apply_flow_shift,  # noqa: E402
                                             check_inputs, compare, load_pipeline, settings_from_args)

# speedup: of the denoising (empty where the pipeline's denoising cannot be timed: it takes no step callback);
# speedup_total: of the whole call
COLUMNS = ["prompt", "seed", "sparsity", "selection", "dense_s", "draft_s", "dense_denoise_s", "draft_denoise_s",
           "speedup", "speedup_total", "psnr", "ssim", "lpips", "achieved_sparsity"]


def read_prompts(path: str) -> list[str]:
    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    prompts = [ln for ln in lines if ln and not ln.startswith("#")]
    if not prompts:
        raise CLIError(f"{path}: no prompts (expected one prompt per line)")
    return prompts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", required=True, help="text file, one prompt per line")
    p.add_argument("--csv", required=True, help="output CSV file")
    p.add_argument("--videos", help="also write dense|draft side-by-side mp4s into this folder")
    p.add_argument("--warmup", type=int, default=1, help="untimed 2-step warm-up runs per mode before the first "
                                                         "prompt (default 1)")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    add_run_options(p, outputs=False)
    args = p.parse_args(argv)
    try:
        base = settings_from_args(args)
        prompts = read_prompts(args.prompts)
        check_inputs(base)  # --image / --video against the pipeline to load, before anything is loaded or written
        out = Path(args.csv)
        out.parent.mkdir(parents=True, exist_ok=True)
        pipe = load_pipeline(base.model, args.device, args.offload, inputs=base.inputs)
    except (CLIError, OSError) as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 1
    apply_flow_shift(pipe, base.flow_shift)
    pipe.set_progress_bar_config(disable=args.no_progress)
    rows = []
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for i, prompt in enumerate(prompts):
            s = dataclasses.replace(base, prompt=prompt)
            r = compare(pipe, s, warmup=args.warmup if i == 0 else 0, with_lpips=not args.no_lpips)
            m, t = r["metrics"], r["times"]
            if i == 0 and m["lpips_skipped"]:
                print(m["lpips_skipped"])
            if i == 0 and r["speedup"] is None:
                print(f"denoising not timed: {t['dense']['denoise_unavailable']}; the speedup column is empty, "
                      "speedup_total has the whole call's")
            row = {"prompt": prompt, "seed": s.seed, "sparsity": s.config.sparsity, "selection": s.config.selection,
                   "dense_s": t["dense"]["total"], "draft_s": t["draft"]["total"],
                   "dense_denoise_s": t["dense"]["denoise"], "draft_denoise_s": t["draft"]["denoise"],
                   "speedup": r["speedup"], "speedup_total": r["speedup_total"], "psnr": m["psnr"], "ssim": m["ssim"],
                   "lpips": m["lpips"], "achieved_sparsity": r["draft_attention"]["mean_sparsity"]}
            writer.writerow(row)
            f.flush()
            rows.append(row)
            speedup = (f"speedup {row['speedup']:.2f}x" if row["speedup"] is not None
                       else f"speedup {row['speedup_total']:.2f}x whole call")
            print(f"[{i + 1}/{len(prompts)}] {speedup}, PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.4f}: "
                  f"{prompt[:60]}")
            if args.videos:
                from draftattention_diffusers.video import side_by_side, write_video

                write_video(side_by_side([r["dense"], r["draft"]], labels=["dense", "draft"]),
                            Path(args.videos) / f"{i:03d}.mp4", fps=s.fps or 16)
    finite = [r["psnr"] for r in rows if math.isfinite(r["psnr"])]
    mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    timed = all(r["speedup"] is not None for r in rows)
    speedup = (f"mean speedup {mean('speedup'):.2f}x" if timed
               else f"mean speedup {mean('speedup_total'):.2f}x whole call")
    print(f"{len(rows)} prompts -> {out}: {speedup}, mean PSNR "
          f"{(sum(finite) / len(finite)) if finite else math.inf:.2f} dB ({len(rows) - len(finite)} identical), "
          f"mean SSIM {mean('ssim'):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

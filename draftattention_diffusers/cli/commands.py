"""The command layer of ``draftattention``: the argument parser, the ``cmd_*`` functions (one per subcommand),
what they print and write, and :func:`main` with its exit codes.

Settings, loading and running come from :mod:`..runner` (looked up there at call time: tests replace
``runner.load_pipeline``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from .. import runner
from ..runner import CLIError, RunSettings
from ..evaluate.run import check_range, pipeline_steps, video_blocks
from .masks import MaskSaver, parse_mask_set


def _slug(model: str) -> str:
    return Path(model.rstrip("/")).name.lower() or "video"


# ------------------------------------------------------------------------------------------- subcommands
def _print_settings(pipe, s: RunSettings, dense: bool) -> None:
    size = f"{s.height or 'default'}x{s.width or 'default'}, {s.num_frames or 'default'} frames, " \
           f"{s.num_inference_steps or 'default'} steps"
    print(f"model: {s.model} ({type(pipe).__name__}), {size}, seed {s.seed}")
    for kind in s.inputs:
        print(f"{kind}: {getattr(s, kind)}")
    if s.model in runner.TINY_MODELS:
        print("note: tiny random-weight model: the prompt only seeds fixed random embeddings; the video is noise")
    if dense:
        print("draft attention: off (dense attention)")
    else:
        c = s.config
        print(f"draft attention: sparsity {c.sparsity}, selection {c.selection}, dense for the first "
              f"{c.dense_steps_fraction:.0%} of steps, dense layers {list(c.dense_layers) or 'none'}, "
              f"backend {c.backend}")


def _write_json(path: str | None, data: dict) -> None:
    if path:
        from ..fileio import write_json_atomic

        write_json_atomic(path, data)


def check_writable(path: str | Path | None, flag: str, folder: bool = False) -> None:
    """``CLIError`` unless ``path`` (a file, or with ``folder`` a folder, created with its missing parents when
    written) can be written: not a folder where a file is meant, not a file where a folder is meant (``path`` or
    any parent), and its nearest existing parent a folder the user may write to. Nothing is created."""
    if not path:
        return
    p = Path(path).expanduser()
    if not folder and p.is_dir():
        raise CLIError(f"{flag} {str(path)!r} is a folder; expected a file name")
    if folder and p.exists() and not p.is_dir():
        raise CLIError(f"{flag} {str(path)!r} is a file; expected a folder (created if missing)")
    existing = p if folder else p.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CLIError(f"{flag} {str(path)!r} cannot be created: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} {str(path)!r} cannot be written: no write permission in {str(existing)!r}")
    if not folder and p.exists() and not os.access(p, os.W_OK):
        raise CLIError(f"{flag} {str(path)!r} cannot be written: the file is read-only")
    try:  # what os.access cannot tell (root, /proc, read-only mounts): create and remove a file there
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".draftattention-write-test-"):
            pass
    except OSError as e:
        raise CLIError(f"{flag} {str(path)!r} cannot be written: creating a file in {str(existing)!r} failed "
                       f"({e.strerror or e})") from None


def _check_output(path: str | Path) -> Path:
    from ..video import check_output_path, video_writer_missing

    if Path(path).is_dir():  # a folder named like a video: the suffix check would pass it
        raise CLIError(f"--output {str(path)!r} is a folder; expected a video file name ending in .mp4 or .gif")
    try:
        out = check_output_path(path)
    except (ValueError, OSError) as e:
        raise CLIError(str(e)) from None
    if out.suffix.lower() == ".mp4" and video_writer_missing():
        raise CLIError(video_writer_missing())
    return out


def _check_stack_fp8(fp8: bool, flag: str) -> None:
    """Refuse float8 before the model loads where the stack would refuse it (no torchao, no GPU it runs on)."""
    if fp8:
        from ..integration.stack import check_fp8

        try:
            check_fp8(True)
        except ValueError as e:
            raise CLIError(f"{flag}: {e}") from None


def cmd_generate(args: argparse.Namespace) -> int:
    from ..video import write_video

    s = runner.settings_from_args(args, dense=args.dense)
    if args.save_masks and args.dense:
        raise CLIError("--save-masks shows draft attention's choices: drop --dense")
    cache = runner.stack_cache(args.stack, "--stack")
    for flag, given in (("--stack-no-compile", args.stack_no_compile), ("--stack-fp8", args.stack_fp8)):
        if args.stack is None and given:
            raise CLIError(f"{flag} goes with --stack CACHE")
    _check_stack_fp8(args.stack_fp8, "--stack-fp8")
    if args.stack is not None and args.save_masks and not args.stack_no_compile:
        raise CLIError("--save-masks watches draft attention's calls, which a compiled stack runs inside its graphs: "
                       "add --stack-no-compile")
    check_writable(args.json, "--json")
    check_writable(args.save_masks, "--save-masks", folder=True)
    mask_sets = [parse_mask_set(text, what) if text else None for text, what in
                 ((args.mask_layers, "layers"), (args.mask_steps, "steps"), (args.mask_heads, "heads"))
                 ] if args.save_masks else None
    out = _check_output(args.output or f"outputs/{_slug(s.model)}-{'dense' if args.dense else 'draft'}.mp4")
    if mask_sets:
        check_range(mask_sets[1], s.num_inference_steps, "--mask-steps", "denoising steps")
    runner.check_inputs(s)
    pipe = runner.load_pipeline(s.model, args.device, args.offload, inputs=s.inputs)
    runner.apply_flow_shift(pipe, s.flow_shift)
    pipe.set_progress_bar_config(disable=args.no_progress)
    kwargs = runner.call_kwargs(pipe, s)
    if mask_sets:  # indices the model does not have would give no picture at all: say so before the run
        check_range(mask_sets[0], video_blocks(pipe), "--mask-layers", "blocks with video self-attention")
        check_range(mask_sets[1], pipeline_steps(pipe, s), "--mask-steps", "denoising steps")
    _print_settings(pipe, s, args.dense)
    saver = None
    described = None
    with contextlib.ExitStack() as stack:
        if args.stack is not None:  # the one-call fast stack, with draft attention unless --dense
            from .. import disable_fast_stack, enable_fast_stack

            try:
                fast = enable_fast_stack(pipe, cache, compile=not args.stack_no_compile, fp8=args.stack_fp8,
                                         draft=False if args.dense else s.config,
                                         num_inference_steps=pipeline_steps(pipe, s))
            except (ValueError, RuntimeError, ImportError) as e:
                raise CLIError(f"--stack {args.stack}: {runner.first_line(e)}") from None
            stack.callback(disable_fast_stack, pipe)
            described = fast.describe()
            print("stack: " + " -> ".join(described))
            if not args.stack_no_compile:
                print("note: this first call of a compiled stack includes compiling it; its speed shows from the "
                      "second call on (draftattention evaluate --stacks warms it up before timing)")
        if not args.dense:
            from .. import draft_attention_enabled, get_draft_processor

            if args.stack is None:
                stack.enter_context(draft_attention_enabled(pipe, s.config))
            if args.save_masks:
                layers, steps, heads = mask_sets
                if not args.mask_layers:  # the first block that is not always dense
                    layers = {min(set(range(len(s.config.dense_layers) + 1)) - set(s.config.dense_layers))}
                saver = MaskSaver(args.save_masks, s.config, layers, steps, heads)
                proc = get_draft_processor(pipe)
                proc.add_observer(saver)
                stack.callback(proc.remove_observer, saver)
        frames, times = runner.run_pipeline(pipe, kwargs, s.seed)
        stats = None
        if not args.dense:
            from .. import get_draft_stats

            stats = get_draft_stats(pipe)
            summary = stats.summary()
    write_video(frames, out, fps=runner.video_fps(pipe, s))
    print(f"wrote {out} ({frames.shape[0]} frames, {frames.shape[1]}x{frames.shape[2]})")
    print(f"time: {runner.format_times(times)}")
    if stats is not None:
        print(stats.format())
        _warn_sparsity_gap(s, summary)
    if saver is not None:
        print(f"wrote {len(saver.written)} mask pictures to {args.save_masks}")
    _write_json(args.json, {"model": s.model, "output": str(out), "times": times, "settings": dataclasses.asdict(s),
                            "draft_attention": summary if stats is not None else None, "stack": described})
    return 0


def _warn_sparsity_gap(s: RunSettings, summary: dict) -> None:
    note = runner.sparsity_gap_note(s.config.sparsity, summary["mean_sparsity"])
    if note:
        runner.warn(note)


def cmd_compare(args: argparse.Namespace) -> int:
    from ..video import side_by_side, write_video

    s = runner.settings_from_args(args)
    if args.warmup < 0:
        raise CLIError(f"--warmup {args.warmup}: expected a non-negative number of warm-up runs (0: none)")
    check_writable(args.json, "--json")
    out = _check_output(args.output or f"outputs/{_slug(s.model)}-compare.mp4")
    runner.check_inputs(s)
    pipe = runner.load_pipeline(s.model, args.device, args.offload, inputs=s.inputs)
    runner.apply_flow_shift(pipe, s.flow_shift)
    pipe.set_progress_bar_config(disable=args.no_progress)
    _print_settings(pipe, s, dense=False)
    r = runner.compare(pipe, s, warmup=args.warmup, with_lpips=not args.no_lpips)
    td, tr, m = r["times"]["dense"], r["times"]["draft"], r["metrics"]
    write_video(side_by_side([r["dense"], r["draft"]],
                             labels=[f"dense {td['total']:.1f}s", f"draft {s.config.sparsity:g} {tr['total']:.1f}s"]),
                out, fps=runner.video_fps(pipe, s))
    print(f"wrote {out} (left: dense, right: draft attention)")
    if r["speedup"] is None:  # the pipeline takes no step callback: whole calls only, and say so
        print(f"dense: {td['total']:.2f} s; draft: {tr['total']:.2f} s; speedup {r['speedup_total']:.2f}x whole "
              f"call (warm-up runs: {args.warmup}); denoising not timed: {td['denoise_unavailable']}")
    else:
        print(f"dense: {runner.format_times(td)}; draft: {runner.format_times(tr)}; speedup {r['speedup']:.2f}x "
              f"denoising, {r['speedup_total']:.2f}x whole call (warm-up runs: {args.warmup})")
    if pipe._execution_device.type == "cpu":
        print("note: on a CPU draft attention runs the reference backend (for correctness): these times say "
              "nothing about GPU speed")
    lp = f"LPIPS {m['lpips']:.4f}" if m["lpips"] is not None else m["lpips_skipped"]
    print(f"draft vs dense: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f} ({m['ssim_backend']}), {lp}")
    print(r["stats_text"])
    _warn_sparsity_gap(s, r["draft_attention"])
    _write_json(args.json, {"model": s.model, "output": str(out), "settings": dataclasses.asdict(s),
                            "times": r["times"], "speedup": r["speedup"], "speedup_total": r["speedup_total"],
                            "metrics": m, "draft_attention": r["draft_attention"]})
    return 0


def _int_list(text: str | None, flag: str) -> list[int] | None:
    """``"0,5"`` -> [0, 5] (non-negative), None for None."""
    if text is None:
        return None
    values = _csv_list(text, flag, int)
    if min(values) < 0:
        raise CLIError(f"{flag} {text!r}: expected non-negative integers")
    return values


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluate import suite
    from ..evaluate.report import report_unavailable, write_report
    from ..evaluate.run import EvalOptions, Evaluation, build_settings, check_range, default_long_frames

    base = runner.settings_from_args(args)
    if base.model in runner.TINY_MODELS and args.height is None and args.preset is None:
        # the tiny VAE decode dominates a tiny run on a CPU: half the demo height keeps a suite under a minute
        # (128x512: two draft regions per frame, so 90% sparsity still skips tiles)
        base = dataclasses.replace(base, height=128)
    if args.prompts and args.prompt:
        raise CLIError("--prompt and --prompts: pass one (a single prompt, or a file of prompts)")
    try:
        if args.prompts:
            prompts = suite.read_prompt_file(args.prompts)
        elif args.prompt:
            prompts = [suite.SuitePrompt("p01", "prompt", args.prompt)]
        else:
            prompts = suite.builtin_suite()
        tiny = base.model in runner.TINY_MODELS
        per = args.per_category or ("1" if tiny and not args.prompts and not args.prompt else "all")
        if per != "all" and not per.isdigit():
            raise CLIError(f"--per-category {per!r}: expected a positive number or 'all'")
        prompts = suite.select(prompts, _csv_list(args.categories, "--categories") if args.categories else None,
                               None if per == "all" else int(per))
    except ValueError as e:
        raise CLIError(str(e)) from None
    presets = []
    for name in _csv_list(args.presets, "--presets") if args.presets else []:
        p = runner.resolve_settings(preset=name, model=base.model, dense=True)  # its checks, its config
        presets.append((name, p.config))
    sparsities = _csv_list(args.sparsities, "--sparsities", float) if args.sparsities else None
    selections = _csv_list(args.selections, "--selections") if args.selections else None
    stacks = _csv_list(args.stacks, "--stacks") if args.stacks else []
    warmups = _csv_list(args.warmup_sparsities, "--warmup-sparsities", _warmup_sparsity) \
        if args.warmup_sparsities else None
    if args.stack_fp8 and not stacks:
        raise CLIError("--stack-fp8 goes with --stacks CACHES")
    _check_stack_fp8(args.stack_fp8, "--stack-fp8")
    settings = build_settings(base.config, sparsities, selections, presets, stacks, compile=not args.stack_no_compile,
                              warmups=warmups, fp8=args.stack_fp8)
    for st in settings:
        runner.check_backend(dataclasses.replace(base, config=st.config), runner.pick_device(args.device))
    for flag, v in (("--warmup", args.warmup), ("--map-prompts", args.map_prompts),
                    ("--strip-frames", args.strip_frames)):
        if v < (1 if flag == "--strip-frames" else 0):
            raise CLIError(f"{flag} {v}: expected a {'positive' if flag == '--strip-frames' else 'non-negative'} "
                           "integer")
    long_frames = args.long_frames if args.long_frames is not None else default_long_frames(base.num_frames)
    if long_frames is not None and any(p.long for p in prompts):
        runner.RunSettings(model=base.model, num_frames=long_frames).validate()
    map_steps = _int_list(args.map_steps, "--map-steps")
    check_range(map_steps, base.num_inference_steps, "--map-steps", "denoising steps")
    out = Path(args.out or (Path(args.csv).with_suffix("").as_posix() + "-report" if args.csv
                            else f"outputs/evaluate-{_slug(base.model)}"))
    check_writable(out, "--out", folder=True)
    check_writable(args.csv, "--csv")
    reason = report_unavailable()
    if reason:
        raise CLIError(reason)
    if not args.no_videos:
        from ..video import video_writer_missing

        if video_writer_missing():
            raise CLIError(f"{video_writer_missing()}; or pass --no-videos")
    runner.check_inputs(base)
    opts = EvalOptions(out_dir=out, warmup=args.warmup, with_lpips=not args.no_lpips, long_frames=long_frames,
                       map_prompts=args.map_prompts, map_layers=_int_list(args.map_layers, "--map-layers"),
                       map_steps=map_steps, map_heads=_int_list(args.map_heads, "--map-heads"),
                       recall=args.recall, strip_frames=args.strip_frames, videos=not args.no_videos,
                       device=args.device, offload=args.offload, no_progress=args.no_progress)
    print(f"evaluate: {base.model}, {len(prompts)} prompts x {len(settings)} settings "
          f"({', '.join(st.label for st in settings)}) -> {out}")
    ev = Evaluation(base, prompts, settings, opts)
    ev.command = "draftattention " + " ".join(args.argv) if getattr(args, "argv", None) else None
    data = ev.run()
    if ev.pipe is not None and ev.pipe._execution_device.type == "cpu":
        print("note: on a CPU draft attention runs the reference backend (for correctness): these times say "
              "nothing about GPU speed")
    untimed = next((d["times"].get("denoise_unavailable") for d in data["dense"].values()
                    if d["times"].get("denoise_unavailable")), None)
    if untimed:
        print(f"denoising not timed: {untimed}; speedups are of whole calls")
    if data["lpips_note"]:
        print(data["lpips_note"])
    for st in data["settings"]:
        v = data["summary"][st["id"]]
        speed = f"{v['speedup']:.2f}x" if v["speedup"] is not None else f"{v['speedup_total']:.2f}x whole call"
        psnr = "identical" if v["psnr"] is None else f"{v['psnr']:.2f} dB"
        print(f"{st['label']}: mean speedup {speed}, PSNR {psnr}, SSIM {v['ssim']:.4f}, achieved sparsity "
              f"{v['achieved_sparsity'] if v['achieved_sparsity'] is None else round(v['achieved_sparsity'], 3)}")
    report = write_report(out, data)
    if args.csv:
        from ..fileio import write_text_atomic

        write_text_atomic(args.csv, (out / "results.csv").read_text(encoding="utf-8"))
        print(f"wrote {args.csv}")
    print(f"wrote {report} (open it in a browser; data: {out / 'results.json'})")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from ..config import load_preset, preset_dir

    rows = []
    for path in sorted(preset_dir().glob("*.yaml")):
        p = load_preset(path)
        c = p.draft_attention
        rows.append((path.stem, p.model, f"{p.height}x{p.width}, {p.num_frames} frames, {p.num_inference_steps} steps",
                     f"sparsity {c.sparsity:g}, {c.selection}, {c.dense_steps_fraction:g} dense steps, dense layers "
                     f"{list(c.dense_layers) or 'none'}"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(x.ljust(w) for x, w in zip(r, widths)) + "  " + r[3])
    print(f"({len(rows)} presets in {preset_dir()}; use --preset NAME, or --preset FILE.yaml for your own)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    try:
        from ..info import backend_status_report, supported_models_report
    except ImportError as e:
        raise CLIError(f"the backend report is not available in this install ({e})") from None
    print(backend_status_report())
    print(supported_models_report())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ..benchmark_attention import main as bench_main  # in the package: works from an installed wheel

    try:
        bench_main(args.passthrough, prog="draftattention bench --")
    except SystemExit as e:  # the benchmark's own exit status (argparse: --help 0, bad arguments 2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def _csv_list(text: str, what: str, convert: Callable[[str], Any] = str) -> list:
    try:
        values = [convert(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CLIError(f"{what} {text!r}: expected a comma-separated list") from None
    if not values:
        raise CLIError(f"{what} {text!r}: expected at least one value")
    return values


def _warmup_sparsity(text: str) -> float | None:
    try:
        return None if text == "dense" else float(text)
    except ValueError:
        raise CLIError(f"--warmup-sparsities: {text!r} is neither 'dense' nor a sparsity such as 0.75") from None


def _layer_selector(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def cmd_capture(args: argparse.Namespace) -> int:
    from ..quality.capture import capture

    s = runner.settings_from_args(args, dense=not args.draft)
    out_dir = Path(args.out_dir or f"captures/{_slug(s.model)}")
    check_writable(out_dir, "--out-dir", folder=True)
    layers = _csv_list(args.layers, "--layers", _layer_selector) if args.layers else None
    steps = _csv_list(args.capture_steps, "--capture-steps", int) if args.capture_steps else None
    heads = _csv_list(args.heads, "--heads", int) if args.heads else None
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    runner.check_inputs(s)
    pipe = runner.load_pipeline(s.model, args.device, args.offload, inputs=s.inputs)
    runner.apply_flow_shift(pipe, s.flow_shift)
    pipe.set_progress_bar_config(disable=args.no_progress)
    _print_settings(pipe, s, dense=not args.draft)
    kwargs = dict(runner.call_kwargs(pipe, s), output_type="latent",  # q/k/v are all we need: skip the VAE
                  generator=torch.Generator("cpu").manual_seed(s.seed))
    try:
        paths = capture(pipe, layers=layers, steps=steps, out_dir=out_dir, heads=heads, save_v=not args.no_v,
                        dtype=dtypes[args.dtype] if args.dtype else None,
                        config=s.config if args.draft else None, **kwargs)
    except ValueError as e:
        raise CLIError(str(e)) from None
    print(f"wrote {len(paths)} capture files to {out_dir} (analyze them: draftattention analyze {out_dir}/*)")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from ..quality.analyze import analyze, format_rows, summarize_rows

    check_writable(args.json, "--json")
    paths = [Path(p) for p in args.files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise CLIError(f"capture file(s) not found: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    regions = []
    for r in _csv_list(args.regions, "--regions"):
        try:
            h, w = (int(x) for x in r.lower().split("x"))
        except ValueError:
            raise CLIError(f"--regions {r!r}: expected HxW, e.g. 8x16") from None
        regions.append((h, w))
    try:
        rows = analyze(paths, sparsity=_csv_list(args.sparsity, "--sparsity", float),
                       selections=_csv_list(args.selections, "--selections"),
                       poolings=_csv_list(args.poolings, "--poolings"), region_sizes=regions,
                       static=_csv_list(args.static, "--static") if args.static else (), oracle=not args.no_oracle,
                       error=not args.no_error, error_rows=args.error_rows or None,
                       device=runner.pick_device(args.device))
    except ValueError as e:
        raise CLIError(str(e)) from None
    print(format_rows(rows if args.per_file else summarize_rows(rows)))
    _write_json(args.json, {"rows": rows})
    return 0


# ------------------------------------------------------------------------------------------------ parser
def _suite_categories() -> list[str]:
    from ..evaluate.suite import CATEGORIES

    return list(CATEGORIES)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="draftattention",
        description=f"Draft attention for diffusers video pipelines ({runner.MODELS_TITLE}): generate, compare with "
                    "dense, inspect backends.")
    parser.add_argument("--version", action="version", version=f"draftattention_diffusers {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    g = sub.add_parser("generate", parents=[debug], help="generate one video",
                       description="Generate a video with draft attention (or --dense) and print its time and the "
                                   "draft-attention statistics.")
    runner.add_run_options(g)
    g.add_argument("--dense", action="store_true", help="switch draft attention off")
    g.add_argument("--stack", metavar="CACHE", help="run the one-call fast stack (enable_fast_stack: draft attention, "
                                                    "this step cache, regional compile), e.g. first_block; none: no "
                                                    "cache. With --dense: the same stack without draft attention")
    g.add_argument("--stack-no-compile", action="store_true", help="--stack without regional compile")
    g.add_argument("--stack-fp8", action="store_true", help="--stack with torchao float8 linear layers (fp8=True: "
                                                            "needs torchao and a GPU of compute capability >= 8.9)")
    m = g.add_argument_group("mask pictures")
    m.add_argument("--save-masks", metavar="DIR", help="write PNGs of the draft map and the computed tiles")
    m.add_argument("--mask-layers", help="block indices, or 'all' (default: the first block not in dense_layers)")
    m.add_argument("--mask-steps", default="all", help="denoising steps, or 'all' (default)")
    m.add_argument("--mask-heads", default="0", help="attention heads, or 'all' (default: 0)")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("compare", parents=[debug], help="dense vs draft attention: time and quality",
                       description="Run the same prompt and seed dense and with draft attention; print the time "
                                   "ratio, PSNR / SSIM / LPIPS of draft against dense, write a side-by-side video.")
    runner.add_run_options(c)
    c.add_argument("--warmup", type=int, default=1, help="untimed 2-step warm-up runs per mode (default 1)")
    c.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    c.set_defaults(func=cmd_compare)

    e = sub.add_parser("evaluate", parents=[debug], help="a prompt suite dense vs several draft settings: HTML "
                                                          "report",
                       description="Run a prompt suite (built in, grouped by what stresses sparse attention, or "
                                   "--prompts FILE) dense and with every draft-attention setting (--sparsities x "
                                   "--selections, --presets), same seeds, and write an HTML report (speed, PSNR / "
                                   "SSIM / LPIPS, frames, videos, per-step sparsity, draft maps) with results.json "
                                   "and results.csv. Running it again resumes: finished prompts are reused.")
    runner.add_run_options(e, outputs=False)
    ev = e.add_argument_group("evaluation")
    ev.add_argument("--prompts", metavar="FILE", help="prompt file, one per line, optional [category] prefix "
                                                      "(default: the built-in suite)")
    ev.add_argument("--categories", help="only these categories, e.g. fast-motion,text (built-in: "
                                         f"{', '.join(_suite_categories())})")
    ev.add_argument("--per-category", help="prompts per category: N or all (default: all; tiny models: 1)")
    ev.add_argument("--sparsities", help="comma-separated sparsities, e.g. 0.75,0.9 (default: --sparsity or the "
                                         "preset's)")
    ev.add_argument("--selections", help="comma-separated selection rules, e.g. topk,topk_heads")
    ev.add_argument("--presets", help="comma-separated presets whose draft-attention settings are run as well, "
                                      "on this run's model, size and steps (e.g. paper-wan2.1-14b-512p-s90)")
    ev.add_argument("--stacks", help="also run the one-call fast stack (enable_fast_stack: draft attention with "
                                     "--sparsity or the preset's, a step cache, regional compile) with these caches, "
                                     "e.g. first_block,none (none: no cache)")
    ev.add_argument("--stack-no-compile", action="store_true", help="--stacks without regional compile")
    ev.add_argument("--stack-fp8", action="store_true", help="each --stacks stack also with torchao float8 linear "
                                                             "layers (fp8=True), beside the same stack without them: "
                                                             "what float8 costs on your model")
    ev.add_argument("--warmup-sparsities", help="warm-ups to compare, for the sparsity grid and each stack: dense "
                                                "(the paper's) and/or the opt-in milder warm-up's sparsities, e.g. "
                                                "dense,0.75")
    ev.add_argument("--long-frames", type=int, help="frames of the 'long' prompts (default: 2x the run's, 4k+1)")
    ev.add_argument("--out", metavar="DIR", help="folder of the report (default outputs/evaluate-<model>; with "
                                                 "--csv: next to it)")
    ev.add_argument("--csv", help="also copy results.csv to this file")
    ev.add_argument("--warmup", type=int, default=1, help="untimed 2-step warm-up runs per setting (default 1)")
    ev.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    ev.add_argument("--no-videos", action="store_true", help="no side-by-side videos (frame strips only)")
    ev.add_argument("--strip-frames", type=int, default=6, help="frames in each frame strip (default 6)")
    ev.add_argument("--map-prompts", type=int, default=1, help="draw draft maps for the first N prompts "
                                                               "(default 1; 0: none)")
    ev.add_argument("--map-layers", help="block indices of the draft maps (default: the first sparse block and the "
                                         "middle one)")
    ev.add_argument("--map-steps", help="steps of the draft maps (default: the first sparse step and the last)")
    ev.add_argument("--map-heads", default="0", help="heads of the draft maps (default 0)")
    ev.add_argument("--recall", action="store_true", help="also capture q/k at the map layers and steps and show "
                                                          "the recall of the kept tiles against the oracle")
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("presets", parents=[debug], help="list the shipped presets",
                        description="List the presets shipped in the package: model, size, steps and draft "
                                    "attention settings.")
    pr.set_defaults(func=cmd_presets)

    i = sub.add_parser("info", parents=[debug], help="versions, GPU and attention backends",
                       description="Print versions, the GPU and whether each attention backend can run here, "
                                   "with the reasons when it cannot.")
    i.set_defaults(func=cmd_info)

    b = sub.add_parser("bench", parents=[debug], help="attention benchmark (draftattention_diffusers."
                                                      "benchmark_attention)",
                       description="Run the attention benchmark (draftattention_diffusers.benchmark_attention, also "
                                   "scripts/benchmark_attention.py); other arguments are passed to it "
                                   "(draftattention bench -- --help shows them).")
    b.set_defaults(func=cmd_bench)

    cap = sub.add_parser("capture", parents=[debug], help="save q/k/v of chosen layers and steps (quality lab)",
                         description="Run a pipeline and save q, k (and v) of chosen video self-attention layers and "
                                     "steps, as the attention kernel sees them, one safetensors file per call. By "
                                     "default the model runs dense (the unmodified model); --draft runs it with "
                                     "draft attention.")
    runner.add_run_options(cap, outputs=False)
    cap.add_argument("--layers", help="block indices and/or layer-name patterns, e.g. 0,10,blocks.3.attn1 "
                                      "(default: every layer)")
    cap.add_argument("--capture-steps", help="denoising steps, e.g. 10,-1 (negative: from the end; default: all)")
    cap.add_argument("--heads", help="head indices to keep, e.g. 0,4,8 (default: all; real models are large)")
    cap.add_argument("--out-dir", help="folder for the files (default captures/<model>)")
    cap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="save in this dtype")
    cap.add_argument("--no-v", action="store_true", help="do not save v (no output error in analyze)")
    cap.add_argument("--draft", action="store_true", help="run with draft attention (the preset's or flags' "
                                                          "settings) instead of dense")
    cap.set_defaults(func=cmd_capture)

    an = sub.add_parser("analyze", parents=[debug], help="attention recall and output error on captured files",
                        description="Attention recall and output error of tile selections on capture files "
                                    "(draftattention capture), next to the oracle mask of the same budget.")
    an.add_argument("files", nargs="+", help="capture files (.safetensors)")
    an.add_argument("--sparsity", default="0.5,0.75,0.9", help="comma-separated sparsities (default 0.5,0.75,0.9)")
    an.add_argument("--selections", default="topk,paper", help="selection rules (default topk,paper)")
    an.add_argument("--poolings", default="avg", help="poolings: avg, max (default avg)")
    an.add_argument("--regions", default="8x16", help="region sizes HxW (default 8x16)")
    an.add_argument("--static", help="static patterns to add, e.g. window,spatial,temporal")
    an.add_argument("--no-oracle", action="store_true", help="skip the oracle mask")
    an.add_argument("--no-error", action="store_true", help="skip the output error")
    an.add_argument("--error-rows", type=int, default=1024,
                    help="query rows sampled for the output error (0: all rows, exact, slow; default 1024)")
    an.add_argument("--per-file", action="store_true", help="one row per file instead of the mean over files")
    an.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cpu")
    an.add_argument("--json", help="also write the rows as JSON to this file")
    an.set_defaults(func=cmd_analyze)
    # no abbreviations: `compare --dense` must not be read as --dense-steps-fraction
    for p in (parser, *sub.choices.values()):
        p.allow_abbrev = False
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``draftattention``; returns the exit code."""
    runner.reset_warnings()  # each run warns again (several runs in one process: tests, notebooks)
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    args.argv = argv
    if args.command == "bench":
        args.passthrough = [a for a in extra if a != "--"]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("draftattention: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line for users; --debug shows the traceback
        if args.debug:
            raise
        if isinstance(e, CLIError):
            message = str(e)
        else:
            message = f"{type(e).__name__}: {runner.first_line(e)} (run with --debug for the traceback)"
        print(f"draftattention: error: {' '.join(message.split())}", file=sys.stderr)
        return 1


__all__ = ["main", "build_parser", "cmd_generate", "cmd_compare", "cmd_evaluate", "cmd_presets", "cmd_info",
           "cmd_bench", "cmd_capture", "cmd_analyze", "check_writable"]

"""The evaluation run: every prompt dense (the reference) and with every draft-attention setting, same seed;
metrics, media and per-step statistics per (prompt, setting); resumable.

Output folder layout (``OUT``)::

    OUT/report.html           the report (:mod:`.report`), rebuilt at the end of every run
    OUT/results.json          everything the report shows (rewritten after every finished prompt x setting)
    OUT/results.csv           one row per prompt x setting
    OUT/media/<prompt>/       side-by-side videos, frame strips, worst frames, draft-map pictures
    OUT/runs/dense/<prompt>.json, .npz   the dense reference (its frames as uint8, lossless) and its time
    OUT/runs/<setting>/<prompt>.json     one finished prompt x setting

Every file is written under a temporary name and moved into place when complete (:mod:`..fileio`), so an
interrupted run leaves only finished records; running the same command again reuses every record whose settings
(model, size, frames, steps, guidance, seed, prompt, draft-attention config) are unchanged and computes the rest.
Metrics are computed on the uint8 frames that are saved (the video a user sees), so resumed and fresh records
agree exactly.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import inspect
import json
import math
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import runner
from ..config import DraftAttentionConfig
from ..fileio import atomic_path, write_json_atomic, write_text_atomic
from ..runner import CLIError, RunSettings, sparsity_gap_note
from .suite import SuitePrompt, category_title

FORMAT = "draftattention-evaluate/1"


@dataclass(frozen=True)
class EvalSetting:
    """One draft-attention setting of a run: ``id`` (file-name safe), ``label`` (shown), ``config``; ``stack``: run
    it as the one-call fast stack (:func:`..integration.stack.enable_fast_stack`) with this cache (``"none"``: no
    cache), regionally compiled when ``compile``, with torchao float8 linear layers when ``fp8``; None: draft
    attention alone."""

    id: str
    label: str
    config: DraftAttentionConfig
    stack: str | None = None
    compile: bool = False
    fp8: bool = False


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text)


def build_settings(base: DraftAttentionConfig, sparsities: list[float] | None, selections: list[str] | None,
                   presets: list[tuple[str, DraftAttentionConfig]] = (), stacks: list[str] = (),
                   compile: bool = True, warmups: list[float | None] | None = None,
                   fp8: bool = False) -> list[EvalSetting]:
    """The settings of a run: every sparsity x selection x warm-up on top of ``base`` (a preset's or the flags'
    config; None lists: ``base``'s own value; left out when only presets are given), then one per preset
    ``(name, config)``, then one fast stack per cache name in ``stacks`` x warm-up (with ``base``, compiled when
    ``compile``; with ``fp8`` each stack also with float8 linear layers, beside the same stack without them).
    ``warmups``: ``warmup_sparsity`` values (None: the dense warm-up), so that the opt-in milder warm-up is judged
    beside the default one in one report. Raises ``CLIError`` for a bad value (the config's own
    message), an unknown cache name, or two settings with the same config."""
    def configured(cfg: DraftAttentionConfig, **fields) -> DraftAttentionConfig:
        try:
            return cfg.replace(**fields)
        except ValueError as e:
            raise CLIError(str(e)) from None

    def warmup_text(w, sep: str) -> str:  # said only where a run has a choice of warm-up or a mild one
        return "" if w is None and not warmups else sep + ("dense warm-up" if w is None else f"warm-up {w:g}")

    def warmup_id(w) -> str:
        return "" if w is None and not warmups else ("-wdense" if w is None else f"-w{w:g}")

    warm = warmups or [base.warmup_sparsity]
    out: list[EvalSetting] = []
    if sparsities or selections or not presets:  # (with stacks too: the stack is judged against draft alone)
        for sp in sparsities or [base.sparsity]:
            for sel in selections or [base.selection]:
                for w in warm:
                    out.append(EvalSetting(_safe(f"s{sp:g}-{sel}{warmup_id(w)}"),
                                           f"sparsity {sp:g}, {sel}{warmup_text(w, ', ')}",
                                           configured(base, sparsity=sp, selection=sel, warmup_sparsity=w)))
    for name, cfg in presets:
        short = Path(name).stem if name.endswith((".yaml", ".yml")) else name  # a name may hold dots: wan2.1-...
        out.append(EvalSetting(_safe(f"preset-{short}"), f"preset {short} (sparsity {cfg.sparsity:g}, "
                                                          f"{cfg.selection})", cfg))
    for cache in stacks:
        runner.stack_cache(cache, "--stacks")
        for w in warm:
            for f8 in (False, True) if fp8 else (False,):
                what = f"stack: draft {base.sparsity:g}" + ("" if cache == "none" else f" + {cache}") + \
                    (" + float8 linears" if f8 else "") + (" + compile" if compile else "") + warmup_text(w, ", ")
                sid = f"stack-{cache}{'-fp8' if f8 else ''}{'-compiled' if compile else ''}{warmup_id(w)}"
                out.append(EvalSetting(_safe(sid), what, configured(base, warmup_sparsity=w), cache, compile, f8))
    seen: dict[str, str] = {}
    for st in out:
        key = json.dumps([dataclasses.asdict(st.config), st.stack, st.compile, st.fp8], sort_keys=True, default=str)
        if key in seen:
            raise CLIError(f"settings {seen[key]!r} and {st.label!r} are the same draft-attention config; drop one")
        seen[key] = st.label
    return out


@dataclass
class EvalOptions:
    """How to run (what the command-line flags of ``evaluate`` set)."""

    out_dir: Path
    warmup: int = 1
    with_lpips: bool = True
    long_frames: int | None = None
    map_prompts: int = 1
    map_layers: list[int] | None = None
    map_steps: list[int] | None = None
    map_heads: list[int] = field(default_factory=lambda: [0])
    recall: bool = False
    strip_frames: int = 6
    videos: bool = True
    device: str = "auto"
    offload: bool = False
    no_progress: bool = False


# ------------------------------------------------------------------------------------------ keys, records
def _key(data: dict) -> str:
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _run_fields(s: RunSettings) -> dict[str, Any]:
    return {k: getattr(s, k) for k in ("model", "prompt", "height", "width", "num_frames", "num_inference_steps",
                                       "guidance_scale", "guidance_scale_2", "flow_shift", "seed", "image",
                                       "video")}


def dense_key(s: RunSettings) -> str:
    return _key(_run_fields(s))


def draft_key(s: RunSettings, st: EvalSetting) -> str:
    # fp8 only where set: the keys of records written before the flag existed stay valid, so runs resume
    extra = {} if st.stack is None else {"stack": st.stack, "compile": st.compile, **({"fp8": True} if st.fp8 else {})}
    return _key({**_run_fields(s), "config": dataclasses.asdict(st.config), **extra})


def _read_record(path: Path, key: str) -> dict | None:
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if rec.get("key") == key else None


def prompt_settings(base: RunSettings, p: SuitePrompt, long_frames: int | None) -> RunSettings:
    return dataclasses.replace(base, prompt=p.text,
                               num_frames=long_frames if p.long and long_frames else base.num_frames)


def default_long_frames(num_frames: int | None) -> int | None:
    """Twice the run's frames in the models' 4k+1 counts (9 -> 17, 81 -> 161); None when unknown."""
    return None if num_frames is None else 2 * (num_frames - 1) + 1


# ------------------------------------------------------------------------------------------------ media
def _label(img: np.ndarray, text: str, height: int = 14) -> np.ndarray:
    from ..video import _label_bar

    return np.concatenate([_label_bar(img.shape[1], text)[:height], img], axis=0)


def _diff(a: np.ndarray, b: np.ndarray, gain: float = 4.0) -> np.ndarray:
    d = np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(-1, keepdims=True) * gain
    return np.clip(d, 0, 255).astype(np.uint8).repeat(3, -1)


def _grid(rows: list[list[np.ndarray]], gap: int = 4) -> np.ndarray:
    def hcat(imgs):
        parts = []
        for i, im in enumerate(imgs):
            if i:
                parts.append(np.full((im.shape[0], gap, 3), 255, np.uint8))
            parts.append(im)
        return np.concatenate(parts, axis=1)

    lines = [hcat(r) for r in rows]
    width = max(x.shape[1] for x in lines)
    lines = [np.pad(x, ((0, 0), (0, width - x.shape[1]), (0, 0)), constant_values=255) for x in lines]
    out = []
    for i, x in enumerate(lines):
        if i:
            out.append(np.full((gap, width, 3), 255, np.uint8))
        out.append(x)
    return np.concatenate(out, axis=0)


def _save_png(img: np.ndarray, path: Path) -> Path:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG", compress_level=1)  # fast; frames compress poorly anyway
    return path


def frame_strip(dense: np.ndarray, draft: np.ndarray, frames: list[int], path: Path) -> Path:
    """A PNG: chosen frames of the dense video (top row), the draft video (middle) and their difference x4
    (bottom)."""
    rows = [[_label(dense[i], f"dense f{i}") for i in frames], [_label(draft[i], f"draft f{i}") for i in frames],
            [_label(_diff(dense[i], draft[i]), f"|diff| x4 f{i}") for i in frames]]
    return _save_png(_grid(rows), path)


def strip_frames(num_frames: int, count: int) -> list[int]:
    return sorted({round(x) for x in np.linspace(0, num_frames - 1, min(count, num_frames))})


# ------------------------------------------------------------------------------------------- environment
def environment(device: torch.device | None) -> dict[str, Any]:
    """Versions, platform and GPU the run was made with."""
    from importlib import metadata

    from .. import __version__

    def version(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    env = {"draftattention_diffusers": __version__, "python": platform.python_version(),
           "platform": platform.platform(), "torch": torch.__version__, "cuda": torch.version.cuda,
           **{d: version(d) for d in ("diffusers", "transformers", "flash-attn-4", "torchmetrics", "matplotlib")},
           "device": str(device) if device is not None else None, "gpu": None, "cpu_threads": torch.get_num_threads()}
    if device is not None and device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = f"{props.name}, sm{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB"
    return env


# ----------------------------------------------------------------------------------------- model facts
def video_blocks(pipe) -> int:
    """Number of transformer blocks with video self-attention (block indices ``0..n-1``; the largest over
    Wan2.2's two experts)."""
    from ..integration.lifecycle import attention_processors
    from ..models import family_for

    n = 0
    for name in ("transformer", "transformer_2"):
        t = getattr(pipe, name, None)
        family = family_for(t) if t is not None else None
        if family is None:
            continue
        roles = family.roles(t, attention_processors(t))
        n = max(n, 1 + max((r.block_index for r in roles.values() if r.video_self and r.block_index is not None),
                           default=-1))
    return n


def pipeline_steps(pipe, s: RunSettings) -> int | None:
    """The denoising steps a call runs: ``s.num_inference_steps`` or the pipeline's default."""
    if s.num_inference_steps is not None:
        return s.num_inference_steps
    p = inspect.signature(type(pipe).__call__).parameters.get("num_inference_steps")
    return p.default if p is not None and isinstance(p.default, int) else None


def check_range(values: list[int] | None, limit: int | None, flag: str, what: str) -> None:
    """``CLIError`` when an index in ``values`` is not in ``0 .. limit-1`` (``limit`` None: unknown, not checked)."""
    if values is None or limit is None:
        return
    bad = sorted(v for v in values if not 0 <= v < limit)
    if bad:
        raise CLIError(f"{flag} {','.join(map(str, bad))}: this model has {limit} {what} (indices 0..{limit - 1})")


# ----------------------------------------------------------------------------------------------- observer
class _MapObserver:
    """During chosen steps only (attached and detached by the step callback, so the other steps run exactly as
    without it): draft-map / kept-tile pictures (:class:`..cli.masks.MaskSaver`) and, with ``recall``, q/k/v of the
    same layers and heads in the capture format (:func:`..quality.capture.save_capture`)."""

    def __init__(self, out_dir: Path, config: DraftAttentionConfig, layers, steps, heads, capture_dir: Path | None):
        from ..cli.masks import MaskSaver

        self.saver = MaskSaver(out_dir, config, set(layers), set(steps), set(heads))
        self.layers, self.steps, self.heads = set(layers), set(steps), sorted(heads)
        self.capture_dir = capture_dir
        self.captures: list[Path] = []
        self._seen: set[tuple] = set()

    def __call__(self, event) -> None:
        self.saver(event)
        if self.capture_dir is None or event.grid is None or event.dense or event.block_index not in self.layers \
                or event.step not in self.steps or (event.step, event.layer) in self._seen:
            return
        self._seen.add((event.step, event.layer))
        from ..quality.capture import save_capture

        sel = torch.tensor(self.heads, device=event.q.device)
        q, k, v = (x[:1].index_select(2, sel).float() for x in (event.q, event.k, event.v))
        name = f"{event.layer.replace('.', '-')}.step{event.step:03d}.safetensors"
        self.captures.append(save_capture(
            self.capture_dir / name, q, k, v, event.grid, text_len=event.text_len,
            key_lengths=None if event.key_lengths is None else event.key_lengths[:1], scale=event.scale,
            layer=event.layer, step=event.step, num_steps=event.num_steps))


def _heatmap(snaps: list[tuple[int, tuple[list[str], torch.Tensor] | None]]) -> dict[str, Any] | None:
    """Per-step, per-layer achieved sparsity from the counter snapshots taken at each step end (None: dense)."""
    snaps = [(step, snap) for step, snap in snaps if snap is not None]
    if not snaps:
        return None
    names, width = snaps[-1][1][0], snaps[-1][1][1].shape[1]
    prev = torch.zeros(len(names), width)
    steps, values = [], []
    for step, (n, c) in snaps:
        c = c.cpu()
        if n != names:  # layers appeared later (a second expert): align by name
            full = torch.zeros(len(names), width)
            for i, name in enumerate(n):
                full[names.index(name)] = c[i]
            c = full
        d = c - prev
        prev = c
        steps.append(step)
        values.append([None if d[i, 0] <= 0 else float(d[i, 2] / d[i, 0]) for i in range(len(names))])
    return {"layers": names, "steps": steps, "values": [list(x) for x in zip(*values)]}  # [layer][step]


# --------------------------------------------------------------------------------------------------- run
class Evaluation:
    """One ``draftattention evaluate`` run (see the module doc). ``log``: where progress lines go."""

    def __init__(self, base: RunSettings, prompts: list[SuitePrompt], settings: list[EvalSetting],
                 opts: EvalOptions, log: Callable[[str], None] = print) -> None:
        self.base, self.prompts, self.settings, self.opts, self.log = base, prompts, settings, opts, log
        self.out = Path(opts.out_dir)
        self.pipe = None
        self.device: torch.device | None = None
        self.warmed: set[tuple] = set()
        self.active: EvalSetting | None = None  # the setting installed on the pipe now (None: dense)
        self.computed = self.reused = 0
        self.blocks: int | None = None
        self.command: str | None = None  # the command line shown in the report

    # -------------------------------------------------------------------------------------- paths
    def dense_paths(self, p: SuitePrompt) -> tuple[Path, Path]:
        d = self.out / "runs" / "dense"
        return d / f"{p.id}.json", d / f"{p.id}.npz"

    def draft_path(self, st: EvalSetting, p: SuitePrompt) -> Path:
        return self.out / "runs" / st.id / f"{p.id}.json"

    def media(self, p: SuitePrompt) -> Path:
        return self.out / "media" / p.id

    def rel(self, path: Path) -> str:
        return path.relative_to(self.out).as_posix()

    # ---------------------------------------------------------------------------------------- pipe
    def _load(self):
        if self.pipe is None:
            s = self.base
            self.log(f"loading {s.model} ...")
            self.pipe = runner.load_pipeline(s.model, self.opts.device, self.opts.offload, inputs=s.inputs)
            runner.apply_flow_shift(self.pipe, s.flow_shift)
            self.pipe.set_progress_bar_config(disable=self.opts.no_progress)
            self.device = self.pipe._execution_device
            self.blocks = video_blocks(self.pipe)
            steps = pipeline_steps(self.pipe, s)
            check_range(self.opts.map_layers, self.blocks, "--map-layers", "blocks with video self-attention")
            check_range(self.opts.map_steps, steps, "--map-steps", "denoising steps")
            for st in self.settings:  # a stack this pipeline cannot take is refused now, not after the dense runs
                if st.stack is not None:
                    self._activate(st)
                    self._activate(None)
        return self.pipe

    def _activate(self, st: EvalSetting | None) -> None:
        """Install ``st`` (draft attention, or its fast stack) on the pipe, removing the one before; None: dense.
        A setting stays installed for all its prompts: a compiled stack then compiles once, not per prompt."""
        from .. import disable_draft_attention, disable_fast_stack, enable_draft_attention, enable_fast_stack

        if self.active is st:
            return
        if self.active is not None:
            (disable_draft_attention if self.active.stack is None else disable_fast_stack)(self.pipe)
            self.active = None
        if st is None:
            return
        if st.stack is None:
            enable_draft_attention(self.pipe, st.config)
        else:
            try:
                enable_fast_stack(self.pipe, cache=None if st.stack == "none" else st.stack, compile=st.compile,
                                  fp8=st.fp8,
                                  draft=st.config, num_inference_steps=pipeline_steps(self.pipe, self.base))
            except (ValueError, RuntimeError, ImportError) as e:
                raise CLIError(f"{st.label}: {runner.first_line(e)}") from None
        self.active = st

    def _warm(self, st: EvalSetting | None, kwargs: dict) -> None:
        """Untimed warm-up runs of the installed setting at this shape (2 latent steps; a compiled stack: two calls
        at the run's step count, as its docs ask, so that every graph is compiled before timing)."""
        key = (None if st is None else st.id, kwargs.get("num_frames"))
        if key in self.warmed or not self.opts.warmup:
            return
        self.warmed.add(key)
        compiled = st is not None and st.compile
        short = dict(kwargs, output_type="latent", **({} if compiled else {"num_inference_steps": 2}))
        for _ in range(max(self.opts.warmup, 2) if compiled else self.opts.warmup):
            self.pipe(**short, generator=torch.Generator("cpu").manual_seed(self.base.seed))

    # --------------------------------------------------------------------------------------- dense
    def dense(self, p: SuitePrompt) -> dict:
        s = prompt_settings(self.base, p, self.opts.long_frames)
        key = dense_key(s)
        jpath, npath = self.dense_paths(p)
        rec = _read_record(jpath, key)
        if rec is not None and npath.is_file():
            return rec
        pipe = self._load()
        self._activate(None)
        kwargs = runner.call_kwargs(pipe, s)
        self._warm(None, kwargs)
        frames, times = runner.run_pipeline(pipe, kwargs, s.seed)
        from ..video import to_uint8

        frames = to_uint8(frames)
        with atomic_path(npath) as tmp:
            with tmp.open("wb") as f:
                np.savez_compressed(f, frames=frames)
        rec = {"key": key, "prompt": p.id, "times": times, "frames": int(frames.shape[0]),
               "size": [int(frames.shape[1]), int(frames.shape[2])], "fps": runner.video_fps(pipe, s)}
        write_json_atomic(jpath, rec)
        return rec

    def dense_frames(self, p: SuitePrompt) -> np.ndarray:
        with np.load(self.dense_paths(p)[1]) as z:
            return z["frames"]

    # --------------------------------------------------------------------------------------- draft
    def draft(self, p: SuitePrompt, st: EvalSetting, dense_rec: dict, map_prompt: bool) -> dict:
        from .. import get_draft_processor, get_draft_stats
        from ..integration.processor import num_dense_steps
        from ..video import side_by_side, to_uint8, write_video
        from ..video_metrics import psnr_per_frame, video_metrics

        s = prompt_settings(self.base, p, self.opts.long_frames)
        s = dataclasses.replace(s, config=st.config)
        key = draft_key(s, st)
        path = self.draft_path(st, p)
        rec = _read_record(path, key)
        if rec is not None and rec.get("dense_key") == dense_rec["key"] and all(
                (self.out / m).is_file() for v in rec["media"].values() for m in (v if isinstance(v, list) else [v])):
            self.reused += 1
            return rec
        pipe = self._load()
        self._activate(st)
        kwargs = runner.call_kwargs(pipe, s)
        self._warm(st, kwargs)
        dense = self.dense_frames(p)
        num_steps = pipeline_steps(pipe, s)
        media = self.media(p)
        observer = None
        map_steps: list[int] = []
        # (no observer in compiled graphs: it would be traced into them, and attaching it mid-run recompiles)
        if map_prompt and num_steps and not st.compile:
            first_sparse = num_dense_steps(st.config.dense_steps_fraction, num_steps)
            map_steps = self.opts.map_steps or sorted({min(first_sparse, num_steps - 1), num_steps - 1})
            free = [i for i in range(self.blocks or 1) if i not in st.config.dense_layers] or [0]
            layers = self.opts.map_layers or sorted({free[0], free[len(free) // 2]})
            maps_dir = media / f"{st.id}-maps"
            shutil.rmtree(maps_dir, ignore_errors=True)  # pictures of an older, unfinished attempt
            cap_dir = self.out / "captures" / st.id / p.id if self.opts.recall else None
            if cap_dir is not None:
                shutil.rmtree(cap_dir, ignore_errors=True)
            observer = _MapObserver(maps_dir, st.config, layers, map_steps, self.opts.map_heads, cap_dir)
        snaps: list = []
        proc, stats = get_draft_processor(pipe), get_draft_stats(pipe)
        attached = []

        def attach(step: int) -> None:
            if whole_run:
                return
            want = observer is not None and step in map_steps
            if want and not attached:
                proc.add_observer(observer)
                attached.append(observer)
            elif not want and attached:
                proc.remove_observer(attached.pop())

        def on_step(step: int) -> None:
            snaps.append((step, stats.counter_snapshot()))
            attach(step + 1)

        whole_run = observer is not None and runner.step_timing_unavailable(pipe) is not None
        if whole_run:  # no step callback to switch it per step: on for the whole call (its time includes it)
            proc.add_observer(observer)
            attached.append(observer)
        attach(0)
        try:
            frames, times = runner.run_pipeline(pipe, kwargs, s.seed, on_step=on_step)
        finally:
            if attached:
                proc.remove_observer(attached.pop())
        summary = stats.summary()
        draft = to_uint8(frames)
        metrics = video_metrics(dense, draft, with_lpips=self.opts.with_lpips, device=self.device)
        per_frame = psnr_per_frame(dense, draft)
        order = sorted(range(len(per_frame)), key=lambda i: per_frame[i])
        worst = [i for i in order[:3] if math.isfinite(per_frame[i])]
        rec = {"key": key, "dense_key": dense_rec["key"], "prompt": p.id, "setting": st.id, "times": times,
               "speedup": None if times["denoise"] is None or dense_rec["times"]["denoise"] is None
               else dense_rec["times"]["denoise"] / times["denoise"],
               "speedup_total": dense_rec["times"]["total"] / times["total"], "metrics": metrics,
               "psnr_per_frame": per_frame, "worst_frames": worst, "draft_attention": summary,
               "sparsity_note": sparsity_gap_note(st.config.sparsity, summary["mean_sparsity"]),
               "heatmap": _heatmap(snaps), "media": {}}
        m = rec["media"]
        m["strip"] = self.rel(frame_strip(dense, draft, strip_frames(len(draft), self.opts.strip_frames),
                                          media / f"{st.id}-strip.png"))
        if worst:
            m["worst"] = self.rel(frame_strip(dense, draft, sorted(worst), media / f"{st.id}-worst.png"))
        if self.opts.videos:
            label = f"draft {st.label}"
            m["video"] = self.rel(write_video(side_by_side([dense, draft], labels=["dense", label]),
                                              media / f"{st.id}.mp4", fps=dense_rec["fps"]))
        if observer is not None:
            m["maps"] = [self.rel(x) for x in observer.saver.written]
            rec["map_steps"], rec["map_layers"] = map_steps, sorted(observer.layers)
            if observer.captures:
                rec["recall"] = self._recall(observer.captures, st.config)
        write_json_atomic(path, rec)
        self.computed += 1
        return rec

    def _recall(self, paths: list[Path], config: DraftAttentionConfig) -> list[dict]:
        from ..quality.analyze import analyze

        rows = analyze(paths, sparsity=config.sparsity, selections=(config.selection,), poolings=(config.pooling,),
                       region_sizes=(config.region_size,), oracle=True, error=True, device=self.device or "cpu")
        for path in paths:
            path.unlink(missing_ok=True)
        return [{k: v for k, v in r.items() if k != "file"} for r in rows if r["method"] != "oracle"]

    # ----------------------------------------------------------------------------------------- all
    def run(self) -> dict:
        """Run (or reuse) every prompt x setting, writing results.json after each; returns the results."""
        self.out.mkdir(parents=True, exist_ok=True)
        results: dict[str, Any] = {"dense": {}, "results": {st.id: {} for st in self.settings}}
        n = len(self.prompts) * len(self.settings)
        done = 0
        started = time.perf_counter()
        try:
            for p in self.prompts:  # every dense reference first, then each setting over all prompts
                results["dense"][p.id] = self.dense(p)
            for st in self.settings:
                for i, p in enumerate(self.prompts):
                    rec = self.draft(p, st, results["dense"][p.id], map_prompt=i < self.opts.map_prompts)
                    results["results"][st.id][p.id] = rec
                    done += 1
                    self._progress(done, n, p, st, rec)
                    self.write(results)
        finally:
            if self.pipe is not None:
                self._activate(None)
        self.log(f"{self.computed} computed, {self.reused} reused from an earlier run "
                 f"({time.perf_counter() - started:.1f} s)")
        return self.write(results)

    def _progress(self, done: int, n: int, p: SuitePrompt, st: EvalSetting, rec: dict) -> None:
        m = rec["metrics"]
        speed = f"{rec['speedup']:.2f}x" if rec["speedup"] is not None else f"{rec['speedup_total']:.2f}x whole call"
        self.log(f"[{done}/{n}] {p.id} | {st.label}: speedup {speed}, PSNR {m['psnr']:.2f} dB, "
                 f"SSIM {m['ssim']:.4f}" + ("" if m["lpips"] is None else f", LPIPS {m['lpips']:.4f}"))
        if rec["sparsity_note"]:
            runner.warn(f"{st.label}: {rec['sparsity_note']}")

    def write(self, partial: dict) -> dict:
        """results.json (and results.csv) from what is finished so far."""
        data = {"format": FORMAT, "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "environment": environment(self.device or runner.pick_device(self.opts.device)),
                "model": self.base.model, "command": self.command,
                "run": {k: v for k, v in _run_fields(self.base).items() if k != "prompt"}
                | {"long_frames": self.opts.long_frames, "warmup": self.opts.warmup,
                   "fps": next((d["fps"] for d in partial["dense"].values()), None)},
                "settings": [{"id": st.id, "label": st.label, "config": dataclasses.asdict(st.config),
                              "stack": st.stack, "compile": st.compile, "fp8": st.fp8} for st in self.settings],
                "prompts": [{"id": p.id, "category": p.category, "category_title": category_title(p.category),
                             "text": p.text, "long": p.long} for p in self.prompts],
                "dense": partial["dense"], "results": partial["results"]}
        data["summary"] = summarize(data)
        data["lpips_note"] = next((r["metrics"]["lpips_skipped"] for rs in partial["results"].values()
                                   for r in rs.values() if r["metrics"]["lpips_skipped"]), None)
        write_json_atomic(self.out / "results.json", data)
        write_text_atomic(self.out / "results.csv", to_csv(data))
        return data


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return float(sum(xs) / len(xs))


def summarize(data: dict) -> dict[str, dict[str, Any]]:
    """Per setting: means over its finished prompts (PSNR over finite values; ``identical`` counts the prompts
    whose draft video equals the dense one)."""
    out = {}
    for st in data["settings"]:
        recs = list(data["results"][st["id"]].values())
        psnrs = [r["metrics"]["psnr"] for r in recs]
        out[st["id"]] = {
            "prompts": len(recs),
            "speedup": _mean(r["speedup"] for r in recs) if all(r["speedup"] is not None for r in recs) else None,
            "speedup_total": _mean(r["speedup_total"] for r in recs),
            "psnr": _mean(x for x in psnrs if math.isfinite(x)),
            "identical": sum(1 for x in psnrs if not math.isfinite(x)),
            "ssim": _mean(r["metrics"]["ssim"] for r in recs),
            "lpips": _mean(r["metrics"]["lpips"] for r in recs),
            "achieved_sparsity": _mean(r["draft_attention"]["mean_sparsity"] for r in recs),
        }
    return out


CSV_COLUMNS = ["prompt", "category", "setting", "sparsity", "selection", "seed", "dense_s", "draft_s",
               "dense_denoise_s", "draft_denoise_s", "speedup", "speedup_total", "psnr", "ssim", "lpips",
               "achieved_sparsity"]
"""results.csv: one row per prompt x setting; ``speedup`` (of the denoising) is empty where the pipeline's
denoising cannot be timed (no step callback): ``speedup_total`` (whole calls) is what there is."""


def to_csv(data: dict) -> str:
    import csv
    import io

    f = io.StringIO()
    w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
    w.writeheader()
    prompts = {p["id"]: p for p in data["prompts"]}
    for st in data["settings"]:
        for pid, r in data["results"][st["id"]].items():
            w.writerow({"prompt": prompts[pid]["text"], "category": prompts[pid]["category"], "setting": st["label"],
                        "sparsity": st["config"]["sparsity"], "selection": st["config"]["selection"],
                        "seed": data["run"]["seed"], "dense_s": data["dense"][pid]["times"]["total"],
                        "draft_s": r["times"]["total"], "dense_denoise_s": data["dense"][pid]["times"]["denoise"],
                        "draft_denoise_s": r["times"]["denoise"],
                        "speedup": r["speedup"], "speedup_total": r["speedup_total"], "psnr": r["metrics"]["psnr"],
                        "ssim": r["metrics"]["ssim"], "lpips": r["metrics"]["lpips"],
                        "achieved_sparsity": r["draft_attention"]["mean_sparsity"]})
    return f.getvalue()


__all__ = ["EvalSetting", "EvalOptions", "Evaluation", "build_settings", "summarize", "environment", "video_blocks",
           "check_range", "sparsity_gap_note", "default_long_frames", "dense_key", "draft_key", "FORMAT"]

"""The HTML report of ``draftattention evaluate``: one self-contained file (no script, font or style from the
network) next to its ``media/`` folder, made from ``results.json`` alone (so it can be rebuilt at any time:
:func:`write_report`).

Every number shown that comes from the results carries ``data-json="<path>"`` (slash-separated keys into
results.json) and ``data-decimals``: the browser test reads them back and compares. A small inline script marks
any image or video the browser could not load (red outline and a line at the top of the page) and records the
outcome in ``<body data-media-check=...>``.

Plots are drawn with matplotlib (Agg backend, PNG files under ``media/plots/``).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_path, write_text_atomic

PLOTS = "media/plots"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("the evaluation report draws its plots with matplotlib: "
                           "pip install \"draftattention-diffusers[eval]\" (or pip install matplotlib)") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def report_unavailable() -> str | None:
    """None when the report can be drawn here, else why not (with the install line)."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return ("the evaluation report draws its plots with matplotlib, which is not installed: "
                "pip install \"draftattention-diffusers[eval]\" (or pip install matplotlib)")
    return None


def _save(fig, out: Path, name: str) -> str:
    path = out / PLOTS / name
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return f"{PLOTS}/{name}"


# ------------------------------------------------------------------------------------------------- plots
def plot_summary(data: dict, out: Path) -> str:
    """Per setting: speedup, PSNR, SSIM (and LPIPS when measured), one dot per prompt, the mean as a bar."""
    plt = _pyplot()
    settings = data["settings"]
    metrics = [("speedup", "speedup (x, denoising)"), ("psnr", "PSNR (dB, higher is better)"),
               ("ssim", "SSIM (higher is better)")]
    if data["summary"] and any(v["lpips"] is not None for v in data["summary"].values()):
        metrics.append(("lpips", "LPIPS (lower is better)"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    labels = [st["label"] for st in settings]
    for ax, (key, title) in zip(axes[0], metrics):
        for i, st in enumerate(settings):
            recs = list(data["results"][st["id"]].values())
            if key == "speedup":
                vals = [r["speedup"] if r["speedup"] is not None else r["speedup_total"] for r in recs]
            else:
                vals = [r["metrics"][key] for r in recs]
            vals = [v for v in vals if v is not None and math.isfinite(v)]
            if vals:
                ax.bar(i, float(np.mean(vals)), color="#9ecae1", width=0.6)
                ax.scatter(np.full(len(vals), i) + np.linspace(-0.15, 0.15, len(vals)), vals, s=14,
                           color="#08519c", zorder=3)
        if key == "speedup":
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    fig.tight_layout()
    return _save(fig, out, "summary.png")


def plot_categories(data: dict, out: Path) -> str | None:
    """Mean PSNR per prompt category and setting (grouped bars): which kind of prompt suffers most."""
    plt = _pyplot()
    cats = list(dict.fromkeys(p["category"] for p in data["prompts"]))
    titles = {p["category"]: p["category_title"] for p in data["prompts"]}
    if len(cats) < 2:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(cats) * max(1, len(data["settings"])) / 2), 3.4))
    width = 0.8 / max(1, len(data["settings"]))
    for j, st in enumerate(data["settings"]):
        means = []
        for c in cats:
            vals = [r["metrics"]["psnr"] for pid, r in data["results"][st["id"]].items()
                    if next(p for p in data["prompts"] if p["id"] == pid)["category"] == c]
            vals = [v for v in vals if math.isfinite(v)]
            means.append(float(np.mean(vals)) if vals else np.nan)
        ax.bar(np.arange(len(cats)) + (j - (len(data["settings"]) - 1) / 2) * width, means, width, label=st["label"])
    ax.set_xticks(range(len(cats)), [titles[c] for c in cats], fontsize=8)
    ax.set_ylabel("mean PSNR vs dense (dB)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out, "categories.png")


def plot_frames(data: dict, pid: str, out: Path) -> str | None:
    """PSNR of every frame against the dense video, one line per setting; the worst frames marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 2.8))
    drawn = False
    for st in data["settings"]:
        r = data["results"][st["id"]].get(pid)
        if r is None:
            continue
        y = np.array([v if math.isfinite(v) else np.nan for v in r["psnr_per_frame"]])
        line, = ax.plot(np.arange(len(y)), y, marker=".", label=st["label"])
        if r["worst_frames"]:
            ax.scatter(r["worst_frames"], y[r["worst_frames"]], s=60, facecolors="none", edgecolors=line.get_color())
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("frame")
    ax.set_ylabel("PSNR vs dense (dB)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out, f"frames-{pid}.png")


def plot_heatmap(data: dict, pid: str, out: Path) -> str | None:
    """Achieved sparsity per layer (rows) and denoising step (columns), one panel per setting; dense calls grey."""
    plt = _pyplot()
    maps = [(st, data["results"][st["id"]][pid]["heatmap"]) for st in data["settings"]
            if pid in data["results"][st["id"]] and data["results"][st["id"]][pid].get("heatmap")]
    if not maps:
        return None
    n = len(maps)
    rows = len(maps[0][1]["layers"])
    fig, axes = plt.subplots(1, n, figsize=(max(3.5, 0.35 * len(maps[0][1]["steps"]) + 2.5) * n,
                                            max(2.2, 0.22 * rows + 1.2)), squeeze=False)
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d9d9d9")
    im = None
    for ax, (st, h) in zip(axes[0], maps):
        v = np.array([[np.nan if x is None else x for x in row] for row in h["values"]], dtype=float)
        im = ax.imshow(v, aspect="auto", cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"{st['label']} (grey: dense)", fontsize=9)
        ax.set_xlabel("denoising step")
        ax.set_xticks(range(len(h["steps"])), h["steps"], fontsize=7)
        ax.set_yticks(range(len(h["layers"])), h["layers"] if len(h["layers"]) <= 24 else
                      [x if i % max(1, len(h["layers"]) // 12) == 0 else "" for i, x in enumerate(h["layers"])],
                      fontsize=7)
    fig.colorbar(im, ax=axes[0].tolist(), label="achieved sparsity", shrink=0.9)
    return _save(fig, out, f"heatmap-{pid}.png")


# -------------------------------------------------------------------------------------------------- html
def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(value: float | None, path: str, decimals: int, unit: str = "") -> str:
    """A number from results.json with its path, as the report shows it (``-`` for None, ``inf`` for infinity)."""
    if value is None:
        return f'<span data-json="{_e(path)}" data-null="1">-</span>'
    text = "inf" if math.isinf(value) else f"{value:.{decimals}f}"
    return f'<span class="num" data-json="{_e(path)}" data-decimals="{decimals}">{text}</span>{unit}'


def _img(src: str, alt: str, cls: str = "") -> str:
    return f'<a href="{_e(src)}"><img src="{_e(src)}" alt="{_e(alt)}" class="{cls}" loading="eager"></a>'


def _video(src: str) -> str:
    return (f'<video src="{_e(src)}" controls loop muted playsinline preload="metadata"></video>'
            f'<div class="small"><a href="{_e(src)}">{_e(Path(src).name)}</a> (left: dense, right: draft)</div>')


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1280px;color:#222;
padding:0 16px;line-height:1.4}
h1{font-size:1.6em;margin-bottom:0}h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:2em}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;font-size:.9em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}img{max-width:100%;border:1px solid #eee}
video{max-width:100%;background:#000}.small{font-size:.8em;color:#666}.note{background:#fff8e1;border-left:4px solid
#f5b400;padding:6px 10px;margin:8px 0}.bad{outline:3px solid #d00}.maps img{max-width:48%;margin:2px}
details{margin:6px 0}summary{cursor:pointer;font-weight:600}code{background:#f3f3f3;padding:1px 4px}
#media-error{display:none;background:#fde0e0;border-left:4px solid #d00;padding:6px 10px}
"""

_CHECK = """
(function(){
  function done(results){
    var bad = results.filter(function(r){return !r.ok;});
    document.body.setAttribute('data-media-check', JSON.stringify({total: results.length, failed: bad}));
    if (bad.length){var e=document.getElementById('media-error'); e.style.display='block';
      e.textContent = bad.length + ' image(s)/video(s) could not be loaded by this browser: ' +
        bad.map(function(r){return r.src;}).join(', ');}
  }
  function check(){
    var items = [];
    document.querySelectorAll('img').forEach(function(el){
      items.push(new Promise(function(res){
        function fin(){var ok = el.complete && el.naturalWidth > 0; if(!ok) el.classList.add('bad');
          res({kind:'img', src: el.getAttribute('src'), ok: ok});}
        if (el.complete) fin(); else {el.addEventListener('load', fin); el.addEventListener('error', fin);}
      }));
    });
    document.querySelectorAll('video').forEach(function(el){
      items.push(new Promise(function(res){
        function fin(ok){if(!ok) el.classList.add('bad');
          res({kind:'video', src: el.getAttribute('src'), ok: ok && el.videoWidth > 0});}
        if (el.readyState >= 1) fin(true);
        else {el.addEventListener('loadedmetadata', function(){fin(true);});
              el.addEventListener('error', function(){fin(false);}); el.load();}
      }));
    });
    Promise.all(items).then(done);
  }
  if (document.readyState === 'complete') check(); else window.addEventListener('load', check);
})();
"""


def render_html(data: dict, plots: dict[str, Any]) -> str:
    """The report's HTML for ``data`` (results.json) and the plot files of :func:`write_report`."""
    S = data["summary"]
    settings = data["settings"]
    env, run = data["environment"], data["run"]
    prompts = {p["id"]: p for p in data["prompts"]}
    parts: list[str] = []
    add = parts.append
    add("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>draft attention evaluation: {_e(data['model'])}</title><style>{_STYLE}</style></head><body>")
    add("<h1>Draft attention: quality and speed against dense attention</h1>")
    add(f"<p class='small'>model <b>{_e(data['model'])}</b> · made {_e(data['created'])} · "
        f"{sum(v['prompts'] for v in S.values())} prompt x setting results</p>")
    add("<div id='media-error'></div>")
    notes = []
    if env.get("gpu") is None:
        notes.append("Made on a CPU: draft attention ran the <code>reference</code> backend, which exists for "
                     "correctness and is slower than dense attention, so the speedups below say nothing about GPU "
                     "speed.")
    if str(data["model"]).startswith("tiny-"):
        notes.append("A tiny random-weight model: its videos are noise; this report shows how the evaluation looks, "
                     "not the quality of a real model.")
    if data.get("lpips_note"):
        notes.append(_e(data["lpips_note"]) + ". The other metrics are shown.")
    for st in settings:
        gaps = {r["sparsity_note"] for r in data["results"][st["id"]].values() if r.get("sparsity_note")}
        for g in sorted(gaps):
            notes.append(f"{_e(st['label'])}: {_e(g)}.")
    for n in notes:
        add(f"<div class='note'>{n}</div>")

    # ---- summary
    add("<h2>Summary per setting</h2>")
    add("<p>Mean over the prompts against the dense video of the same prompt and seed. Speedup: dense denoising time "
        "/ draft denoising time (the VAE decode is the same in both). PSNR: the mean over the prompts whose videos "
        "differ; <i>identical</i> counts prompts whose draft video equals the dense one.</p>")
    add("<table><tr><th class='l'>setting</th><th>prompts</th><th>speedup</th><th>PSNR (dB)</th><th>SSIM</th>"
        "<th>LPIPS</th><th>achieved sparsity</th><th>identical</th></tr>")
    for st in settings:
        v, sid = S[st["id"]], st["id"]
        speed = (_num(v["speedup"], f"summary/{sid}/speedup", 2, "x") if v["speedup"] is not None else
                 _num(v["speedup_total"], f"summary/{sid}/speedup_total", 2, "x (whole call)"))
        add(f"<tr><td class='l'>{_e(st['label'])}</td><td>{v['prompts']}</td><td>{speed}</td>"
            f"<td>{_num(v['psnr'], f'summary/{sid}/psnr', 2)}</td><td>{_num(v['ssim'], f'summary/{sid}/ssim', 4)}</td>"
            f"<td>{_num(v['lpips'], f'summary/{sid}/lpips', 4)}</td>"
            f"<td>{_num(v['achieved_sparsity'], f'summary/{sid}/achieved_sparsity', 3)}</td>"
            f"<td>{v['identical']}</td></tr>")
    add("</table>")
    if plots.get("summary"):
        add(_img(plots["summary"], "speedup, PSNR, SSIM per setting"))
    if plots.get("categories"):
        add("<h3>By prompt category</h3>" + _img(plots["categories"], "mean PSNR per category"))

    # ---- per prompt table
    add("<h2>Per prompt</h2><table><tr><th class='l'>prompt</th><th class='l'>category</th><th class='l'>setting"
        "</th><th>speedup</th><th>PSNR (dB)</th><th>SSIM</th><th>LPIPS</th><th>achieved sparsity</th></tr>")
    for pid, p in prompts.items():
        for st in settings:
            r = data["results"][st["id"]].get(pid)
            if r is None:
                continue
            base = f"results/{st['id']}/{pid}"
            speed = (_num(r["speedup"], f"{base}/speedup", 2, "x") if r["speedup"] is not None
                     else _num(r["speedup_total"], f"{base}/speedup_total", 2, "x (whole call)"))
            add(f"<tr><td class='l'><a href='#{_e(pid)}'>{_e(pid)}</a></td><td class='l'>{_e(p['category_title'])}"
                f"</td><td class='l'>{_e(st['label'])}</td><td>{speed}</td>"
                f"<td>{_num(r['metrics']['psnr'], f'{base}/metrics/psnr', 2)}</td>"
                f"<td>{_num(r['metrics']['ssim'], f'{base}/metrics/ssim', 4)}</td>"
                f"<td>{_num(r['metrics']['lpips'], f'{base}/metrics/lpips', 4)}</td>"
                f"<td>{_num(r['draft_attention']['mean_sparsity'], f'{base}/draft_attention/mean_sparsity', 3)}"
                "</td></tr>")
    add("</table>")

    # ---- each prompt
    for pid, p in prompts.items():
        recs = [(st, data["results"][st["id"]][pid]) for st in settings if pid in data["results"][st["id"]]]
        if not recs:
            continue
        d = data["dense"][pid]
        add(f"<h2 id='{_e(pid)}'>{_e(pid)} · {_e(p['category_title'])}</h2><p>“{_e(p['text'])}”</p>")
        add(f"<p class='small'>dense: {_num(d['times']['total'], f'dense/{pid}/times/total', 2)} s whole call, "
            f"{d['frames']} frames of {d['size'][0]}x{d['size'][1]}</p>")
        if plots["frames"].get(pid):
            add("<h3>Where draft attention differs most</h3><p class='small'>PSNR of each frame against the dense "
                "frame; circles: the three worst frames, shown below each setting.</p>")
            add(_img(plots["frames"][pid], f"per-frame PSNR of {pid}"))
        for st, r in recs:
            m = r["media"]
            base = f"results/{st['id']}/{pid}"
            backends = ", ".join(r["draft_attention"].get("backends") or {})
            add(f"<h3>{_e(st['label'])}</h3><p>PSNR {_num(r['metrics']['psnr'], f'{base}/metrics/psnr', 2)} dB, "
                f"SSIM {_num(r['metrics']['ssim'], f'{base}/metrics/ssim', 4)}, achieved sparsity "
                f"{_num(r['draft_attention']['mean_sparsity'], f'{base}/draft_attention/mean_sparsity', 3)}"
                f"{'; sparse backend ' + _e(backends) if backends else ''}</p>")
            if m.get("video"):
                add(_video(m["video"]))
            add("<p class='small'>Frames: dense (top), draft (middle), their difference x4 (bottom).</p>")
            add(_img(m["strip"], f"frame strip {pid} {st['label']}"))
            if m.get("worst"):
                add(f"<details><summary>worst frames ({', '.join(map(str, r['worst_frames']))})</summary>"
                    f"{_img(m['worst'], 'worst frames')}</details>")
            if m.get("maps"):
                add(f"<details open><summary>draft maps and kept tiles (steps {r['map_steps']}, blocks "
                    f"{r['map_layers']})</summary><p class='small'>Each picture: left, the draft map (rows: query "
                    "regions, columns: key regions, in tile order: frame by frame, region by region; colour: log10 "
                    "of the score, 3 decades); right, the tiles computed (white), skipped (black) and text tiles "
                    "(blue-grey, always computed, HunyuanVideo's text band at the right and bottom).</p>"
                    f"<div class='maps'>{''.join(_img(x, Path(x).stem) for x in m['maps'])}</div></details>")
            if r.get("recall"):
                add("<p class='small'>Recall of the kept tiles: the share of the exact softmax mass of the captured "
                    "q/k (batch item 0, chosen heads) that falls in the tiles draft attention computes, next to the "
                    "best possible mask with the same tiles per head (the oracle).</p><table><tr><th class='l'>layer"
                    "</th><th>step</th><th>recall</th><th>oracle recall</th><th>vs oracle</th><th>output error</th>"
                    "</tr>")
                for i, row in enumerate(r["recall"]):
                    rb = f"{base}/recall/{i}"
                    add(f"<tr><td class='l'>{_e(row['layer'])}</td><td>{row['step']}</td>"
                        f"<td>{_num(row['recall'], f'{rb}/recall', 3)}</td>"
                        f"<td>{_num(row['oracle_recall'], f'{rb}/oracle_recall', 3)}</td>"
                        f"<td>{_num(row['vs_oracle'], f'{rb}/vs_oracle', 3)}</td>"
                        f"<td>{_num(row['output_error'], f'{rb}/output_error', 3)}</td></tr>")
                add("</table>")
        if plots["heatmaps"].get(pid):
            add("<h3>Achieved sparsity per layer and step</h3>" + _img(plots["heatmaps"][pid], f"heatmap {pid}"))

    # ---- how it was made
    add("<h2>How this report was made</h2>")
    if data.get("command"):
        add(f"<p><code>{_e(data['command'])}</code></p>")
    add("<table>" + "".join(f"<tr><th class='l'>{_e(k)}</th><td class='l'>{_e(v)}</td></tr>"
                            for k, v in {**env, **{f"run: {k}": v for k, v in run.items()}}.items()) + "</table>")
    add("<h3>Settings</h3><table><tr><th class='l'>setting</th><th class='l'>draft-attention config</th>"
        "<th class='l'>fast stack</th></tr>")
    for st in settings:
        cfg = ", ".join(f"{k}={v}" for k, v in st["config"].items())
        stack = ("-" if st.get("stack") is None else
                 f"enable_fast_stack(cache={st['stack']!r}, compile={st.get('compile')}"
                 + (", fp8=True)" if st.get("fp8") else ")"))
        add(f"<tr><td class='l'>{_e(st['label'])}</td><td class='l'><code>{_e(cfg)}</code></td>"
            f"<td class='l'><code>{_e(stack)}</code></td></tr>")
    add("</table><p class='small'>Reference: the dense video of each prompt (same seed). Metrics on the 8-bit frames "
        "that were saved. Data: <a href='results.json'>results.json</a>, <a href='results.csv'>results.csv</a>.</p>")
    add(f"<script>{_CHECK}</script></body></html>")
    return "\n".join(parts)


def write_report(out_dir: str | Path, data: dict | None = None) -> Path:
    """Draw the plots and write ``out_dir/report.html`` from ``data`` (default: ``out_dir/results.json``)."""
    out = Path(out_dir)
    if data is None:
        data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    plots: dict[str, Any] = {"frames": {}, "heatmaps": {}}
    if any(data["results"][st["id"]] for st in data["settings"]):
        plots["summary"] = plot_summary(data, out)
        plots["categories"] = plot_categories(data, out)
    for p in data["prompts"]:
        plots["frames"][p["id"]] = plot_frames(data, p["id"], out)
        plots["heatmaps"][p["id"]] = plot_heatmap(data, p["id"], out)
    return write_text_atomic(out / "report.html", render_html(data, plots))


__all__ = ["write_report", "render_html", "report_unavailable", "plot_summary", "plot_frames", "plot_heatmap",
           "plot_categories"]

"""``draftattention evaluate``: the run, its records and resume, and the HTML report opened in a real browser
(headless Chromium, skipped with the reason where none is installed)."""

from __future__ import annotations

import html.parser
import json
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_utils import one_line_error, run
from draftattention_diffusers import runner
from draftattention_diffusers.evaluate.suite import CATEGORIES, builtin_suite

pytest.importorskip("matplotlib")

PROMPTS = "# a fast prompt and a long one\n[fast-motion] A cheetah sprints across the savanna.\n" \
          "[long] A paper boat floats down a stream.\n"
TINY = ["--model", "tiny-wan", "--height", "128", "--width", "512", "--frames", "5", "--steps", "3",
        "--warmup", "0", "--no-progress"]


def _evaluate(tmp: Path, out: Path, *extra) -> int:
    from draftattention_diffusers import cli

    prompts = tmp / "prompts.txt"
    prompts.write_text(PROMPTS)
    return cli.main(["evaluate", *TINY, "--prompts", str(prompts), "--out", str(out), *map(str, extra)])


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One tiny run shared by the tests below: 2 prompts (one long) x sparsities 0.5 and 0.9, with recall."""
    tmp = tmp_path_factory.mktemp("evaluate")
    out = tmp / "report"
    assert _evaluate(tmp, out, "--sparsities", "0.5,0.9", "--recall") == 0
    return tmp, out, json.loads((out / "results.json").read_text())


def _records(data):
    return [(st, pid, r) for st in data["settings"] for pid, r in data["results"][st["id"]].items()]


def test_run_writes_every_record_with_consistent_numbers(evaluated):
    _, out, data = evaluated
    assert [p["category"] for p in data["prompts"]] == ["fast-motion", "long"]
    assert [st["config"]["sparsity"] for st in data["settings"]] == [0.5, 0.9]
    frames = {p["id"]: data["dense"][p["id"]]["frames"] for p in data["prompts"]}
    assert frames["p02"] == 2 * (frames["p01"] - 1) + 1  # long prompts: twice the frames, 4k+1
    for st, pid, r in _records(data):
        assert len(r["psnr_per_frame"]) == frames[pid] and r["metrics"]["psnr"] > 0 and 0 < r["metrics"]["ssim"] <= 1
        assert r["worst_frames"] == sorted(range(frames[pid]), key=lambda i: r["psnr_per_frame"][i])[:3]
        for key in ("strip", "worst", "video"):
            assert (out / r["media"][key]).stat().st_size > 0
        # the heatmap's per-step values average to each layer's achieved sparsity; the dense warm-up step is None
        h = r["heatmap"]
        assert h["steps"] == list(range(3))
        for layer, row in zip(h["layers"], h["values"]):
            assert row[0] is None and all(v is not None for v in row[1:])
            assert sum(row[1:]) / len(row[1:]) == pytest.approx(r["draft_attention"]["layer_sparsity"][layer])
        assert r["draft_attention"]["backends"] == {"reference": r["draft_attention"]["sparse_calls"]}
    # draft maps and recall: the first prompt only (--map-prompts 1), at the first sparse step and the last
    for st, pid, r in _records(data):
        if pid == "p02":
            assert "maps" not in r["media"] and "recall" not in r
            continue
        assert r["map_steps"] == [1, 2] and r["map_layers"] == [0, 1]
        assert len(r["media"]["maps"]) == 4 and all((out / m).is_file() for m in r["media"]["maps"])
        assert {(row["layer"], row["step"]) for row in r["recall"]} == {
            (f"transformer.blocks.{b}.attn1", s) for b in (0, 1) for s in (1, 2)}
        for row in r["recall"]:
            assert 0 < row["recall"] <= row["oracle_recall"] + 1e-6 and row["sparsity"] == st["config"]["sparsity"]
    assert not list(out.rglob("*.safetensors"))  # captures are removed once analysed
    # the summary is the mean of the records
    for st in data["settings"]:
        recs = list(data["results"][st["id"]].values())
        s = data["summary"][st["id"]]
        assert s["ssim"] == pytest.approx(sum(r["metrics"]["ssim"] for r in recs) / len(recs))
        assert s["speedup"] == pytest.approx(sum(r["speedup"] for r in recs) / len(recs))
    rows = (out / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + len(_records(data))
    assert not [p for p in out.rglob("*") if ".partial" in p.name]


def test_a_finished_run_is_reused_without_loading_the_model(evaluated, tmp_path, capsys, never_load):
    tmp, out, data = evaluated
    copy = tmp_path / "again"
    shutil.copytree(out, copy)
    before = {p: p.read_bytes() for p in (copy / "runs").rglob("*.json")}
    rc, stdout, err = run(capsys, "evaluate", *TINY, "--prompts", tmp / "prompts.txt", "--out", copy,
                          "--sparsities", "0.5,0.9", "--recall")
    assert rc == 0, err
    assert "0 computed, 4 reused" in stdout and not never_load
    assert {p: p.read_bytes() for p in (copy / "runs").rglob("*.json")} == before
    assert json.loads((copy / "results.json").read_text())["summary"] == data["summary"]


def test_an_interrupted_run_keeps_finished_records_and_resumes(tmp_path, capsys, monkeypatch):
    real = runner.run_pipeline
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # dense, sparsity 0.5, then Ctrl-C during sparsity 0.9
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_pipeline", interrupted)
    out = tmp_path / "r"
    prompts = tmp_path / "p.txt"
    prompts.write_text("A cat.\n")
    argv = ["evaluate", *TINY, "--steps", "2", "--prompts", prompts, "--out", out, "--sparsities", "0.5,0.9",
            "--no-videos", "--map-prompts", "0"]
    rc, _, err = run(capsys, *argv)
    assert rc == 130 and "interrupted" in err
    assert sorted(p.relative_to(out).as_posix() for p in (out / "runs").rglob("*") if p.is_file()) == [
        "runs/dense/p01.json", "runs/dense/p01.npz", "runs/s0.5-topk/p01.json"]
    assert not [p for p in out.rglob("*") if ".partial" in p.name]
    partial = json.loads((out / "results.json").read_text())
    assert list(partial["results"]["s0.5-topk"]) == ["p01"] and partial["results"]["s0.9-topk"] == {}
    calls.clear()
    rc, stdout, err = run(capsys, *argv)
    assert rc == 0, err
    assert len(calls) == 1 and "1 computed, 1 reused" in stdout  # only sparsity 0.9 ran; the dense was kept
    # a changed setting is computed again, an unchanged one is not
    rc, stdout, _ = run(capsys, *argv[:-5], "--sparsities", "0.5,0.75", "--no-videos", "--map-prompts", "0")
    assert rc == 0 and "1 computed, 1 reused" in stdout


# ---------------------------------------------------------------------------------------------- browser
def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _chromium(*args, timeout=120) -> subprocess.CompletedProcess:
    browser = _browser()
    if browser is None:
        pytest.skip("no headless browser installed (apt-get install chromium; .ci/run installs it)")
    flags = ["--headless", "--disable-gpu", "--no-first-run", "--hide-scrollbars", "--mute-audio",
             "--disable-dev-shm-usage", "--virtual-time-budget=15000"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox (CI containers)
    with tempfile.TemporaryDirectory(prefix="draftattention-chromium-") as profile:
        p = subprocess.run([browser, *flags, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                           timeout=timeout)
    assert p.returncode == 0, p.stderr[-2000:]
    return p


class _Page(html.parser.HTMLParser):
    """Media tags, the numbers with data-json, and the body's data-media-check of a dumped DOM."""

    def __init__(self):
        super().__init__()
        self.media, self.numbers, self.check, self._num = [], [], None, None
        self.text = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("img", "video"):
            self.media.append((tag, a.get("src")))
        if tag == "body" and "data-media-check" in a:
            self.check = json.loads(a["data-media-check"])
        if "data-json" in a:
            self._num = [a["data-json"], a.get("data-decimals"), ""]

    def handle_data(self, data):
        self.text.append(data)
        if self._num is not None:
            self._num[2] += data

    def handle_endtag(self, tag):
        if self._num is not None and tag == "span":
            self.numbers.append(tuple(self._num))
            self._num = None


def _dump(report: Path) -> _Page:
    page = _Page()
    page.feed(_chromium("--dump-dom", report.resolve().as_uri()).stdout)
    assert page.check is not None, "the report's media check did not run in the browser"
    return page


def _lookup(data, path: str):
    for key in path.split("/"):
        data = data[int(key)] if isinstance(data, list) else data[key]
    return data


def test_report_in_a_real_browser(evaluated, tmp_path_factory):
    _, out, data = evaluated
    page = _dump(out / "report.html")
    # every image and video loaded (the page's own check, run by the browser), and there are all of them
    assert page.check["failed"] == [] and page.check["total"] == len(page.media)
    srcs = [src for _, src in page.media]
    for _, pid, r in _records(data):
        assert {r["media"]["strip"], r["media"]["video"], r["media"]["worst"], *r["media"].get("maps", [])} <= set(srcs)
    assert sum(tag == "video" for tag, _ in page.media) == len(_records(data))
    assert {"media/plots/summary.png", "media/plots/categories.png", "media/plots/heatmap-p01.png",
            "media/plots/frames-p01.png"} <= set(srcs)
    # every number shown is the JSON's, as rounded for display
    checked = set()
    for path, decimals, text in page.numbers:
        value = _lookup(data, path)
        if value is None:
            assert text == "-", path
        elif math.isinf(value):
            assert text == "inf", path
        else:
            assert float(text) == pytest.approx(value, abs=0.51 * 10 ** -int(decimals)), (path, text, value)
        checked.add(path)
    for st in data["settings"]:
        assert {f"summary/{st['id']}/{k}" for k in ("speedup", "psnr", "ssim", "lpips", "achieved_sparsity")} <= checked
        for pid in data["results"][st["id"]]:
            assert f"results/{st['id']}/{pid}/metrics/psnr" in checked
    words = " ".join(" ".join(page.text).split())
    if data["lpips_note"]:  # no LPIPS weights here: said so, the rest shown
        assert data["lpips_note"] in words
    assert data["model"] in words and data["environment"]["torch"] in words
    # a screenshot for the developers (kept in pytest's temporary folder)
    shot = tmp_path_factory.getbasetemp() / "evaluate-report.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,2000", (out / "report.html").resolve().as_uri())
    from PIL import Image

    img = Image.open(shot)
    assert img.size == (1280, 2000) and len(np.unique(np.asarray(img.convert("L").resize((64, 100))))) > 10
    print(f"report screenshot: {shot}")


def test_the_browser_check_sees_broken_media(evaluated, tmp_path):
    _, out, data = evaluated
    copy = tmp_path / "broken"
    shutil.copytree(out, copy)
    _, _, r = _records(data)[0]
    (copy / r["media"]["strip"]).write_bytes(b"not a png")
    video = copy / r["media"]["video"]
    video.write_bytes(video.read_bytes()[:64])
    page = _dump(copy / "report.html")
    assert sorted(f["src"] for f in page.check["failed"]) == sorted([r["media"]["strip"], r["media"]["video"]])


# ------------------------------------------------------------------------------------------- suite, CLI
def test_builtin_suite_covers_every_category():
    suite = builtin_suite()
    assert list(dict.fromkeys(p.category for p in suite)) == list(CATEGORIES)
    assert len({p.id for p in suite}) == len(suite) and all(p.text for p in suite)


@pytest.mark.parametrize("extra,needle", [
    (["--sparsities", "0.5,1.5"], "sparsity=1.5"),
    (["--selections", "best"], "selection="),
    (["--sparsities", "0.9,0.9"], "are the same draft-attention config"),
    (["--categories", "weather"], "--categories weather: not in this suite"),
    (["--per-category", "0"], "--per-category 0"),
    (["--map-steps", "3"], "--map-steps 3: this model has 3 denoising steps (indices 0..2)"),
    (["--map-steps", "-1"], "--map-steps '-1': expected non-negative integers"),
    (["--warmup", "-1"], "--warmup -1"),
    (["--prompts", "{tmp}/none.txt"], "no such file"),
    (["--out", "{tmp}/f"], "is a file; expected a folder"),
    (["--presets", "no-such-preset"], "invalid preset"),
    (["--backend", "fa4", "--device", "cpu"], "--backend fa4 cannot run"),
    (["--warmup-sparsities", "dense,1.5"], "warmup_sparsity=1.5: expected None (dense warm-up) or a number in [0, 1)"),
    (["--warmup-sparsities", "mild"], "--warmup-sparsities: 'mild' is neither 'dense' nor a sparsity such as 0.75"),
    (["--stack-fp8"], "--stack-fp8 goes with --stacks CACHES"),
    *([(["--stacks", "first_block", "--stack-fp8"], "--stack-fp8: fp8: torchao cannot run float8")]
      if not torch.cuda.is_available() else []),  # torchao runs float8 on a GPU of compute capability >= 8.9 only
])
def test_evaluate_fails_before_loading_the_model(extra, needle, capsys, tmp_path, never_load):
    (tmp_path / "f").write_text("")
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    rc, _, err = run(capsys, "evaluate", *TINY, "--out", tmp_path / "o", *extra)
    one_line_error(rc, err, needle)
    assert not never_load and not (tmp_path / "o").exists()


def test_map_layers_beyond_the_model_fail_before_any_generation(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "run_pipeline", lambda *a, **k: pytest.fail("generated before the check"))
    rc, _, err = run(capsys, "evaluate", *TINY, "--out", tmp_path / "o", "--map-layers", "7", "--categories", "text")
    one_line_error(rc, err, "--map-layers 7: this model has 2 blocks with video self-attention (indices 0..1)")


def test_a_stack_the_model_cannot_take_fails_before_any_generation(capsys, tmp_path, monkeypatch):
    """diffusers' First Block Cache cannot run on Kandinsky 6 (no block metadata): said at load, before the dense
    references are generated, not after them."""
    monkeypatch.setattr(runner, "run_pipeline", lambda *a, **k: pytest.fail("generated before the check"))
    rc, _, err = run(capsys, "evaluate", "--model", "tiny-kandinsky6", "--out", tmp_path / "o", "--categories", "text",
                     "--stacks", "first_block", "--stack-no-compile")
    one_line_error(rc, err, "first_block: FirstBlockCacheConfig cannot run on Kandinsky6Transformer3DModel")


def test_settings_from_sparsities_selections_and_presets():
    from draftattention_diffusers.config import DraftAttentionConfig, load_preset
    from draftattention_diffusers.evaluate.run import build_settings

    paper = load_preset("paper-wan2.1-14b-512p-s90").draft_attention
    own = Path(__file__).parent / "my.preset.yaml"
    settings = build_settings(DraftAttentionConfig(), [0.75, 0.9], ["topk", "topk_heads"],
                              [("paper-wan2.1-14b-512p-s90", paper), (str(own), paper.replace(sparsity=0.5))])
    assert [st.id for st in settings] == ["s0.75-topk", "s0.75-topk_heads", "s0.9-topk", "s0.9-topk_heads",
                                          "preset-paper-wan2.1-14b-512p-s90", "preset-my.preset"]
    assert settings[4].config == paper and settings[3].config.selection == "topk_heads"
    assert len({st.label for st in settings}) == len(settings)
    # the opt-in milder warm-up beside the dense one: for the grid and for each stack
    settings = build_settings(DraftAttentionConfig(), None, None, stacks=["first_block"], warmups=[None, 0.75])
    assert [(st.id, st.config.warmup_sparsity) for st in settings] == [
        ("s0.9-topk-wdense", None), ("s0.9-topk-w0.75", 0.75),
        ("stack-first_block-compiled-wdense", None), ("stack-first_block-compiled-w0.75", 0.75)]
    assert settings[3].label == "stack: draft 0.9 + first_block + compile, warm-up 0.75"
    # float8 linears beside the same stack without them
    settings = build_settings(DraftAttentionConfig(), None, None, stacks=["first_block"], compile=False, fp8=True)
    assert [(st.id, st.fp8) for st in settings] == [("s0.9-topk", False), ("stack-first_block", False),
                                                    ("stack-first_block-fp8", True)]
    assert settings[2].label == "stack: draft 0.9 + first_block + float8 linears"


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_the_fast_stack_as_a_setting(compiled, tmp_path, capsys, monkeypatch):
    """--stacks: the one-call stack (draft attention + First Block Cache [+ regional compile]) runs as one more
    setting, installed once for all its prompts and removed at the end; a compiled one draws no draft maps."""
    from draftattention_diffusers import get_fast_stack

    pipes = []
    load = runner.load_pipeline
    monkeypatch.setattr(runner, "load_pipeline", lambda *a, **k: pipes.append(load(*a, **k)) or pipes[-1])
    out = tmp_path / "s"
    rc, stdout, err = run(capsys, "evaluate", *TINY, "--steps", "2", "--categories", "text,camera", "--out", out,
                          "--sparsity", "0.5",
                          "--stacks", "first_block", *([] if compiled else ["--stack-no-compile"]), "--no-videos")
    assert rc == 0, err
    data = json.loads((out / "results.json").read_text())
    st = data["settings"][1]
    assert st["stack"] == "first_block" and st["compile"] is compiled and "first_block" in st["label"]
    recs = list(data["results"][st["id"]].values())
    assert len(recs) == 2 and all(r["draft_attention"]["sparse_calls"] > 0 for r in recs)
    assert ("maps" in recs[0]["media"]) is not compiled
    assert get_fast_stack(pipes[0]) is None  # removed after the run


def test_the_float8_stack_beside_the_same_stack(tmp_path, capsys, float8_on_cpu, cli_loads_bf16):
    """--stacks first_block --stack-fp8: the stack runs with and without float8 linear layers (torchao's GPU check
    lifted, the tiny model in bfloat16 as the CLI loads real models), both judged against dense in one report."""
    from draftattention_diffusers import get_fast_stack

    pipes = cli_loads_bf16
    out = tmp_path / "f"
    rc, stdout, err = run(capsys, "evaluate", *TINY, "--steps", "2", "--categories", "text", "--out", out,
                          "--sparsity", "0.5", "--stacks", "first_block", "--stack-no-compile", "--stack-fp8",
                          "--no-videos", "--no-lpips")
    assert rc == 0, err
    data = json.loads((out / "results.json").read_text())
    assert [(st["id"], st["fp8"]) for st in data["settings"]] == [
        ("s0.5-topk", False), ("stack-first_block", False), ("stack-first_block-fp8", True)]
    recs = {st: next(iter(data["results"][st].values())) for st in ("stack-first_block", "stack-first_block-fp8")}
    assert all(r["draft_attention"]["sparse_calls"] > 0 for r in recs.values())
    assert recs["stack-first_block"]["metrics"] != recs["stack-first_block-fp8"]["metrics"]  # float8 moved the video
    assert "fp8=True" in (out / "report.html").read_text()
    assert get_fast_stack(pipes[0]) is None and pipes[0].transformer.blocks[0].ffn.net[2].weight.dtype == torch.bfloat16


def test_the_milder_warm_up_beside_the_dense_one(tmp_path, capsys):
    """--warmup-sparsities dense,0.5 with a stack: the opt-in milder warm-up and the paper's dense one, for draft
    attention alone and for the stack, in one report; the mild settings run their warm-up step sparse."""
    out = tmp_path / "w"
    rc, stdout, err = run(capsys, "evaluate", *TINY, "--steps", "4", "--categories", "text", "--out", out,
                          "--stacks", "first_block", "--stack-no-compile", "--warmup-sparsities", "dense,0.5",
                          "--no-videos", "--no-lpips")
    assert rc == 0, err
    data = json.loads((out / "results.json").read_text())
    steps = {st["id"]: next(iter(data["results"][st["id"]].values()))["draft_attention"]["steps"]
             for st in data["settings"]}
    assert steps == {"s0.9-topk-wdense": {"0": "dense", "1": "sparse", "2": "sparse", "3": "sparse"},
                     "s0.9-topk-w0.5": {"0": "warmup", "1": "sparse", "2": "sparse", "3": "sparse"},
                     "stack-first_block-wdense": {"0": "dense", "1": "sparse", "2": "sparse", "3": "sparse"},
                     "stack-first_block-w0.5": {"0": "warmup", "1": "sparse", "2": "sparse", "3": "sparse"}}
    assert "stack: draft 0.9 + first_block, warm-up 0.5: mean speedup" in stdout

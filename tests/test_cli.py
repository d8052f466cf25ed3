"""The command line on the tiny models (generate, compare, info, bench), its one-line errors, the video helpers and
the example scripts. Everything runs on a CPU without downloads."""

import json
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from cli_utils import one_line_error, run

from draftattention_diffusers import cli, runner
from draftattention_diffusers.video import read_video, render_draft_png, side_by_side, write_video

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--height", "128", "--width", "256", "--frames", "5", "--steps", "3", "--no-progress"]


# ------------------------------------------------------------------------------------------------ generate
def test_generate_tiny_wan_writes_video_and_statistics(capsys, tmp_path):
    out = tmp_path / "wan.mp4"
    rc, stdout, err = run(capsys, "generate", "--model", "tiny-wan", *SMALL, "--sparsity", "0.5",
                          "--output", out, "--json", tmp_path / "r.json")
    assert rc == 0, err
    video = read_video(out)
    assert video.shape == (5, 128, 256, 3)
    assert "achieved sparsity" in stdout and "1 dense: 0; 2 sparse: 1-2" in stdout
    result = json.loads((tmp_path / "r.json").read_text())
    da = result["draft_attention"]
    assert da["sparse_calls"] > 0 and da["dense_calls"] > 0  # 3 steps at 25% dense: step 0 dense
    assert list(da["steps"].values()) == ["dense", "sparse", "sparse"]
    assert 0.0 < da["mean_sparsity"] < 1.0
    assert result["settings"]["config"]["sparsity"] == 0.5 and result["times"]["total"] > 0


def test_generate_tiny_hunyuan15_without_a_step_callback(capsys, tmp_path):
    """HunyuanVideo-1.5's pipelines take no callback_on_step_end: the run times the whole call only, and says so."""
    rc, stdout, err = run(capsys, "generate", "--model", "tiny-hunyuan15", *SMALL, "--steps", "2", "--sparsity", "0.5",
                          "--output", tmp_path / "h.gif", "--json", tmp_path / "r.json")
    assert rc == 0, err
    assert ("denoising not timed: HunyuanVideo15Pipeline takes no callback_on_step_end, so per-step timing is "
            "unavailable") in stdout
    result = json.loads((tmp_path / "r.json").read_text())
    times = result["times"]
    assert times["total"] > 0 and times["denoise"] is None and "callback_on_step_end" in times["denoise_unavailable"]
    da = result["draft_attention"]
    assert da["steps"] == {"0": "dense", "1": "sparse"} and da["sparse_calls"] > 0 and da["fallbacks"] == {}
    assert read_video(tmp_path / "h.gif").shape == (5, 128, 256, 3)
    pipe = runner.load_pipeline("tiny-wan", "cpu")
    assert runner.step_timing_unavailable(pipe) is None


def _text_to_video_tiny_models() -> list[str]:
    """The tiny pipelines the command line runs without an input file (every family's text-to-video ones)."""
    out = []
    for name in runner.TINY_MODELS:
        family, tiny = runner.tiny_builder(name)
        recipe = family.pipelines.get(getattr(tiny, "pipeline", None))
        if recipe is not None and not recipe.needs_input:
            out.append(name)
    return out


def test_every_family_has_a_text_to_video_tiny_model():
    """...every family whose command-line pipelines include one that needs no input file."""
    from draftattention_diffusers.models import families, family_for_pipeline

    names = _text_to_video_tiny_models()
    t2v = {f.name for f in families() if f.tiny_variants
           and any(not r.needs_input for r in f.pipelines.values())}
    assert {family_for_pipeline(runner.pipeline_to_load(n)[1]).name for n in names} == t2v
    assert "tiny-hunyuan15" in names and "tiny-wan-i2v" not in names and "tiny-chronoedit" not in names


def test_a_python_api_only_tiny_model_is_refused_clearly(capsys):
    rc, _, err = run(capsys, "generate", "--model", "tiny-framepack", "--no-progress")
    assert rc != 0 and "Python API only" in err and "build_tiny_pipeline('framepack')" in err


@pytest.mark.slow  # about 60 s in all on two CPU cores
@pytest.mark.parametrize("model", _text_to_video_tiny_models())
def test_generate_every_tiny_text_to_video_model(model, capsys, tmp_path):
    """Smoke test: `generate` end to end on each tiny text-to-video pipeline (written video, draft statistics), at
    the least frame count from 9 that its family's pipelines take (9 for most: LTX compresses time 8x; Mochi 13)."""
    frames = runner.tiny_frames(runner.tiny_builder(model)[0])
    rc, stdout, err = run(capsys, "generate", "--model", model, "--height", "128", "--width", "256", "--frames", frames,
                          "--steps", "2", "--no-progress", "--output", tmp_path / "v.gif",
                          "--json", tmp_path / "r.json")
    assert rc == 0, err
    assert read_video(tmp_path / "v.gif").shape == (frames, 128, 256, 3)
    result = json.loads((tmp_path / "r.json").read_text())
    da = result["draft_attention"]
    assert da["steps"] == {"0": "dense", "1": "sparse"} and da["sparse_calls"] > 0 and da["fallbacks"] == {}
    times = result["times"]
    assert times["total"] > 0 and (times["denoise"] is not None or times["denoise_unavailable"])
    assert "wrote" in stdout and "achieved sparsity" in stdout


def test_generate_dense_switches_draft_attention_off(capsys, tmp_path):
    out = tmp_path / "dense.gif"
    rc, stdout, err = run(capsys, "generate", "--model", "tiny-wan", *SMALL, "--dense", "--output", out)
    assert rc == 0, err
    assert "draft attention: off" in stdout and "achieved sparsity" not in stdout
    assert read_video(out).shape == (5, 128, 256, 3)


def test_generate_tiny_hunyuan_saves_mask_pictures(capsys, tmp_path):
    masks = tmp_path / "masks"
    rc, stdout, err = run(capsys, "generate", "--model", "tiny-hunyuan", "--height", "256", "--width", "256",
                          "--frames", "5", "--steps", "4", "--no-progress", "--output", tmp_path / "h.mp4",
                          "--save-masks", masks, "--mask-layers", "0,1", "--mask-steps", "0,3",
                          "--mask-heads", "all", "--negative-prompt", "blurry")
    assert rc == 0, err
    # HunyuanVideo takes no negative prompt here: one warning line, and the run goes on
    warnings = [ln for ln in err.splitlines() if ln.startswith("draftattention: warning:")
                and "achieved sparsity" not in ln]  # 4 video tiles cannot reach 0.9: warned, tests/test_new_user.py
    assert warnings == ["draftattention: warning: --negative-prompt is ignored: HunyuanVideo is guidance-distilled "
                        "and runs without a negative prompt here"], err
    # 2 steps x 2 blocks (dual-stream block 0, single-stream block 0 = index 1) x 2 heads of the tiny model
    pngs = sorted(p.name for p in masks.glob("*.png"))
    assert len(pngs) == 8, pngs
    assert "step0_transformer-transformer_blocks-0-attn_head1.png" in pngs
    assert "step3_transformer-single_transformer_blocks-0-attn_head0.png" in pngs
    assert f"wrote 8 mask pictures to {masks}" in stdout
    assert Image.open(masks / pngs[0]).mode == "RGB"


def test_mask_saver_draft_map_is_in_the_order_of_the_tiles(tmp_path):
    """The recomputed draft map must line up with the processor's tiles: with the topk rule every query region
    keeps its best key region, so each row's argmax of the map is a kept tile."""
    import torch

    from draftattention_diffusers import AttentionEvent, DraftAttentionConfig, VideoGrid, draft_attention

    grid = VideoGrid(frames=3, height=12, width=40)  # ragged regions: edge tiles too
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, grid.num_tokens + 7, 2, 16, generator=g) for _ in range(3))
    cfg = DraftAttentionConfig(sparsity=0.8, backend="reference")
    _, tiles = draft_attention(q, k, v, grid, cfg, text_len=7)
    event = AttentionEvent("transformer.blocks.1.attn1", 1, 4, 8, q, k, v, grid, 7, None, False, tiles,
                           16 ** -0.5)
    saver = cli.MaskSaver(tmp_path, cfg, layers={1}, steps=None, heads=None)
    scores = saver.draft_map(event)
    nv = tiles.layout.num_video_tiles
    assert scores.shape == (2, nv, nv)
    best = scores.argmax(dim=-1)  # [H, g]
    assert tiles.kept[0, :, :nv, :nv].gather(-1, best[..., None]).all()
    saver(event)
    saver(event)  # the second call of a step (CFG) is skipped
    assert sorted(p.name for p in saver.written) == ["step4_transformer-blocks-1-attn1_head0.png",
                                                     "step4_transformer-blocks-1-attn1_head1.png"]


def test_generate_with_a_preset_and_overrides(capsys, tmp_path):
    preset = tmp_path / "tiny.yaml"
    preset.write_text("model: tiny-wan\nheight: 128\nwidth: 256\nnum_frames: 5\nnum_inference_steps: 2\n"
                      "guidance_scale: 1.0\nfps: 8\ndraft_attention:\n  sparsity: 0.5\n  dense_steps_fraction: 0.5\n")
    rc, stdout, err = run(capsys, "generate", "--preset", preset, "--sparsity", "0.75", "--no-progress",
                          "--output", tmp_path / "p.mp4", "--json", tmp_path / "p.json")
    assert rc == 0, err
    s = json.loads((tmp_path / "p.json").read_text())["settings"]
    assert (s["height"], s["num_frames"], s["guidance_scale"], s["fps"]) == (128, 5, 1.0, 8)
    assert s["config"]["sparsity"] == 0.75 and s["config"]["dense_steps_fraction"] == 0.5
    assert "1 dense: 0; 1 sparse: 1" in stdout


def test_generate_with_the_float8_stack(capsys, tmp_path, float8_on_cpu, cli_loads_bf16):
    """--stack first_block --stack-fp8: the stack with torchao float8 linear layers (torchao's GPU check lifted: its
    float8 arithmetic runs on a CPU; the tiny model loaded in bfloat16, as the CLI loads real models) gives the video
    the Python API's enable_fast_stack(fp8=True) gives."""
    from draftattention_diffusers import disable_fast_stack, enable_fast_stack
    from draftattention_diffusers.video import read_video, write_video

    args = ["--model", "tiny-wan", *SMALL, "--sparsity", "0.5", "--stack", "first_block", "--stack-no-compile",
            "--stack-fp8"]
    rc, stdout, err = run(capsys, "generate", *args, "--output", tmp_path / "f.mp4", "--json", tmp_path / "f.json")
    assert rc == 0, err
    r = json.loads((tmp_path / "f.json").read_text())
    assert [line.split(" ")[0] for line in r["stack"]] == ["draft", "diffusers", "torchao"]
    assert r["draft_attention"]["sparse_calls"] > 0
    s = runner.resolve_settings(model="tiny-wan", height=128, width=256, num_frames=5, num_inference_steps=3,
                                sparsity=0.5)
    pipe = runner.load_pipeline("tiny-wan", "cpu")  # in bfloat16, as the CLI's
    pipe.set_progress_bar_config(disable=True)
    with pytest.warns(UserWarning, match="compile=False"):
        enable_fast_stack(pipe, "first_block", compile=False, fp8=True, draft=s.config, num_inference_steps=3)
    try:
        want, _ = runner.run_pipeline(pipe, runner.call_kwargs(pipe, s), s.seed)
    finally:
        disable_fast_stack(pipe)
    write_video(want, tmp_path / "want.mp4", fps=runner.video_fps(pipe, s))
    np.testing.assert_array_equal(read_video(tmp_path / "f.mp4"), read_video(tmp_path / "want.mp4"))


def test_generate_with_the_fast_stack(capsys, tmp_path):
    """--stack first_block: the one-call stack (here uncompiled) from the command line gives the video the Python
    API gives; with --dense, the same stack without draft attention; the pipeline is left as it was."""
    from draftattention_diffusers import disable_fast_stack, enable_fast_stack
    from draftattention_diffusers.video import read_video, write_video

    args = ["--model", "tiny-wan", *SMALL, "--steps", "4", "--sparsity", "0.5", "--stack", "first_block",
            "--stack-no-compile"]
    rc, stdout, err = run(capsys, "generate", *args, "--output", tmp_path / "s.mp4", "--json", tmp_path / "s.json")
    assert rc == 0, err
    r = json.loads((tmp_path / "s.json").read_text())
    assert [line.split(" ")[0] for line in r["stack"]] == ["draft", "diffusers"]
    assert r["draft_attention"]["sparse_calls"] > 0 and "stack: draft attention" in stdout
    s = runner.resolve_settings(model="tiny-wan", height=128, width=256, num_frames=5, num_inference_steps=4,
                                sparsity=0.5)
    pipe = runner.load_pipeline("tiny-wan", "cpu")
    pipe.set_progress_bar_config(disable=True)
    enable_fast_stack(pipe, "first_block", compile=False, draft=s.config, num_inference_steps=4)
    try:
        want, _ = runner.run_pipeline(pipe, runner.call_kwargs(pipe, s), s.seed)
    finally:
        disable_fast_stack(pipe)
    write_video(want, tmp_path / "want.mp4", fps=runner.video_fps(pipe, s))  # the same encoding as the CLI's
    np.testing.assert_array_equal(read_video(tmp_path / "s.mp4"), read_video(tmp_path / "want.mp4"))
    rc, stdout, err = run(capsys, "generate", *args, "--dense", "--output", tmp_path / "d.mp4", "--json",
                          tmp_path / "d.json")
    assert rc == 0, err
    r = json.loads((tmp_path / "d.json").read_text())
    assert r["draft_attention"] is None and [line.split(" ")[0] for line in r["stack"]] == ["diffusers"]


def test_generate_with_the_milder_warm_up(capsys, tmp_path):
    """--warmup-sparsity: the opt-in milder warm-up from the command line; its first steps run sparse, and say so."""
    rc, stdout, err = run(capsys, "generate", "--model", "tiny-wan", *SMALL, "--steps", "4", "--warmup-sparsity",
                          "0.5", "--no-progress", "--output", tmp_path / "w.mp4", "--json", tmp_path / "w.json")
    assert rc == 0, err
    r = json.loads((tmp_path / "w.json").read_text())
    assert r["settings"]["config"]["warmup_sparsity"] == 0.5
    assert "1 sparse warm-up: 0" in stdout and r["draft_attention"]["dense_calls"] == 0


# ------------------------------------------------------------------------------------------------- compare
def test_compare_tiny_wan(capsys, tmp_path):
    out = tmp_path / "cmp.mp4"
    rc, stdout, err = run(capsys, "compare", "--model", "tiny-wan", *SMALL, "--warmup", "0", "--output", out,
                          "--json", tmp_path / "c.json")
    assert rc == 0, err
    video = read_video(out)
    assert video.shape == (5, 128 + 16, 2 * 256 + 16, 3)  # label bar, 16-pixel gap
    r = json.loads((tmp_path / "c.json").read_text())
    m = r["metrics"]
    assert math.isfinite(m["psnr"]) and m["psnr"] > 10  # sparse steps change the output, but not to noise
    assert 0.0 < m["ssim"] < 1.0
    assert (m["lpips"] is None) == (m["lpips_skipped"] is not None)
    assert r["speedup"] > 0 and r["draft_attention"]["sparse_calls"] > 0
    assert "PSNR" in stdout and "SSIM" in stdout and ("LPIPS" in stdout)


def test_compare_function_reuses_one_pipeline(tmp_path):
    pipe = runner.load_pipeline("tiny-hunyuan", "cpu")
    pipe.set_progress_bar_config(disable=True)
    s = runner.RunSettings(model="tiny-hunyuan", height=128, width=256, num_frames=5, num_inference_steps=3)
    r = runner.compare(pipe, s, warmup=1, with_lpips=False)
    assert r["dense"].shape == r["draft"].shape == (5, 128, 256, 3)
    assert r["metrics"]["lpips_skipped"] == "LPIPS skipped: not requested"
    assert not hasattr(pipe.transformer, "_draftattention")  # disabled again afterwards
    again, _ = runner.run_pipeline(pipe, runner.call_kwargs(pipe, s), s.seed)
    np.testing.assert_array_equal(again, r["dense"])  # dense run is reproducible with the same seed


def test_compare_without_a_step_callback_reports_the_whole_call(capsys, tmp_path):
    rc, stdout, err = run(capsys, "compare", "--model", "tiny-hunyuan15", *SMALL, "--steps", "2", "--warmup", "0",
                          "--no-lpips", "--output", tmp_path / "c.gif", "--json", tmp_path / "c.json")
    assert rc == 0, err
    assert "x whole call (warm-up runs: 0); denoising not timed: HunyuanVideo15Pipeline takes no" in stdout
    r = json.loads((tmp_path / "c.json").read_text())
    assert r["speedup"] is None and r["speedup_total"] > 0
    assert r["times"]["dense"]["denoise"] is None and r["times"]["draft"]["denoise_unavailable"]


# ----------------------------------------------------------------------------------------------- info, bench
def test_info_lists_every_backend(capsys):
    rc, stdout, err = run(capsys, "info")
    assert rc == 0, err
    from draftattention_diffusers.backends import BACKEND_NAMES

    for name in BACKEND_NAMES:
        assert name in stdout
    assert "torch" in stdout and "diffusers" in stdout


def test_bench_passes_arguments_through(capsys):
    # the benchmark is a module of the package (tests/test_wheel.py runs this from an installed wheel)
    assert cli.main(["bench", "--", "--help"]) == 0  # the benchmark's own exit status comes back
    assert "usage: draftattention bench -- [-h]" in capsys.readouterr().out
    assert cli.main(["bench", "--", "--shapes", "no-such-shape"]) == 2  # argparse's status for bad arguments


def test_benchmark_script_is_a_wrapper_of_the_module(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["benchmark_attention.py", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "scripts" / "benchmark_attention.py"), run_name="__main__")
    assert e.value.code == 0
    assert "usage: benchmark_attention.py" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ capture, analyze
def test_capture_then_analyze(capsys, tmp_path):
    cap = tmp_path / "cap"
    rc, stdout, err = run(capsys, "capture", "--model", "tiny-hunyuan", *SMALL, "--layers", "0",
                          "--capture-steps", "-1", "--heads", "1", "--out-dir", cap)
    assert rc == 0, err
    files = sorted(cap.glob("*.safetensors"))
    assert [f.name for f in files] == ["transformer.transformer_blocks.0.attn.step002.call0.safetensors"]
    assert "wrote 1 capture files" in stdout
    rc, stdout, err = run(capsys, "analyze", *files, "--sparsity", "0.5", "--selections", "topk",
                          "--json", tmp_path / "a.json")
    assert rc == 0, err
    assert "| 8x16 | 0.500 | topk/avg |" in stdout and "| oracle |" in stdout
    rows = json.loads((tmp_path / "a.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"topk/avg", "oracle"} and all(0 < r["recall"] <= 1 for r in rows)


def test_analyze_bad_input(capsys, tmp_path):
    rc, _, err = run(capsys, "analyze", tmp_path / "missing.safetensors")
    one_line_error(rc, err, "capture file(s) not found")
    (tmp_path / "f.safetensors").write_bytes(b"")
    rc, _, err = run(capsys, "analyze", tmp_path / "f.safetensors", "--regions", "8by16")
    one_line_error(rc, err, "--regions '8by16': expected HxW")


# ---------------------------------------------------------------------------------------------- bad input
def test_unknown_model_offline(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc, _, err = run(capsys, "generate", "--model", "no-such-org/no-such-model", "--no-progress",
                     "--output", "/tmp/x.mp4")
    one_line_error(rc, err, "model 'no-such-org/no-such-model' not found locally")


def test_local_folder_without_pipeline(capsys, tmp_path):
    rc, _, err = run(capsys, "generate", "--model", tmp_path, "--output", tmp_path / "x.mp4")
    one_line_error(rc, err, "is not a diffusers pipeline folder")


def test_unsupported_pipeline(capsys, tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    rc, _, err = run(capsys, "generate", "--model", tmp_path, "--output", tmp_path / "x.mp4")
    line = one_line_error(rc, err, "is a StableDiffusionPipeline")
    assert "WanPipeline" in line and "HunyuanVideoPipeline" in line and "tiny-wan" in line


@pytest.fixture(scope="module")
def saved_tiny_wan(tmp_path_factory):
    """A complete Wan pipeline folder, as a download would give, with a tiny text encoder and word tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    from draftattention_diffusers.tiny import build_tiny_pipeline

    words = ["<pad>", "</s>", "<unk>"] + "a cat walks on the grass".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(words), d_model=32, d_ff=64, num_layers=1, num_heads=2,
                                          d_kv=16)).eval()  # d_model = the tiny transformer's text_dim
    pipe = build_tiny_pipeline("wan")
    pipe.register_modules(text_encoder=encoder, tokenizer=tokenizer)
    path = tmp_path_factory.mktemp("tiny-wan-saved")
    pipe.save_pretrained(path)
    return path


def test_local_pipeline_loads_the_documented_way(saved_tiny_wan):
    import torch

    pipe = runner.load_pipeline(str(saved_tiny_wan), "cpu")
    assert type(pipe).__name__ == "WanPipeline"
    assert pipe.vae.dtype == torch.float32 and pipe.transformer.dtype == torch.bfloat16


def test_generate_from_a_local_pipeline_folder_with_a_text_prompt(capsys, saved_tiny_wan, tmp_path):
    rc, stdout, err = run(capsys, "generate", "--model", saved_tiny_wan, "--prompt", "a cat walks on the grass",
                          "--negative-prompt", "a cat", "--height", "128", "--width", "256", "--frames", "5",
                          "--steps", "2", "--flow-shift", "3.0", "--no-progress", "--output", tmp_path / "l.mp4",
                          "--json", tmp_path / "l.json")
    assert rc == 0, err
    assert "negative" not in err  # Wan uses the negative prompt (128x256: warned that 0.9 is not reached)
    assert read_video(tmp_path / "l.mp4").shape == (5, 128, 256, 3)
    assert json.loads((tmp_path / "l.json").read_text())["draft_attention"]["sparse_calls"] > 0
    assert "(WanPipeline)" in stdout and "noise" not in stdout


def test_missing_weights(saved_tiny_wan, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(saved_tiny_wan, broken)
    for f in (broken / "transformer").glob("*.safetensors"):
        f.unlink()
    # a separate process: diffusers logs the failed load, and in-process its log handler outlives pytest's capture
    p = subprocess.run([sys.executable, "-m", "draftattention_diffusers", "generate", "--model", str(broken),
                        "--output", str(tmp_path / "x.mp4")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("draftattention: error: could not load WanPipeline") and "weights missing" in last


@pytest.mark.parametrize("argv,needle", [
    (["--preset", "no-such-preset"], "invalid preset: preset 'no-such-preset' not found; known presets:"),
    (["--model", "tiny-wan", "--sparsity", "1.5"], "sparsity=1.5: expected a number in [0, 1)"),
    (["--model", "tiny-wan", "--backend", "cuda"], "backend='cuda'"),
    (["--model", "tiny-wan", "--height", "100"], "--height 100: expected a positive multiple of 16"),
    (["--model", "tiny-wan", "--frames", "8"], "--frames 8: expected 4k+1 frames"),
    (["--model", "tiny-wan", "--output", "video.txt"], "expected a file name ending in .mp4 or .gif"),
    (["--model", "tiny-wan", "--dense", "--save-masks", "m"], "--save-masks shows draft attention's choices"),
    ([], "no model: pass --model"),
])
def test_bad_input_is_one_line(capsys, argv, needle):
    rc, _, err = run(capsys, "generate", *argv)
    one_line_error(rc, err, needle)


def test_invalid_preset_file_names_the_key(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny-wan\nheight: 128\nwidth: 256\nnum_frames: 5\nnum_inference_steps: 2\n"
                   "guidance_scale: 1.0\nspeed: fast\n")
    rc, _, err = run(capsys, "compare", "--preset", bad)
    one_line_error(rc, err, "unknown key(s) ['speed']")


def test_output_not_writable(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    rc, _, err = run(capsys, "generate", "--model", "tiny-wan", "--output", blocker / "out.mp4")
    one_line_error(rc, err, "cannot be created")


# -------------------------------------------------------------------------- fail fast: before loading the model


def _file(path):
    path.write_text("")
    return path


def _folder(path):
    path.mkdir()
    return path


FAIL_FAST = {  # name: (extra arguments for `generate --model tiny-wan --output tmp/x.mp4`, expected message)
    "output-is-a-folder": (lambda t: ["--output", _folder(t / "v.mp4")], "is a folder; expected a video file name"),
    "json-is-a-folder": (lambda t: ["--json", t], "is a folder; expected a file name"),
    "json-under-a-file": (lambda t: ["--json", _file(t / "f") / "r.json"], "is a file, not a folder"),
    "json-deep-under-a-file": (lambda t: ["--json", _file(t / "f") / "a" / "r.json"], "cannot be created"),
    "masks-is-a-file": (lambda t: ["--save-masks", _file(t / "m")], "is a file; expected a folder"),
    "masks-under-a-file": (lambda t: ["--save-masks", _file(t / "f") / "m"], "cannot be created"),
    "mask-layers": (lambda t: ["--save-masks", t / "m", "--mask-layers", "x"], "--mask-layers 'x'"),
    "guidance-nan": (lambda t: ["--guidance", "nan"], "--guidance nan: expected a finite non-negative number"),
    "guidance-inf": (lambda t: ["--guidance", "inf"], "--guidance inf: expected a finite non-negative number"),
    "guidance-negative": (lambda t: ["--guidance", "-1"], "--guidance -1.0: expected a finite non-negative"),
    "flow-shift-nan": (lambda t: ["--flow-shift", "nan"], "--flow-shift nan: expected a finite positive number"),
    "sparsity-nan": (lambda t: ["--sparsity", "nan"], "sparsity=nan"),
    "device-unknown": (lambda t: ["--device", "gpu"],
                       "--device 'gpu': not a device torch knows; expected auto, cpu, cuda, cuda:N"),
    "device-bad-index": (lambda t: ["--device", "cuda:x"], "--device 'cuda:x': not a device torch knows"),
    "backend-fa4-cpu": (lambda t: ["--backend", "fa4", "--device", "cpu"],
                        "--backend fa4 cannot run on device=cpu, dtype=float32, head_dim=128, tile_size=128: "),
    "backend-flex-cpu": (lambda t: ["--backend", "flex", "--device", "cpu"], "device=cpu (supported: cuda"),
    "backend-bsa-cpu": (lambda t: ["--backend", "bsa", "--device", "cpu"], "device=cpu (supported: cuda, sm80"),
    "model-relative": (lambda t: ["--model", "./no-such-folder"], "local path"),
    "model-absolute": (lambda t: ["--model", t / "missing"], "missing' does not exist"),
    "model-home": (lambda t: ["--model", "~/no-such-folder-8d1f"], "does not exist"),
    "model-nested": (lambda t: ["--model", "no/such/folder"], "local path"),
    "model-is-a-file": (lambda t: ["--model", _file(t / "f")], "is a file; expected a pipeline folder"),
    "offload-without-cuda": (lambda t: ["--model", "some-org/some-model", "--offload", "--device", "cpu"],
                             "--offload needs a CUDA device"),
    "stack-unknown": (lambda t: ["--stack", "fastest"], "--stack fastest: expected none or one of first_block"),
    "stack-no-compile-alone": (lambda t: ["--stack-no-compile"], "--stack-no-compile goes with --stack CACHE"),
    "stack-compiled-masks": (lambda t: ["--stack", "first_block", "--save-masks", t / "m"], "add --stack-no-compile"),
    "stack-fp8-alone": (lambda t: ["--stack-fp8"], "--stack-fp8 goes with --stack CACHE"),
}
if not torch.cuda.is_available():  # torchao runs float8 on a GPU of compute capability >= 8.9 only
    FAIL_FAST["stack-fp8-here"] = (lambda t: ["--stack", "first_block", "--stack-fp8"],
                                   "--stack-fp8: fp8: torchao cannot run float8 dynamic quantization here")


@pytest.mark.parametrize("case", list(FAIL_FAST))
def test_generate_fails_before_loading_the_model(case, capsys, tmp_path, never_load):
    extra, needle = FAIL_FAST[case]
    rc, _, err = run(capsys, "generate", "--model", "tiny-wan", "--output", tmp_path / "x.mp4", *extra(tmp_path))
    line = one_line_error(rc, err, needle)
    assert not never_load and "the model was loaded" not in line
    if case.startswith("backend"):
        assert "use --backend auto" in line
    if case.startswith("model-") and case != "model-is-a-file":
        assert "does not exist" in line and "hub" not in line.split("does not exist")[0]


@pytest.mark.parametrize("argv,needle", [
    (["compare", "--json", "{tmp}"], "--json"),
    (["compare", "--guidance", "nan"], "--guidance nan"),
    (["compare", "--backend", "fa4", "--device", "cpu"], "--backend fa4 cannot run on device=cpu"),
    (["capture", "--out-dir", "{tmp}/f", "--draft"], "--out-dir"),
    (["capture", "--backend", "fa4", "--device", "cpu", "--draft"], "--backend fa4 cannot run"),
])
def test_compare_and_capture_fail_before_loading_the_model(argv, needle, capsys, tmp_path, never_load):
    _file(tmp_path / "f")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    extra = ["--output", tmp_path / "x.mp4"] if argv[0] == "compare" else []
    rc, _, err = run(capsys, *argv, "--model", "tiny-wan", *extra)
    one_line_error(rc, err, needle)
    assert not never_load


def test_cuda_device_without_cuda(capsys, tmp_path, never_load):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    rc, _, err = run(capsys, "generate", "--model", "tiny-wan", "--device", "cuda:1", "--output", tmp_path / "x.mp4")
    one_line_error(rc, err, "--device cuda:1: CUDA is not available here")
    assert not never_load


def test_unwritable_json_folder(capsys, tmp_path, never_load, monkeypatch):
    # as root, chmod does not stop writing: ask os.access for the answer a normal user would get
    locked = _folder(tmp_path / "locked")
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked)
    rc, _, err = run(capsys, "generate", "--model", "tiny-wan", "--output", tmp_path / "x.mp4",
                     "--json", locked / "sub" / "r.json")
    one_line_error(rc, err, f"cannot be written: no write permission in {str(locked)!r}")
    assert not never_load


def test_dense_runs_do_not_check_the_backend(capsys, tmp_path, never_load):
    """--dense (and capture without --draft) never use --backend: they go on to load the model."""
    rc, _, err = run(capsys, "generate", "--model", "tiny-wan", "--dense", "--backend", "fa4", "--device", "cpu",
                     "--output", tmp_path / "x.mp4")
    one_line_error(rc, err, "the model was loaded")
    rc, _, err = run(capsys, "capture", "--model", "tiny-wan", "--backend", "fa4", "--device", "cpu",
                     "--out-dir", tmp_path / "cap")
    one_line_error(rc, err, "the model was loaded")
    assert len(never_load) == 2


def test_offload_warns_for_a_tiny_model_before_loading(capsys, tmp_path, never_load):
    rc, _, err = run(capsys, "generate", "--model", "tiny-hunyuan", "--offload", "--output", tmp_path / "x.mp4")
    lines = err.strip().splitlines()
    assert lines[-2] == "draftattention: warning: --offload is ignored for tiny-hunyuan: tiny models are small " \
                        "and are moved to the device whole"
    one_line_error(rc, err, "the model was loaded")  # the warning came first; the run went on


def test_negative_prompt_warns_for_hunyuan_and_is_not_passed(capsys, monkeypatch):
    monkeypatch.setattr(runner, "_warned", set())  # a fresh run (main() clears it; this test calls call_kwargs alone)
    hunyuan = type("HunyuanVideoPipeline", (), {})()  # call_kwargs needs only the class name for a real model
    s = runner.RunSettings(model="some-org/hunyuan", negative_prompt="blurry")
    kw = runner.call_kwargs(hunyuan, s)
    assert "negative_prompt" not in kw and kw["prompt"] == s.prompt
    runner.call_kwargs(hunyuan, s)  # once per run, not once per call (evaluate.py calls compare per prompt)
    err = capsys.readouterr().err
    assert err.count("draftattention: warning: --negative-prompt is ignored: HunyuanVideo") == 1, err
    wan = type("WanPipeline", (), {})()
    assert runner.call_kwargs(wan, s)["negative_prompt"] == "blurry"
    assert capsys.readouterr().err == ""


def test_runner_resolves_settings_without_argparse():
    """The runner is a library: keyword settings, the same checks and messages as the flags; the CLI re-exports it."""
    s = runner.resolve_settings(model="tiny-wan", num_frames=5, sparsity=0.5, device="cpu")
    assert (s.height, s.num_frames, s.config.sparsity, s.seed) == (256, 5, 0.5, 42)
    with pytest.raises(runner.CLIError, match="--frames 8: expected 4k\\+1 frames"):
        runner.resolve_settings(model="tiny-wan", num_frames=8)
    assert cli.load_pipeline is runner.load_pipeline and cli.CLIError is runner.CLIError


@pytest.mark.parametrize("model,local", [
    ("/data/HunyuanVideo", True), ("./wan", True), ("../wan", True), ("~/models/wan", True), (".", True),
    ("models/wan/v2", True), ("models/wan/", True), ("my model", True),
    ("Wan-AI/Wan2.1-T2V-14B-Diffusers", False), ("hunyuanvideo-community/HunyuanVideo", False), ("gpt2", False),
])
def test_looks_like_local_path(model, local):
    assert runner.looks_like_local_path(model) is local


def test_hub_id_with_an_existing_owner_folder_says_both(capsys, tmp_path, monkeypatch):
    """checkpoints/wan with a folder checkpoints/ here may be a typo or a hub id: the hub is asked, and the error
    says that the local folder does not exist either."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    _folder(tmp_path / "checkpoints")
    rc, _, err = run(capsys, "generate", "--model", "checkpoints/wan", "--output", tmp_path / "x.mp4")
    one_line_error(rc, err, "no local folder 'checkpoints/wan' either, though 'checkpoints' exists")


def test_debug_shows_the_traceback():
    with pytest.raises(cli.CLIError, match="--height 100"):
        cli.main(["generate", "--model", "tiny-wan", "--height", "100", "--debug"])


def test_bad_syntax_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--steps", "many"])
    assert e.value.code == 2


def test_module_entry_point_error_has_no_traceback(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-m", "draftattention_diffusers", "generate", "--model", "nope/nope",
                        "--output", str(tmp_path / "x.mp4")], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("draftattention: error: model 'nope/nope' not found")


# ------------------------------------------------------------------------------------------- video helpers
def test_write_and_read_mp4_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    frames = np.repeat(np.repeat(rng.uniform(0, 1, (5, 4, 6, 3)), 8, axis=1), 8, axis=2)  # smooth blocks
    write_video(frames, tmp_path / "v.mp4", fps=8)
    back = read_video(tmp_path / "v.mp4") / 255.0
    assert back.shape == (5, 32, 48, 3)
    assert np.abs(back - frames).mean() < 0.05  # lossy, but the same picture


def test_odd_sizes_are_padded_for_h264(tmp_path):
    write_video(np.zeros((2, 33, 47, 3), np.uint8), tmp_path / "odd.mp4")
    assert read_video(tmp_path / "odd.mp4").shape == (2, 34, 48, 3)


def test_side_by_side_layout():
    a = np.zeros((3, 32, 48, 3), np.float32)
    b = np.ones((3, 32, 64, 3), np.float32)
    sbs = side_by_side([a, b])
    assert sbs.shape == (3, 32, 48 + 16 + 64, 3)
    assert (sbs[:, :, :48] == 0).all() and (sbs[:, :, 64:] == 255).all()
    with pytest.raises(ValueError, match="differ in frames x height"):
        side_by_side([a, b[:, :16]])


def test_mask_png_shows_kept_tiles(tmp_path):
    import torch

    scores = torch.softmax(torch.randn(4, 4), dim=-1)
    kept = torch.zeros(5, 5, dtype=torch.bool)  # 4 video tiles + 1 text tile
    kept[0, 1] = kept[3, 3] = True
    kept[4, :] = kept[:, 4] = True
    path = render_draft_png(scores, kept, tmp_path / "m.png", num_video_tiles=4, max_pixels=50)
    img = np.asarray(Image.open(path))
    cell = 10
    right = img[:, 4 * cell + 8:]  # left panel 4 tiles wide (40 px) + 8 px separator
    px = lambda r, c: tuple(right[r * cell + 5, c * cell + 5])  # noqa: E731
    assert px(0, 1) == px(3, 3) == (255, 255, 255)
    assert px(0, 0) == px(2, 1) == (0, 0, 0)
    assert px(4, 0) == px(1, 4) == (110, 140, 190)  # text tiles
    with pytest.raises(ValueError, match="square draft map"):
        render_draft_png(torch.zeros(2, 3), None, tmp_path / "x.png")


# ------------------------------------------------------------------------------------------------- scripts
@pytest.mark.parametrize("script", ["generate_wan.py", "generate_hunyuan.py", "evaluate.py"])
def test_scripts_show_help(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "scripts" / script), run_name="__main__")
    assert e.value.code == 0
    assert "--prompt" in capsys.readouterr().out


def test_evaluate_writes_csv(tmp_path, monkeypatch, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts\nA cat walks on the grass.\n\nA dog runs on the beach.\n")
    csv_path = tmp_path / "out" / "eval.csv"
    monkeypatch.setattr(sys, "argv", ["evaluate.py", "--model", "tiny-wan", "--prompts", str(prompts),
                                      "--csv", str(csv_path), "--height", "128", "--width", "256", "--frames", "5",
                                      "--steps", "2", "--warmup", "0", "--no-progress", "--no-lpips"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "scripts" / "evaluate.py"), run_name="__main__")
    assert e.value.code == 0
    import csv

    rows = list(csv.DictReader(csv_path.open()))
    assert [r["prompt"] for r in rows] == ["A cat walks on the grass.", "A dog runs on the beach."]
    for r in rows:
        assert float(r["speedup"]) > 0 and 0 < float(r["ssim"]) <= 1 and r["lpips"] == ""
        assert float(r["psnr"]) > 10
    # tiny prompts differ only through their embeddings: different prompts, different videos
    assert rows[0]["psnr"] != rows[1]["psnr"]


def _evaluate(monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", ["evaluate.py", *map(str, argv)])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "scripts" / "evaluate.py"), run_name="__main__")
    return e.value.code


def test_evaluate_passes_the_image_to_an_image_to_video_pipeline(tmp_path, monkeypatch, capsys):
    """--image is checked before loading and passed to the pipeline as generate does; HunyuanVideo-1.5 I2V takes no
    step callback, so its denoising speedup is empty and the whole call's is given."""
    import csv

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("A cat walks on the grass.\n")
    image = tmp_path / "first.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 256, 3), dtype=np.uint8)).save(image)
    seen = {}
    load, call_kwargs = runner.load_pipeline, runner.call_kwargs

    def loading(*args, **kwargs):
        seen["inputs"] = kwargs.get("inputs")
        return load(*args, **kwargs)

    def calling(pipe, s):
        seen["kwargs"] = kw = call_kwargs(pipe, s)
        return kw

    monkeypatch.setattr(runner, "load_pipeline", loading)  # evaluate.py imports them from the runner module
    monkeypatch.setattr(runner, "call_kwargs", calling)
    csv_path = tmp_path / "eval.csv"
    code = _evaluate(monkeypatch, "--model", "tiny-hunyuan15-i2v", "--image", image, "--prompts", prompts, "--csv",
                     csv_path, "--frames", "5", "--steps", "2", "--warmup", "0", "--no-progress", "--no-lpips")
    out = capsys.readouterr().out
    assert code == 0
    assert seen["inputs"] == ("image",) and seen["kwargs"]["image"].size == (256, 128)
    [row] = list(csv.DictReader(csv_path.open()))
    assert row["speedup"] == "" and float(row["speedup_total"]) > 0 and row["dense_denoise_s"] == ""
    assert float(row["psnr"]) > 10 and "denoising not timed: HunyuanVideo15ImageToVideoPipeline" in out


def test_evaluate_checks_the_inputs_before_loading(tmp_path, monkeypatch, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("A cat.\n")

    def loader(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(runner, "load_pipeline", loader)
    code = _evaluate(monkeypatch, "--model", "tiny-wan-i2v", "--prompts", prompts, "--csv", tmp_path / "o" / "e.csv")
    assert code == 1
    assert "draftattention: error: WanImageToVideoPipeline needs an input image" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o" / "e-report").exists()


def test_a_pipeline_that_needs_an_image_or_a_video_says_so(capsys):
    """Cosmos Predict2 Video2World needs --image or --video (neither alone is required): refused before loading."""
    rc, _, err = run(capsys, "generate", "--model", "tiny-cosmos2-v2w", "--no-progress")
    assert rc != 0 and "Cosmos2VideoToWorldPipeline needs an input: pass --image PATH or --video PATH" in err

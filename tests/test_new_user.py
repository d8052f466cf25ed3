"""What a new user hit (issue 21, section 5), each checked: data loss on an interrupted write, errors that came too
late or not at all, statistics that named nothing or told of another call."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cli_utils import one_line_error, run
from draftattention_diffusers import (disable_draft_attention, enable_draft_attention, get_draft_stats, runner)
from draftattention_diffusers.tiny import build_tiny_pipeline, tiny_prompt_kwargs

SMALL = ["--height", "128", "--width", "256", "--frames", "5", "--steps", "2", "--no-progress"]


def test_an_interrupted_video_write_keeps_the_old_file(tmp_path, monkeypatch):
    import imageio.v2 as imageio

    from draftattention_diffusers.video import read_video, write_video

    path = tmp_path / "v.mp4"
    old = write_video(np.zeros((3, 32, 48, 3), np.float32), path).read_bytes()

    def interrupted(target, frames, **kwargs):
        Path(target).write_bytes(b"\x00" * 100)  # half a video, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(imageio, "mimwrite", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_video(np.ones((3, 32, 48, 3), np.float32), path)
    assert path.read_bytes() == old and sorted(os.listdir(tmp_path)) == ["v.mp4"]
    monkeypatch.undo()
    write_video(np.ones((3, 32, 48, 3), np.float32), path)
    assert read_video(path).mean() > 200  # the new video replaced the old one once complete


@pytest.mark.parametrize("backend", ["fa4", "flex", "bsa"])
def test_an_explicit_backend_that_cannot_run_fails_at_enable(backend):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks a machine without CUDA")
    pipe = build_tiny_pipeline("wan")
    with pytest.raises(ValueError, match=rf"backend='{backend}' cannot run on device=cpu.*use backend='auto'"):
        enable_draft_attention(pipe, backend=backend)
    enable_draft_attention(pipe, backend="reference")  # nothing was left installed by the refused call
    disable_draft_attention(pipe)


def test_statistics_name_the_backend_and_never_tell_of_another_call():
    pipe = build_tiny_pipeline("wan")
    pipe.set_progress_bar_config(disable=True)
    enable_draft_attention(pipe, sparsity=0.5, dense_steps_fraction=0.0)
    kw = dict(tiny_prompt_kwargs(pipe), height=128, width=512, num_frames=5, output_type="latent")
    pipe(**kw, num_inference_steps=2)
    s = get_draft_stats(pipe).summary()
    assert s["sparse_calls"] > 0 and s["backends"] == {"reference": s["sparse_calls"]}
    assert "backend reference" in get_draft_stats(pipe).format()
    pipe(**kw, num_inference_steps=0)  # no transformer forward at all
    s = get_draft_stats(pipe).summary()
    assert s["forwards"] == s["sparse_calls"] == s["dense_calls"] == 0 and s["steps"] == {} and not s["backends"]
    pipe(**kw, num_inference_steps=1)
    assert get_draft_stats(pipe).summary()["forwards"] > 0


def test_achieved_sparsity_far_below_the_requested_warns(capsys, tmp_path):
    # 128x256 pixels: one draft region per frame, so every query row keeps one of two tiles: 0.5, not 0.9
    rc, out, err = run(capsys, "generate", "--model", "tiny-wan", *SMALL, "--sparsity", "0.9",
                       "--dense-steps-fraction", "0", "--output", tmp_path / "x.mp4")
    assert rc == 0, err
    assert "warning: achieved sparsity 0.500 is far below the requested 0.9" in err


def test_mask_indices_the_model_lacks_fail_before_generating(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "run_pipeline", lambda *a, **k: pytest.fail("generated before the check"))
    base = ["generate", "--model", "tiny-wan", *SMALL, "--output", tmp_path / "x.mp4", "--save-masks", tmp_path / "m"]
    rc, _, err = run(capsys, *base, "--mask-layers", "99")
    one_line_error(rc, err, "--mask-layers 99: this model has 2 blocks with video self-attention (indices 0..1)")
    rc, _, err = run(capsys, *base, "--mask-steps", "50")
    one_line_error(rc, err, "--mask-steps 50: this model has 2 denoising steps (indices 0..1)")


@pytest.mark.parametrize("argv,needle", [
    (["compare", "--model", "tiny-wan", "--warmup", "-1"], "--warmup -1: expected a non-negative number"),
    (["generate", "--model", "tiny-nope"], "--model 'tiny-nope': no such tiny model; the embedded ones are tiny-wan"),
    (["generate", "--model", "tiny-wan", "--json", "/proc/draftattention/x.json"], "cannot be written"),
])
def test_fails_before_loading_the_model(argv, needle, capsys, never_load, tmp_path):
    if "/proc" in " ".join(argv) and not Path("/proc").is_dir():
        pytest.skip("no /proc here")
    extra = ["--output", tmp_path / "x.mp4"] if argv[0] in ("generate", "compare") else []
    rc, _, err = run(capsys, *argv, *extra)
    one_line_error(rc, err, needle)
    assert not never_load


def test_missing_pyav_is_said_before_loading(capsys, tmp_path, never_load, monkeypatch):
    import importlib.util

    from PIL import Image

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "av" else find(name, *a))
    image = tmp_path / "first.png"
    Image.fromarray(np.zeros((128, 256, 3), np.uint8)).save(image)
    rc, _, err = run(capsys, "generate", "--model", "tiny-ltx2", "--image", image, "--output", tmp_path / "x.mp4")
    one_line_error(rc, err, "LTX2ImageToVideoPipeline needs PyAV")
    assert "draftattention-diffusers[video]" in err and not never_load


def test_options_are_never_abbreviated(capsys):
    from draftattention_diffusers import cli

    with pytest.raises(SystemExit) as e:  # --dense is generate's flag; compare must not read it as --dense-steps-...
        cli.main(["compare", "--model", "tiny-wan", "--dense"])
    assert e.value.code == 2 and "unrecognized arguments: --dense" in capsys.readouterr().err


def test_presets_lists_every_shipped_preset(capsys):
    from draftattention_diffusers.config import load_preset, preset_dir

    rc, out, _ = run(capsys, "presets")
    assert rc == 0
    names = sorted(p.stem for p in preset_dir().glob("*.yaml"))
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln and not ln.startswith("(")}
    assert sorted(lines) == names
    for name in names:
        p = load_preset(name)
        assert p.model in lines[name] and f"{p.height}x{p.width}" in lines[name]

"""``--image`` / ``--video`` on the command line: which pipelines take them (declared per pipeline in the family
table, ``LoadRecipe.inputs``), the tiny image-to-video pipelines end to end with draft attention on a grid whose tile
order is not the identity, how checkpoints load, and the one-line errors, raised before the model loads."""

import contextlib
import importlib.util
import json
from typing import NamedTuple

import numpy as np
import pytest
import torch
from PIL import Image
from cli_utils import one_line_error, run
from pipeline_utils import REORDERING_SIZE

from draftattention_diffusers import draft_attention_enabled, runner
from draftattention_diffusers.models import family_for_pipeline, tiny_models
from draftattention_diffusers.models.base import IMAGE_TO_VIDEO, LoadRecipe, ModelFamily, PipelineInput, TinyPipeline

SIZE = ["--height", REORDERING_SIZE["height"], "--width", REORDERING_SIZE["width"],
        "--frames", REORDERING_SIZE["num_frames"]]
# 2 steps: step 0 dense, step 1 sparse (half the tiles); guidance 1: one transformer call per step (fast)
STEPS = ["--steps", "2", "--guidance", "1", "--sparsity", "0.5", "--dense-steps-fraction", "0.5", "--no-progress"]
FAST = [*SIZE, *STEPS]


def _picture(height, width, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "first.png"
    _picture(96, 160).save(path)  # not the run's size: the pipeline resizes it
    return path


@pytest.fixture(scope="module")
def wide_image(tmp_path_factory):
    """144 x 448 pixels: HunyuanVideo-1.5 I2V sizes its video from the image (here 9 x 28 tokens per frame)."""
    path = tmp_path_factory.mktemp("inputs") / "wide.png"
    _picture(144, 448).save(path)
    return path


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    """A control video as a folder of 5 frames at half the run's size (the command line resizes them)."""
    folder = tmp_path_factory.mktemp("frames")
    for i in range(5):
        _picture(64, 256, seed=i).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture
def captured(monkeypatch):
    """Run the command in-process and keep the pipeline it loaded, the call's keyword arguments and its frames."""
    seen = {"run": runner.run_pipeline}
    load, run_pipeline = runner.load_pipeline, runner.run_pipeline

    def loading(*args, **kwargs):
        seen["load_kwargs"] = kwargs
        seen["pipe"] = load(*args, **kwargs)
        return seen["pipe"]

    def running(pipe, kwargs, seed):
        frames, times = run_pipeline(pipe, kwargs, seed)
        seen.update(kwargs=kwargs, seed=seed, frames=frames)
        return frames, times

    monkeypatch.setattr(runner, "load_pipeline", loading)
    monkeypatch.setattr(runner, "run_pipeline", running)
    return seen


# ------------------------------------------------------------------------------------------- declarations
def test_image_to_video_pipelines_are_declared_with_their_recipes():
    loadable = runner.SUPPORTED_PIPELINES
    for cls, family in [("WanImageToVideoPipeline", "wan"), ("HunyuanVideoImageToVideoPipeline", "hunyuan_video"),
                        ("SkyReelsV2ImageToVideoPipeline", "skyreels_v2"),
                        ("HunyuanVideo15ImageToVideoPipeline", "hunyuan_video15"),
                        ("LTXImageToVideoPipeline", "ltx_video"), ("LTX2ImageToVideoPipeline", "ltx2"),
                        ("CogVideoXImageToVideoPipeline", "cogvideox")]:
        assert loadable[cls] == family
        assert family_for_pipeline(cls, loadable=True).pipelines[cls].inputs == IMAGE_TO_VIDEO
    # as diffusers' docs load them: HunyuanVideo-1.5 I2V and CogVideoX-5b-I2V in bfloat16 with VAE tiling, LTX-Video
    # and LTX-2 I2V from the text-to-video checkpoint (the same folder) in bfloat16
    bf16 = {"transformer": torch.bfloat16, "transformer_2": torch.bfloat16, "vae": torch.bfloat16,
            "default": torch.bfloat16}
    for cls, tiling in [("HunyuanVideo15ImageToVideoPipeline", True), ("CogVideoXImageToVideoPipeline", True),
                        ("LTXImageToVideoPipeline", False), ("LTX2ImageToVideoPipeline", False)]:
        recipe = family_for_pipeline(cls, loadable=True).pipelines[cls]
        assert recipe.dtypes() == bf16 and recipe.vae_tiling == tiling, cls
    ltx = family_for_pipeline("LTXPipeline", loadable=True).pipelines
    assert ltx["LTXPipeline"].loads_as == {"image": "LTXImageToVideoPipeline"}  # every LTXPipeline checkpoint
    assert ltx["LTXPipeline"].loads_as_if is None
    assert [(i.kind, i.argument, i.required) for i in ltx["LTXConditionPipeline"].inputs] == [("image", "image", False)]
    ltx2 = family_for_pipeline("LTX2Pipeline", loadable=True).pipelines["LTX2Pipeline"]
    assert ltx2.loads_as == {"image": "LTX2ImageToVideoPipeline"} and ltx2.loads_as_if is None
    wan = family_for_pipeline("WanPipeline", loadable=True).pipelines
    # Wan2.1 I2V as the diffusers example loads it: float32 CLIP image encoder and VAE, bfloat16 transformer(s)
    assert wan["WanImageToVideoPipeline"].dtypes() == {
        "transformer": torch.bfloat16, "transformer_2": torch.bfloat16, "vae": torch.float32,
        "image_encoder": torch.float32, "default": torch.bfloat16}
    assert wan["WanPipeline"].loads_as == {"image": "WanImageToVideoPipeline"}
    vace = family_for_pipeline("WanVACEPipeline", loadable=True).pipelines["WanVACEPipeline"]
    assert [(i.kind, i.argument, i.required, i.same_frames) for i in vace.inputs] == [
        ("video", "video", False, True), ("image", "reference_images", False, False)]


def test_tiny_declarations_match_the_built_pipelines():
    """What the command line checks before building a tiny pipeline (its TinyPipeline) is what the builder builds."""
    from draftattention_diffusers.tiny import build_tiny_pipeline

    declared = {name: b for name, (_, b) in tiny_models().items() if isinstance(b, TinyPipeline)}
    assert {"tiny-wan", "tiny-wan-i2v", "tiny-wan22-i2v", "tiny-wan-ti2v", "tiny-hunyuan-i2v",
            "tiny-skyreels-v2-i2v", "tiny-wan-vace", "tiny-hunyuan15", "tiny-hunyuan15-i2v", "tiny-ltx", "tiny-ltx2",
            "tiny-cogvideox", "tiny-cogvideox15", "tiny-cogvideox-i2v"} <= set(declared)
    for name, tiny in declared.items():
        pipe = build_tiny_pipeline(name, num_layers=1)
        assert type(pipe).__name__ == tiny.pipeline, name
        assert {k: pipe.config[k] for k in tiny.model_index} == tiny.model_index, name


@pytest.mark.parametrize("model, inputs, expected", [
    ("tiny-wan-ti2v", (), "WanPipeline"),
    ("tiny-wan-ti2v", ("image",), "WanImageToVideoPipeline"),  # Wan2.2 TI2V-5B: image-to-video as another class
    ("tiny-wan", ("image",), "WanPipeline"),  # no expand_timesteps: stays text-to-video (and --image is refused)
    ("tiny-wan-i2v", ("image",), "WanImageToVideoPipeline"),
    ("tiny-ltx", (), "LTXPipeline"),
    ("tiny-ltx", ("image",), "LTXImageToVideoPipeline"),  # the same checkpoint does image-to-video
    ("tiny-ltx2", ("image",), "LTX2ImageToVideoPipeline"),
    ("tiny-hunyuan15-i2v", ("image",), "HunyuanVideo15ImageToVideoPipeline"),
    ("tiny-cogvideox-i2v", ("image",), "CogVideoXImageToVideoPipeline"),
])
def test_pipeline_to_load_follows_the_inputs(model, inputs, expected):
    assert runner.pipeline_to_load(model, inputs)[1] == expected


def test_declarations_are_checked():
    with pytest.raises(ValueError, match="kind='audio': expected one of"):
        PipelineInput("audio", "audio")
    with pytest.raises(ValueError, match="same_frames applies to videos only"):
        PipelineInput("image", "image", same_frames=True)
    with pytest.raises(ValueError, match="one input per kind"):
        LoadRecipe(torch.bfloat16, torch.float32, torch.bfloat16, inputs=IMAGE_TO_VIDEO * 2)
    with pytest.raises(ValueError, match=r"loads_as\['image'\]='XI2V': expected a pipeline of the family"):
        type("Bad", (ModelFamily,), {"pipelines": {"X": LoadRecipe(torch.bfloat16, torch.float32, torch.bfloat16,
                                                                   loads_as={"image": "XI2V"})}})


# ------------------------------------------------------------------------------- image-to-video, end to end
class I2V(NamedTuple):
    """A tiny image-to-video case: the pipeline it runs as, its size flags, the video it writes, the fixture of its
    image, and what the latent re-runs change (a width whose tile order moves tokens across frames, where the run's
    size does not already)."""

    pipeline: str
    size: tuple = tuple(SIZE)
    frames: tuple = (5, 128, 512, 3)
    image: str = "image"
    latent: dict = {"width": 576}


# 32x / 8x VAE (LTX-Video, LTX-2): 2 x 8 x 20 tokens, one 8x16 region and an 8x4 edge strip per frame
LTX_SIZE = ("--height", 256, "--width", 640, "--frames", 9)
# every family's image-to-video pipeline, and the text-to-video checkpoints that load as one (Wan2.2 TI2V-5B,
# LTX-Video, LTX-2)
I2V_MODELS = {"tiny-wan-i2v": I2V("WanImageToVideoPipeline"), "tiny-wan22-i2v": I2V("WanImageToVideoPipeline"),
              "tiny-wan-ti2v": I2V("WanImageToVideoPipeline"),
              "tiny-skyreels-v2-i2v": I2V("SkyReelsV2ImageToVideoPipeline"),
              "tiny-hunyuan-i2v": I2V("HunyuanVideoImageToVideoPipeline"),
              # sized by its image (no height / width argument): 144 x 448 -> 9 x 28 tokens, edge strips
              "tiny-hunyuan15-i2v": I2V("HunyuanVideo15ImageToVideoPipeline", ("--frames", 5), (5, 144, 448, 3),
                                        "wide_image", {}),
              "tiny-ltx": I2V("LTXImageToVideoPipeline", LTX_SIZE, (9, 256, 640, 3), latent={}),
              "tiny-ltx2": I2V("LTX2ImageToVideoPipeline", LTX_SIZE, (9, 256, 640, 3), latent={}),
              # 17 frames, the fewest it returns a finite video for (5 latent frames; LoadRecipe.min_frames)
              "tiny-kandinsky5-i2v": I2V("Kandinsky5I2VPipeline", ("--height", 128, "--width", 512, "--frames", 17),
                                         (17, 128, 512, 3)),
              # learned positional embeddings: its sample size only (16 x 32 tokens, four regions per frame)
              "tiny-cogvideox-i2v": I2V("CogVideoXImageToVideoPipeline", ("--height", 256, "--width", 512,
                                                                          "--frames", 9), (9, 256, 512, 3), latent={})}


@pytest.mark.parametrize("model", I2V_MODELS)
def test_generate_image_to_video(model, capsys, tmp_path, request, captured, monkeypatch):
    case = I2V_MODELS[model]
    image = request.getfixturevalue(case.image)
    if model == "tiny-ltx2" and importlib.util.find_spec("av") is None:
        # LTX2ImageToVideoPipeline re-compresses the image with H.264 through PyAV (diffusers' default CRF, as LTX-2
        # was trained); PyAV is not installed here, so skip that step of the image's preprocessing (image_crf=0)
        monkeypatch.setattr("diffusers.pipelines.ltx2.pipeline_ltx2_image2video.resolve_default_image_crf",
                            lambda text_encoder: 0)
    rc, stdout, err = run(capsys, "generate", "--model", model, "--image", image, *case.size, *STEPS,
                          "--output", tmp_path / "v.gif", "--json", tmp_path / "r.json")
    assert rc == 0, err
    pipe, kwargs = captured["pipe"], captured["kwargs"]
    assert type(pipe).__name__ == case.pipeline and captured["load_kwargs"]["inputs"] == ("image",)
    if model == "tiny-wan22-i2v":  # Wan2.2 I2V-A14B-style: two experts, no image encoder
        assert pipe.transformer_2 is not None and pipe.image_encoder is None
    if model == "tiny-hunyuan15-i2v":  # the tiny models' default size is not passed, and the user is told
        assert "height" not in kwargs and "width" not in kwargs
        assert ("--height 256, --width 512 ignored: HunyuanVideo15ImageToVideoPipeline takes no height or width "
                "argument (it sizes the video itself, from its input)") in " ".join(err.split())
    assert isinstance(kwargs["image"], Image.Image) and kwargs["image"].size == Image.open(image).size
    assert f"image: {image}" in stdout
    da = json.loads((tmp_path / "r.json").read_text())["draft_attention"]
    assert da["steps"] == {"0": "dense", "1": "sparse"} and da["sparse_calls"] > 0 and da["fallbacks"] == {}
    assert captured["frames"].shape == case.frames and np.isfinite(captured["frames"]).all()
    # the same pipeline and call (latents out): draft attention with every step dense equals no draft attention
    # bit for bit; at sparsity 0 in tile order (every token reordered and back) it equals it up to float rounding;
    # sparse differs. Wan-style 128 x 512 runs again 36 tokens wide: each frame's 4-token edge strip is ordered after
    # every frame's full regions, so tokens change frames (at 32 wide the tile order keeps frames in place, and
    # per-frame timesteps or a first frame read by position would look right even when not reordered)
    latent = dict(kwargs, output_type="latent", **case.latent)

    def go(**config):
        with draft_attention_enabled(pipe, **config) if config else contextlib.nullcontext():
            return captured["run"](pipe, latent, captured["seed"])[0]

    base = go()
    assert np.array_equal(go(dense_steps_fraction=1.0), base)
    scale = max(1.0, float(np.abs(base).max()))  # (Kandinsky 5 I2V rescales its first latent frames by a std)
    assert np.abs(go(sparsity=0.0, dense_steps_fraction=0.0, backend="reference") - base).max() < 1e-4 * scale
    sparse = go(sparsity=0.5, dense_steps_fraction=0.0)
    assert np.isfinite(sparse).all() and np.abs(sparse - base).max() > 1e-3


def test_too_few_frames_for_a_pipeline_are_refused_before_loading(capsys, tmp_path, image):
    """Kandinsky5I2VPipeline renormalizes its first 4 latent frames by the following ones after denoising: with
    fewer than 17 frames there are none and its video is NaN (with or without draft attention). Refused up front;
    the tiny model's default frame count is raised to it."""
    rc, _, err = run(capsys, "generate", "--model", "tiny-kandinsky5-i2v", "--image", image, "--frames", 13,
                     "--output", tmp_path / "v.gif")
    one_line_error(rc, err, "--frames 13: Kandinsky5I2VPipeline needs at least 17 frames")
    s = runner.resolve_settings(model="tiny-kandinsky5-i2v", image=str(image))
    assert s.num_frames == 17


def test_vace_control_video_and_reference_image(capsys, tmp_path, image, frames_dir, captured):
    rc, stdout, err = run(capsys, "generate", "--model", "tiny-wan-vace", "--video", frames_dir, "--image", image,
                          *FAST, "--output", tmp_path / "v.gif", "--json", tmp_path / "r.json")
    assert rc == 0, err
    # the control video under its own name, resized to the run's size; the image as the reference image
    assert [f.size for f in captured["kwargs"]["video"]] == [(512, 128)] * 5
    assert captured["kwargs"]["reference_images"].size == (160, 96)
    assert json.loads((tmp_path / "r.json").read_text())["draft_attention"]["sparse_calls"] > 0
    assert captured["frames"].shape == (5, 128, 512, 3) and np.isfinite(captured["frames"]).all()


def test_a_video_without_size_and_frames_sets_them(tmp_path, image):
    """Without --frames / --height / --width a video sets them (a pipeline that needs its frame count gets it); an
    image goes to VACE as its reference image."""
    path = tmp_path / "v.gif"
    frames = [_picture(64, 256, seed=i) for i in range(9)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    s = runner.RunSettings(model="some-org/vace", video=str(path), image=str(image))
    kw = runner.call_kwargs(type("WanVACEPipeline", (), {})(), s)  # only the class name is needed
    assert (kw["num_frames"], kw["height"], kw["width"], len(kw["video"])) == (9, 64, 256, 9)
    assert kw["reference_images"].size == (160, 96) and "image" not in kw


def test_built_pipeline_is_checked_too(image):
    """call_kwargs checks the inputs against the pipeline it is given (a tiny builder need not declare its class,
    a script may load without the inputs)."""
    i2v = type("WanImageToVideoPipeline", (), {})()
    with pytest.raises(runner.CLIError, match="WanImageToVideoPipeline needs an input image"):
        runner.call_kwargs(i2v, runner.RunSettings(model="some-org/i2v"))
    ti2v = runner.load_pipeline("tiny-wan-ti2v", "cpu")  # no inputs: a WanPipeline
    with pytest.raises(runner.CLIError, match="this checkpoint takes one as WanImageToVideoPipeline: load it with "
                                              r"load_pipeline\(..., inputs=settings.inputs\)"):
        runner.call_kwargs(ti2v, runner.RunSettings(model="tiny-wan-ti2v", image=str(image)))


def test_video_files_are_read(tmp_path):
    from draftattention_diffusers.video import write_video

    frames = np.stack([np.asarray(_picture(64, 96, seed=i)) for i in range(5)])
    write_video(frames, tmp_path / "v.mp4", fps=8)
    video = runner.load_video_input(str(tmp_path / "v.mp4"))
    assert len(video) == 5 and {f.size for f in video} == {(96, 64)} and video[0].mode == "RGB"


# --------------------------------------------------------------------------------------------- loading
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny checkpoints saved as a download gives them (with a tiny text encoder and word tokenizer): Wan2.2
    TI2V-style and Wan2.1 I2V-style."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    from draftattention_diffusers.tiny import build_tiny_pipeline

    words = ["<pad>", "</s>", "<unk>", "a", "cat"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(words), d_model=32, d_ff=64, num_layers=1, num_heads=2,
                                          d_kv=16)).eval()  # d_model = the tiny transformer's text_dim
    out = {}
    for name in ("tiny-wan-ti2v", "tiny-wan-i2v"):
        pipe = build_tiny_pipeline(name, num_layers=1)
        pipe.register_modules(text_encoder=encoder, tokenizer=tokenizer)
        out[name] = tmp_path_factory.mktemp(name)
        pipe.save_pretrained(out[name])
    return out


def test_ti2v_checkpoint_loads_as_image_to_video_with_an_image(saved):
    path = str(saved["tiny-wan-ti2v"])
    t2v = runner.load_pipeline(path, "cpu")
    i2v = runner.load_pipeline(path, "cpu", inputs=("image",))
    assert (type(t2v).__name__, type(i2v).__name__) == ("WanPipeline", "WanImageToVideoPipeline")
    assert i2v.config.expand_timesteps and i2v.vae.dtype == torch.float32 and i2v.transformer.dtype == torch.bfloat16


def test_wan_i2v_checkpoint_loads_the_documented_way(saved):
    pipe = runner.load_pipeline(str(saved["tiny-wan-i2v"]), "cpu", inputs=("image",))
    assert type(pipe).__name__ == "WanImageToVideoPipeline"
    assert pipe.image_encoder.dtype == pipe.vae.dtype == torch.float32 and pipe.transformer.dtype == torch.bfloat16


# ------------------------------------------------------------------------------ errors, before the model loads
def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _model_index(folder, class_name, **config):
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name, **config}))
    return folder


ERRORS = {  # name: (arguments after `generate`, given tmp_path, the image and a 5-frame folder; expected message)
    "t2v-with-image": (lambda t, i, f: ["--model", "tiny-hunyuan", "--image", i],
                       "--image: HunyuanVideoPipeline takes no image; the HunyuanVideo pipelines that do: "
                       "HunyuanVideoImageToVideoPipeline; pass --model with one of those, or drop --image"),
    "wan-t2v-with-image": (lambda t, i, f: ["--model", "tiny-wan", "--image", i],
                           "a WanPipeline checkpoint whose model_index.json sets expand_timesteps loads as "
                           "WanImageToVideoPipeline"),
    "i2v-without-image": (lambda t, i, f: ["--model", "tiny-skyreels-v2-i2v"],
                          "SkyReelsV2ImageToVideoPipeline needs an input image (its 'image' argument): pass --image"),
    "no-pipeline-takes-video": (lambda t, i, f: ["--model", "tiny-wan-i2v", "--image", i, "--video", f],
                                "--video: WanImageToVideoPipeline takes no video, nor does any Wan2.1 / Wan2.2"),
    "image-missing": (lambda t, i, f: ["--model", "tiny-wan-i2v", "--image", t / "nope.png"], "no such file"),
    "image-is-a-folder": (lambda t, i, f: ["--model", "tiny-wan-i2v", "--image", t], "is a folder; expected an image"),
    "image-unreadable": (lambda t, i, f: ["--model", "tiny-wan-i2v", "--image", _write(t / "x.png", b"not a png")],
                         "cannot be read as an image"),
    "video-unreadable": (lambda t, i, f: ["--model", "tiny-wan-vace", "--video", _write(t / "x.mp4", b"not a video")],
                         "cannot be read as a video"),
    "video-folder-empty": (lambda t, i, f: ["--model", "tiny-wan-vace", "--video", t], "is a folder without frames"),
    "video-frame-count": (lambda t, i, f: ["--model", "tiny-wan-vace", "--video", f, "--frames", "9"],
                          "has 5 frames; WanVACEPipeline needs exactly as many as it generates (--frames 9): pass a "
                          "video of 9 frames or --frames 5"),
    "hunyuan15-t2v-with-image": (lambda t, i, f: ["--model", "tiny-hunyuan15", "--image", i],
                                 "--image: HunyuanVideo15Pipeline takes no image; the HunyuanVideo-1.5 pipelines that "
                                 "do: HunyuanVideo15ImageToVideoPipeline; pass --model with one of those"),
    "hunyuan15-i2v-without-image": (lambda t, i, f: ["--model", "tiny-hunyuan15-i2v"],
                                    "HunyuanVideo15ImageToVideoPipeline needs an input image"),
    "cogvideox-i2v-without-image": (lambda t, i, f: ["--model", "tiny-cogvideox-i2v"],
                                    "CogVideoXImageToVideoPipeline needs an input image"),
    "ltx-with-video": (lambda t, i, f: ["--model", "tiny-ltx", "--video", f],
                       "--video: LTXPipeline takes no video, nor does any LTX-Video pipeline the command line loads"),
    "ltx-frames-not-8k+1": (lambda t, i, f: ["--model", "tiny-ltx", "--frames", "5"],
                            "--frames 5: LTX-Video takes 8k+1 frames (its VAE compresses time 8x), e.g. 9, 33, 121"),
    "ltx2-width-not-multiple-of-32": (lambda t, i, f: ["--model", "tiny-ltx2", "--width", "272"],
                                      "--width 272: LTX-2 takes multiples of 32"),
    # real checkpoints: the class (and its config) comes from model_index.json, before any weights load
    "local-ltx-frames": (lambda t, i, f: ["--model", _model_index(t / "m", "LTXPipeline"), "--frames", "29"],
                         "--frames 29: LTX-Video takes 8k+1 frames"),
    "local-cogvideox-t2v-with-image": (lambda t, i, f: ["--model", _model_index(t / "m", "CogVideoXPipeline"),
                                                        "--image", i],
                                       "--image: CogVideoXPipeline takes no image; the CogVideoX pipelines that do: "
                                       "CogVideoXImageToVideoPipeline"),
    "local-t2v-with-image": (lambda t, i, f: ["--model", _model_index(t / "m", "WanPipeline", expand_timesteps=False),
                                           "--image", i], "--image: WanPipeline takes no image"),
    "local-i2v-without-image": (lambda t, i, f: ["--model", _model_index(t / "m", "WanImageToVideoPipeline")],
                                "WanImageToVideoPipeline needs an input image"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_input_errors_come_before_loading(case, capsys, tmp_path, image, frames_dir, never_load):
    args, needle = ERRORS[case]
    rc, _, err = run(capsys, "generate", *args(tmp_path, image, frames_dir), "--output", tmp_path / "x.mp4")
    one_line_error(rc, err, needle)
    assert not never_load


@pytest.mark.parametrize("command", ["compare", "capture"])
def test_compare_and_capture_check_inputs_too(command, capsys, tmp_path, never_load):
    extra = ["--output", tmp_path / "x.mp4"] if command == "compare" else ["--out-dir", tmp_path / "cap"]
    rc, _, err = run(capsys, command, "--model", "tiny-wan-i2v", *extra)
    one_line_error(rc, err, "WanImageToVideoPipeline needs an input image")
    assert not never_load


@pytest.mark.parametrize("class_name, config, loads", [
    ("WanPipeline", {"expand_timesteps": True}, "WanImageToVideoPipeline"),  # Wan2.2 TI2V-5B
    ("LTXPipeline", {}, "LTXImageToVideoPipeline"),  # LTX-Video 0.9.0-0.9.5: the same folder does image-to-video
    ("LTXConditionPipeline", {}, "LTXConditionPipeline"),  # LTX-Video 0.9.7+: takes the image itself
    ("LTX2Pipeline", {}, "LTX2ImageToVideoPipeline"),
])
def test_checkpoints_that_take_an_image_go_on_to_load(class_name, config, loads, capsys, tmp_path, image,
                                                     never_load):
    folder = _model_index(tmp_path / "m", class_name, **config)
    assert runner.pipeline_to_load(str(folder), ("image",))[1] == loads
    rc, _, err = run(capsys, "generate", "--model", folder, "--image", image, "--output", tmp_path / "x.mp4")
    one_line_error(rc, err, "the model was loaded")

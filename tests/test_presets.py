"""Every preset in configs/ loads, is complete and sane; invalid presets fail naming the problem."""

import dataclasses
import textwrap

import pytest
import yaml

from draftattention_diffusers import DraftAttentionConfig, load_preset
from draftattention_diffusers.config import preset_dir

PRESETS = sorted(preset_dir().glob("*.yaml"))
CONFIG_FIELDS = {f.name for f in dataclasses.fields(DraftAttentionConfig)}
# frame counts a preset's pipeline takes: its VAE's 4k+1, except where the pipeline has a rule of its own
FRAME_RULES = {
    "minimax-h3-t2va-768p": ("17n+5 (MiniMax-H3's video VAE)", lambda n: n > 5 and (n - 5) % 17 == 0),
    # HunyuanVideoFramepackPipeline covers any count with sections of (latent_window_size - 1) * 4 + 1 frames
    "framepack-i2v-hy-832x480": ("any count (FramePack's sections)", lambda n: n >= 1),
}


def test_presets_exist():
    names = {p.stem for p in PRESETS}
    assert {"wan2.1-1.3b-480p", "wan2.1-14b-720p", "wan2.2-a14b-720p", "hunyuan-720p"} <= names
    for setting in ("paper-hunyuan-768p", "paper-wan2.1-14b-512p", "paper-wan2.1-14b-768p"):
        assert {f"{setting}-s{s}" for s in (55, 75, 90)} <= names


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_loads_and_is_complete(path):
    raw = yaml.safe_load(path.read_text())
    # every draft-attention field is written out, so a preset does not silently change with a default
    assert set(raw["draft_attention"]) == CONFIG_FIELDS, \
        f"{path.name}: draft_attention must list every DraftAttentionConfig field"
    p = load_preset(path.stem)
    assert p == load_preset(path)
    assert p.height % 16 == 0 and p.width % 16 == 0, "height and width must be multiples of 16"
    rule, ok = FRAME_RULES.get(path.stem, ("4k+1", lambda n: (n - 1) % 4 == 0))
    assert ok(p.num_frames), f"frames must be {rule}"
    assert p.description and p.model and p.fps
    cfg = p.draft_attention
    assert cfg == DraftAttentionConfig(**raw["draft_attention"])
    assert cfg.region_size == (8, 16) and cfg.pooling == "avg" and cfg.backend == "auto"


@pytest.mark.parametrize("setting,model,size", [
    ("paper-hunyuan-768p", "hunyuanvideo-community/HunyuanVideo", (768, 1280)),
    ("paper-wan2.1-14b-512p", "Wan-AI/Wan2.1-T2V-14B-Diffusers", (512, 768)),
    ("paper-wan2.1-14b-768p", "Wan-AI/Wan2.1-T2V-14B-Diffusers", (768, 1280)),
])
def test_paper_presets_follow_table_1(setting, model, size):
    for s in (0.55, 0.75, 0.9):
        p = load_preset(f"{setting}-s{round(s * 100)}")
        assert (p.model, (p.height, p.width), p.num_inference_steps) == (model, size, 50)
        assert p.draft_attention.sparsity == s and p.draft_attention.selection == "paper"
        # the published code: dense above timestep 945 / 925 = the first 15 of 50 steps, and the first block(s)
        assert p.draft_attention.dense_steps_fraction == 0.3
        assert p.draft_attention.dense_layers == ((0, 1) if "hunyuan" in setting else (0,))


def test_wan22_preset_sets_both_guidance_scales():
    p = load_preset("wan2.2-a14b-720p")
    assert (p.guidance_scale, p.guidance_scale_2, p.num_inference_steps) == (4.0, 3.0, 40)


GOOD = """\
model: some/model
height: 480
width: 832
num_frames: 81
num_inference_steps: 50
guidance_scale: 5.0
draft_attention:
  sparsity: 0.9
"""


def _write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_minimal_preset_uses_config_defaults(tmp_path):
    p = load_preset(_write(tmp_path, GOOD))
    assert p.draft_attention == DraftAttentionConfig(sparsity=0.9) and p.flow_shift is None and p.fps is None


@pytest.mark.parametrize("change,needle", [
    (("height: 480", "hieght: 480"), r"unknown key\(s\) \['hieght'\]"),
    (("  sparsity: 0.9", "  sparsty: 0.9"), "unknown DraftAttentionConfig field"),
    (("  sparsity: 0.9", "  sparsity: 1.2"), r"draft_attention: sparsity=1.2: expected a number in \[0, 1\)"),
    (("  sparsity: 0.9", "  selection: best"), "selection='best'"),
    (("height: 480", "height: '480'"), "height='480': expected a positive integer"),
    (("num_frames: 81", "num_frames: 0"), "num_frames=0"),
    (("guidance_scale: 5.0", "guidance_scale: true"), "guidance_scale=True: expected a non-negative number"),
    (("guidance_scale: 5.0", "guidance_scale: 5.0\nfps: 2.5"), "fps=2.5"),
    (("guidance_scale: 5.0", "guidance_scale: 5.0\nflow_shift: -1"), "flow_shift=-1"),
    (("model: some/model", "model: ''"), "model='': expected a hub id or a local path"),
    (("width: 832\n", ""), r"missing key\(s\) \['width'\]"),
    (("model: some/model", "model: !!python/object/apply:os.system ['true']"), "not a valid preset YAML"),
])
def test_invalid_preset_names_the_problem(tmp_path, change, needle):
    path = _write(tmp_path, GOOD.replace(*change))
    with pytest.raises(ValueError, match=needle) as e:
        load_preset(path)
    assert str(path) in str(e.value)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(FileNotFoundError, match="known presets: .*wan2.1-14b-720p"):
        load_preset("no-such-preset")


def test_not_a_mapping(tmp_path):
    with pytest.raises(ValueError, match="expected a mapping"):
        load_preset(_write(tmp_path, "- a\n- b\n"))

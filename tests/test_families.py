"""The model-family table (``models/``) is the one owner of everything per family: what the CLI, ``tiny.py`` and the
integration derive from it, and that nothing outside ``models/`` names a family."""

import ast
from pathlib import Path

import pytest
import torch

from draftattention_diffusers import cli, enable_draft_attention
from draftattention_diffusers.integration.lifecycle import installation
from draftattention_diffusers.models import (ModelFamily, families, family_for, family_for_pipeline, tiny_alias,
                                             tiny_models)
from draftattention_diffusers.models.base import LoadRecipe
from draftattention_diffusers.tiny import TINY_FAMILIES, build_tiny_pipeline, tiny_prompt_kwargs

PACKAGE = Path(__file__).resolve().parents[1] / "draftattention_diffusers"


def test_cli_tables_derive_from_the_families():
    """The CLI's tables are the family table's entries (every family, in table order), not lists of their own; a few
    entries are spelled out as a reader would expect them. (A new family touches no line here.)"""
    assert cli.TINY_MODELS == {name: tiny_alias(name) for f in families() for name in f.tiny_variants}
    assert TINY_FAMILIES == tuple(tiny_alias(name) for f in families() for name in f.tiny_variants)
    assert cli.SUPPORTED_PIPELINES == {p: f.name for f in families() for p in f.pipelines}
    assert cli.DEFAULT_FPS == {f.name: f.default_fps for f in families()}
    assert {"tiny-wan": "wan", "tiny-wan22": "wan22", "tiny-hunyuan": "hunyuan", "tiny-ltx2": "ltx2",
            "tiny-hunyuan15-i2v": "hunyuan15-i2v"}.items() <= cli.TINY_MODELS.items()
    assert TINY_FAMILIES[:2] == ("wan", "wan22")  # the demo's default first
    assert {"WanPipeline": "wan", "WanImageToVideoPipeline": "wan", "HunyuanVideoPipeline": "hunyuan_video",
            "LTXConditionPipeline": "ltx_video", "HunyuanVideo15Pipeline": "hunyuan_video15"}.items() \
        <= cli.SUPPORTED_PIPELINES.items()
    assert {"wan": 16, "hunyuan_video": 24, "cogvideox": 8}.items() <= cli.DEFAULT_FPS.items()
    assert cli.family_of(type("HunyuanVideoPipeline", (), {})()).name == "hunyuan_video"
    with pytest.raises(cli.CLIError, match="unsupported pipeline FluxPipeline; supported: WanPipeline"):
        cli.family_of(type("FluxPipeline", (), {})())


def test_load_recipes_as_documented():
    wan = family_for_pipeline("WanPipeline", loadable=True).pipelines["WanPipeline"]
    assert wan.dtypes() == {"transformer": torch.bfloat16, "transformer_2": torch.bfloat16, "vae": torch.float32,
                            "default": torch.bfloat16} and not wan.vae_tiling
    hunyuan = family_for_pipeline("HunyuanVideoPipeline", loadable=True).pipelines["HunyuanVideoPipeline"]
    assert hunyuan == LoadRecipe(torch.bfloat16, torch.float16, torch.float16, vae_tiling=True)
    assert family_for_pipeline("WanImageToVideoPipeline", loadable=True).name == "wan"  # the CLI loads I2V too
    assert family_for_pipeline("SkyReelsV2DiffusionForcingPipeline").name == "skyreels_v2"  # served by the Python
    assert family_for_pipeline("SkyReelsV2DiffusionForcingPipeline", loadable=True) is None  # API, not the CLI


@pytest.mark.parametrize("name, pipeline, experts", [
    ("wan", "WanPipeline", 1), ("tiny-wan22", "WanPipeline", 2), ("hunyuan", "HunyuanVideoPipeline", 1),
    ("hunyuan_video", "HunyuanVideoPipeline", 1),
])
def test_tiny_names_and_aliases(name, pipeline, experts):
    pipe = build_tiny_pipeline(name, num_layers=1)
    assert type(pipe).__name__ == pipeline
    assert 1 + (getattr(pipe, "transformer_2", None) is not None) == experts
    assert family_for(pipe.transformer) is family_for_pipeline(pipe)


def test_unknown_tiny_name_and_pipeline_raise():
    with pytest.raises(ValueError, match=r"family='flux': expected one of \('tiny-wan', 'wan'"):
        build_tiny_pipeline("flux")
    with pytest.raises(ValueError, match="not a pipeline of a supported family"):
        tiny_prompt_kwargs(object())


def test_family_declarations_are_checked():
    with pytest.raises(ValueError, match="text_position='middle': expected one of"):
        type("Bad", (ModelFamily,), {"text_position": "middle"})
    with pytest.raises(ValueError, match="cp_splits_text needs text in self-attention"):
        type("Bad", (ModelFamily,), {"cp_splits_text": True})


def test_family_is_resolved_once_and_kept_on_the_installation():
    pipe = enable_draft_attention(build_tiny_pipeline("wan22", num_layers=1))
    for t in (pipe.transformer, pipe.transformer_2):
        assert installation(t).family is family_for(t)


def _names_outside_docstrings(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings}


def test_no_family_name_outside_models():
    names = {f.name for f in families()} | set(tiny_models()) | {tiny_alias(n) for n in tiny_models()}
    found = {str(p.relative_to(PACKAGE)): _names_outside_docstrings(p) & names for p in PACKAGE.rglob("*.py")
             if p.parent.name != "models"}
    assert not {p: n for p, n in found.items() if n}


@pytest.mark.parametrize("name", ["skyreels-v2", "wan-vace", "cogvideox", "ltx", "ltx2", "hunyuan15"])
def test_new_families_refuse_context_parallelism_clearly(name):
    """No context-parallel plan exists (diffusers 0.42.1) or was verified for these: a clear error at enable."""
    from types import SimpleNamespace

    from draftattention_diffusers import enable_draft_attention
    from draftattention_diffusers.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(name)
    cp = SimpleNamespace(ring_degree=1, ulysses_degree=2, ulysses_anything=False)
    pipe.transformer._parallel_config = SimpleNamespace(context_parallel_config=cp)
    with pytest.raises(ValueError, match="context parallelism is not supported"):
        enable_draft_attention(pipe)

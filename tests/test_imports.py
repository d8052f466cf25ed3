"""The package's layering has no import cycle: config, core <- backends <- attention (entry point) <- integration.

``import draftattention_diffusers.core`` runs the package ``__init__`` first, which imports everything; the checks
below therefore import the layers under a bare parent package (its ``__init__`` not run) in a clean interpreter, and
read the import statements of every module (in-function imports included).
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "draftattention_diffusers"

# layer -> the package parts it may import (relative to the package; itself always allowed)
ALLOWED = {
    "config": set(),
    "core": set(),
    "backends": {"core", "config"},
    "attention": {"core", "config", "backends"},
}


# imports that break the layering on purpose: core's lazy alias of the moved entry point (runs on first use only)
EXEMPT = {("core/__init__.py", "attention")}


def _imported_layers(path: Path) -> set[str]:
    """Top-level package parts (``core``, ``backends``, ...) that ``path`` imports anywhere, functions included."""
    package = path.relative_to(PKG).with_suffix("").parts[:-1]  # ("core",) for core/layout.py and core/__init__.py
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            parts = list(package[:len(package) - node.level + 1]) + (node.module.split(".") if node.module else [])
            found.update([parts[0]] if parts else [a.name for a in node.names])  # "from . import x" at the top
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == PKG.name:
            parts = node.module.split(".")[1:]
            found.update([parts[0]] if parts else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith(PKG.name + "."))
    rel = path.relative_to(PKG).as_posix()
    return {layer for layer in found if (rel, layer) not in EXEMPT}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_lower_layers(layer):
    files = [PKG / f"{layer}.py"] if (PKG / f"{layer}.py").exists() else sorted((PKG / layer).glob("*.py"))
    assert files
    for path in files:
        extra = _imported_layers(path) - ALLOWED[layer] - {layer}
        assert not extra, f"{path.relative_to(PKG.parent)} imports {sorted(extra)} (allowed: {sorted(ALLOWED[layer])})"


# layer -> what importing it must not load; lowest layer first
LOADS_NOTHING_HIGHER = {
    "config": ["backends", "core", "attention", "integration", "models", "torch"],
    "core": ["backends", "attention", "integration", "models"],
    "backends": ["attention", "integration", "models"],
    "attention": ["integration", "models"],
}


@pytest.fixture(scope="module")
def loaded_by_each_layer() -> dict:
    """In one fresh interpreter (each one costs seconds of torch import): a bare parent package (no ``__init__``
    run), then the layers lowest first; after each import, which of that layer's forbidden modules are loaded (or
    the import's traceback). As strict as one interpreter per layer: the layers imported before are lower, and
    the check before this one found none of this layer's forbidden modules loaded."""
    code = f"""
import json, sys, traceback, types
pkg = types.ModuleType({PKG.name!r}); pkg.__path__ = [{str(PKG)!r}]; sys.modules[{PKG.name!r}] = pkg
found = {{}}
for module, forbidden in {list(LOADS_NOTHING_HIGHER.items())!r}:
    try:
        __import__({PKG.name!r} + "." + module)
    except Exception:
        found[module] = traceback.format_exc()
        break
    found[module] = [m for m in forbidden if ({PKG.name!r} + "." + m if m != "torch" else m) in sys.modules]
print(json.dumps(found))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", list(LOADS_NOTHING_HIGHER))
def test_importing_a_layer_loads_no_higher_layer(module, loaded_by_each_layer):
    assert module in loaded_by_each_layer, f"a lower layer failed to import: {loaded_by_each_layer}"
    assert loaded_by_each_layer[module] == [], f"importing {module} loaded {loaded_by_each_layer[module]}"


def test_public_names_and_compatibility_aliases():
    code = """
import sys
import draftattention_diffusers.core as core
from draftattention_diffusers import VideoGrid, draft_attention
from draftattention_diffusers.attention import StageTimer, check_inputs, draft_attention as entry
from draftattention_diffusers.core import TileMask, VideoGrid as V2, get_layout, select_tiles
from draftattention_diffusers.integration import processor
assert draft_attention is entry and V2 is VideoGrid and processor.draft_attention is entry
from draftattention_diffusers.core import draft_attention as old, StageTimer as old_timer  # lazy aliases
assert old is entry and old_timer is StageTimer
assert "draft_attention" not in core.__all__
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

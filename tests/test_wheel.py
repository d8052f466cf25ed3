"""The wheel (what `pip install .` installs) is complete: every preset and every other data file the package reads
at run time is inside it, and the presets and `draftattention bench` work from an installed wheel, not only from
a source checkout."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from draftattention_diffusers.config import preset_dir

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "draftattention_diffusers"
# build outputs and caches of a working copy that a clean checkout does not have
NOT_SOURCE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache",
                                    "outputs", ".device", "third_party")

# Runs inside the installed wheel: load every preset and run `draftattention bench -- --help`.
CHECK_INSTALLED = """
import contextlib, io, json, sys
from pathlib import Path
import draftattention_diffusers
from draftattention_diffusers import cli, load_preset
from draftattention_diffusers.config import preset_dir

names = sorted(p.stem for p in preset_dir().glob("*.yaml"))
for name in names:
    load_preset(name)
help_text = io.StringIO()
with contextlib.redirect_stdout(help_text):
    rc = cli.main(["bench", "--", "--help"])
print(json.dumps({"package": draftattention_diffusers.__file__, "presets": names, "bench_rc": rc,
                  "bench_help": help_text.getvalue()}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built (no build isolation, no network) from a copy of this checkout, so that the build leaves no
    build/ or egg-info behind in the working tree."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCE)
    p = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp / "dist"),
                        str(src)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"wheel build failed (pip install -e '.[test]' installs `build`):\n{p.stdout}\n" \
                              f"{p.stderr}"
    (whl,) = (tmp / "dist").glob("*.whl")
    return whl


def test_wheel_holds_every_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    # presets as the source checkout finds them (in the old layout, configs/ beside the package)
    presets = {p.name for p in preset_dir().glob("*.yaml")}
    assert {"wan2.1-14b-720p.yaml", "hunyuan-720p.yaml", "paper-wan2.1-14b-768p-s90.yaml"} <= presets
    missing = sorted(n for n in presets if f"{PACKAGE}/configs/{n}" not in names)
    assert not missing, f"presets missing from the wheel: {missing}"
    # every other non-Python file of the package is data it reads at run time
    data = {p.relative_to(ROOT).as_posix() for p in (ROOT / PACKAGE).rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}
    assert not sorted(data - names), f"package files missing from the wheel: {sorted(data - names)}"
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / PACKAGE).rglob("*.py")}
    assert not sorted(modules - names), f"modules missing from the wheel: {sorted(modules - names)}"
    assert f"{PACKAGE}/benchmark_attention.py" in names


def test_presets_and_bench_work_from_the_installed_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                        "--disable-pip-version-check", "--target", str(site), str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    # cwd outside the checkout and the wheel's copy first on the path: the checkout cannot be what gets imported
    env = dict(os.environ, PYTHONPATH=str(site), HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-c", CHECK_INSTALLED], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert Path(r["package"]).resolve().is_relative_to(site.resolve()), r["package"]
    assert r["presets"] == sorted(p.stem for p in preset_dir().glob("*.yaml"))
    assert r["bench_rc"] == 0 and "usage: draftattention bench" in r["bench_help"], r

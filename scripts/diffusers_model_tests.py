"""Run diffusers' own transformer model tests twice, plain and with draft attention, and compare.

A second opinion on compatibility: the upstream test mixins (save/load, dtype casting, determinism, training,
gradient checkpointing, attention processors, LoRA; compile and offloading, which upstream runs only with an
accelerator) run on every model of the supported families, once as they are and once with draft attention enabled
on *every* instance of a supported transformer class: a pytest plugin wraps their ``__init__`` to call
``enable_draft_attention(model, sparsity=0.5, dense_steps_fraction=0.0, backend="reference")`` (no pipeline calls
these models, so with no dense steps every forward is sparse; the token grid comes from the latent shape). The
upstream tests compare models with each other (save/load, offloaded, compiled, LoRA, checkpointed ...), both with
draft attention here. What matters is the difference between the two runs, not the absolute counts: the upstream
tests need not match the installed diffusers, and hub / accelerator tests skip or fail alike in both.

No upstream code is kept here: the ``tests/`` folder of a diffusers git checkout or bare mirror is extracted into a
temporary folder at run time, next to the small pytest plugin this script writes (PLUGIN_SOURCE).

    python scripts/diffusers_model_tests.py --diffusers-repo /work/.mirror/huggingface+diffusers/repo \
        --region-size 2,4 --unskip-accelerator --jobs 2 --json diffusers_tests.json
    python scripts/diffusers_model_tests.py --diffusers-repo ../diffusers --files wan,ltx2 -k "LoRA"
    python scripts/diffusers_model_tests.py --summarize diffusers_tests.json

``--region-size 2,4``: the upstream inputs are tiny (e.g. Wan 2x8x8 tokens); with the default 8x16-token regions
each frame is at most one tile and draft attention has little or nothing to skip (HunyuanVideo-1.5 and CogVideoX
fall back to dense: fewer tokens than one tile). Small regions make every family really sparse (achieved 0.5).
``--unskip-accelerator``: also run, on the CPU, the tests upstream skips without an accelerator (torch.compile
with inductor, AOT export, layerwise casting, offloading); those that truly need one fail in both runs.

Prints per test file: passed / failed / skipped / errors (xfailed, xpassed apart) for plain and draft, what draft
attention did there (token grids, sparse / dense calls, achieved sparsity, fallbacks), every test that passes plain
but fails with draft attention with the first line of its error, and other outcome changes. Exit code 1 if any.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# diffusers' test files of the supported families (tests/models/transformers/test_models_transformer_<name>.py;
# Kandinsky 5/6 have none upstream)
FILES = ("wan", "wan_vace", "skyreels_v2", "hunyuan_video", "hunyuan_1_5", "ltx", "ltx2", "cogvideox", "chronoedit",
         "anyflow", "wan_animate", "helios", "cosmos", "motif_video", "hunyuan_video_framepack", "mochi", "easyanimate",
         "allegro", "consisid", "minimax_h3")
TEST_DIR = "tests/models/transformers"
PLUGIN = "_draft_harness"
# reasons of the upstream skipif marks that --unskip-accelerator drops (require_accelerator, require_torch_accelerator)
ACCELERATOR_SKIPS = ("test requires a hardware accelerator", "test requires accelerator+PyTorch")
CHECKOUT = Path(__file__).resolve().parent.parent  # the repository root holding draftattention_diffusers/

# The pytest plugin, loaded in both runs (``-p _draft_harness``) so that the two differ only by enabling. It
# records every test's outcome (one JSON line each) and, in draft mode, wraps the supported classes' __init__.
PLUGIN_SOURCE = r'''
import functools, json, os, signal
import pytest
import torch

MODE = os.environ["DRAFT_HARNESS_MODE"]            # "plain" or "draft"
OUT = os.environ["DRAFT_HARNESS_OUT"]              # JSON lines: one per test
TEST_TIMEOUT = int(os.environ.get("DRAFT_HARNESS_TEST_TIMEOUT", "0"))
ENABLE = json.loads(os.environ.get("DRAFT_HARNESS_ENABLE", "{}"))
_snaps = {}           # id(model) -> what draft attention did in its forwards during the current test
_built = [0]          # supported transformers built (and enabled) during the current test
_depth = [0]          # nested __init__ (a wrapped class calling a wrapped base): enable once, at the outermost
_enable_errors = []


def _wrap(cls):
    original = cls.__init__

    @functools.wraps(original)  # keeps __wrapped__: diffusers reads init signatures through it
    def __init__(self, *args, **kwargs):
        _depth[0] += 1
        try:
            original(self, *args, **kwargs)
        finally:
            _depth[0] -= 1
        if _depth[0] == 0:
            from draftattention_diffusers import enable_draft_attention
            try:
                enable_draft_attention(self, **ENABLE)
            except Exception as e:  # recorded, then raised: a model draft attention cannot take is a finding
                _enable_errors.append(f"{type(self).__name__}: {type(e).__name__}: {e}")
                raise
            _built[0] += 1
            self.register_forward_hook(_snapshot)

    cls.__init__ = __init__


UNSKIP = set(filter(None, os.environ.get("DRAFT_HARNESS_UNSKIP", "").split("|")))


def pytest_collection_modifyitems(session, config, items):
    """--unskip-accelerator: drop the upstream skipif marks with these reasons (both runs alike), so that e.g. the
    compile and offloading mixins run on a CPU; what truly needs an accelerator then fails in both runs."""
    if not UNSKIP:
        return
    for item in items:
        for node in item.listchain():
            node.own_markers[:] = [m for m in node.own_markers
                                   if not (m.name == "skipif" and m.kwargs.get("reason") in UNSKIP)]


def pytest_configure(config):
    if MODE == "draft":
        import diffusers
        from draftattention_diffusers.models import supported_transformers
        for name in supported_transformers():
            cls = getattr(diffusers, name, None)
            if cls is not None:
                _wrap(cls)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    if TEST_TIMEOUT and hasattr(signal, "SIGALRM"):  # a per-test limit (pytest-timeout may not be installed)
        def _expire(signum, frame):
            raise TimeoutError(f"test ran over {TEST_TIMEOUT} s (harness limit)")
        signal.signal(signal.SIGALRM, _expire)
        signal.alarm(TEST_TIMEOUT)
    try:
        return (yield)
    finally:
        if TEST_TIMEOUT and hasattr(signal, "SIGALRM"):
            signal.alarm(0)


def _snapshot(module, args, output):
    """Forward hook added by the harness after enabling: copies what draft attention did so far (plain values), so
    that it can be reported after the test, when the model may be gone. Nothing is kept alive by it; under
    torch.compile it does nothing (no graph break)."""
    if torch.compiler.is_compiling():
        return
    from draftattention_diffusers import get_draft_processor
    entry = _snaps.setdefault(id(module), {"cls": type(module).__name__})
    entry["forwards"] = entry.get("forwards", 0) + 1
    try:
        proc = get_draft_processor(module)
        s, g = proc.stats.summary(), proc.grid
        entry.update(sparse_calls=s["sparse_calls"], dense_calls=s["dense_calls"], mean_sparsity=s["mean_sparsity"],
                     fallbacks=list(s["fallbacks"]), grid=[g.frames, g.height, g.width] if g is not None else None)
    except Exception as e:  # e.g. the test replaced the processors: draft attention removed itself
        entry["unavailable"] = f"{type(e).__name__}: {e}"[:200]


_results = {}


def pytest_runtest_logreport(report):
    r = _results.setdefault(report.nodeid, {"nodeid": report.nodeid, "outcome": None, "message": ""})
    wasxfail = hasattr(report, "wasxfail")
    if report.when == "call":
        if wasxfail:
            r["outcome"] = "xfailed" if report.skipped else "xpassed"
        else:
            r["outcome"] = report.outcome
    elif report.when == "setup" and not report.passed:
        r["outcome"] = "skipped" if report.skipped else "error"
    elif report.when == "teardown" and report.failed and r["outcome"] in (None, "passed"):
        r["outcome"] = "error"
    if report.failed and not r["message"]:
        crash = getattr(report.longrepr, "reprcrash", None)
        r["message"] = (crash.message if crash is not None else str(report.longrepr)).strip().splitlines()[0][:300] \
            if report.longrepr else ""
        r["when"] = report.when


@pytest.hookimpl(trylast=True)
def pytest_runtest_logfinish(nodeid, location):
    r = _results.pop(nodeid, None)
    if r is None:
        return
    if MODE == "draft":
        r["draft"] = list(_snaps.values())
        r["enabled_models"] = _built[0]
        if _enable_errors:
            r["enable_errors"] = list(_enable_errors)
    _snaps.clear()
    _built[0] = 0
    _enable_errors.clear()
    with open(OUT, "a") as f:
        f.write(json.dumps(r) + "\n")
'''


def extract_tests(repo: Path, ref: str, dest: Path) -> None:
    """Copy ``tests/`` of a checkout (its working tree) or, for a bare mirror, ``git archive <ref> tests``."""
    if (repo / "tests" / "models").is_dir():
        shutil.copytree(repo / "tests", dest / "tests")
        return
    archive = subprocess.run(["git", "-C", str(repo), "archive", ref, "tests"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)


def enable_kwargs(args) -> dict:
    """What the plugin passes to ``enable_draft_attention``: every forward sparse (no pipeline calls these models)."""
    kw = {"sparsity": args.sparsity, "dense_steps_fraction": 0.0, "backend": args.backend}
    if args.region_size:
        kw["region_size"] = [int(x) for x in args.region_size.split(",")]
    return kw


def run_file(tmp: Path, name: str, mode: str, args) -> dict:
    """One pytest process on one upstream test file; returns its per-test records, time and status."""
    out = tmp / f"results-{name}-{mode}.jsonl"
    env = dict(os.environ, DRAFT_HARNESS_MODE=mode, DRAFT_HARNESS_OUT=str(out),
               DRAFT_HARNESS_TEST_TIMEOUT=str(args.test_timeout), HF_HUB_OFFLINE="1",
               DRAFT_HARNESS_UNSKIP="|".join(ACCELERATOR_SKIPS) if args.unskip_accelerator else "",
               DRAFT_HARNESS_ENABLE=json.dumps(enable_kwargs(args)),
               # this checkout's package first: the harness tests the code it sits in, installed or not
               PYTHONPATH=os.pathsep.join([str(tmp), str(CHECKOUT), os.environ.get("PYTHONPATH", "")])
               .rstrip(os.pathsep))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", PLUGIN,
           f"{TEST_DIR}/test_models_transformer_{name}.py", *(["-k", args.k] if args.k else []), *args.pytest_args]
    start, status = time.time(), "ok"
    log = tmp / f"log-{name}-{mode}.txt"
    with open(log, "w") as fh:
        try:
            proc = subprocess.run(cmd, cwd=tmp, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=args.timeout)
            if proc.returncode not in (0, 1):  # 1: some tests failed; anything else: pytest itself broke
                status = f"pytest exit {proc.returncode}"
        except subprocess.TimeoutExpired:
            status = f"timed out after {args.timeout} s"
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
    return {"records": records, "seconds": time.time() - start, "status": status, "last_line": tail[0] if tail else ""}


def sparse_evidence(records: list[dict]) -> str:
    """Grids seen, sparse / dense video self-attention calls, the largest mean achieved sparsity and the fallbacks
    (e.g. a video shorter than one tile runs dense) over the file's tests."""
    grids, sparse, dense, best, unavailable, fallbacks = set(), 0, 0, 0.0, 0, set()
    for r in records:
        for m in r.get("draft", []):
            if "unavailable" in m:
                unavailable += 1
                continue
            if m.get("grid"):
                grids.add("x".join(map(str, m["grid"])))
            sparse += m.get("sparse_calls", 0)
            dense += m.get("dense_calls", 0)
            best = max(best, m.get("mean_sparsity") or 0.0)
            fallbacks.update(f.split(": ", 1)[-1] for f in m.get("fallbacks", []))
    text = f"grid {','.join(sorted(grids)) or '-'}: {sparse} sparse / {dense} dense calls, " \
           f"max achieved sparsity {best:.2f}"
    if unavailable:
        text += f"; draft attention removed by the test on {unavailable} model(s)"
    return text + "".join(f"\n{'':46s}fallback: {f}" for f in sorted(fallbacks))


def counts(records: list[dict]) -> str:
    c = Counter(r["outcome"] for r in records)
    extra = "".join(f"+{c[k]}{k[:2]}" for k in ("xfailed", "xpassed") if c[k])
    return f"{c['passed']}/{c['failed']}/{c['skipped']}/{c['error']}{extra}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--diffusers-repo", type=Path, help="diffusers git checkout or bare mirror")
    p.add_argument("--ref", default="HEAD", help="commit to take tests/ from (bare mirror only)")
    p.add_argument("--files", default=",".join(FILES), help=f"test files, by short name (default: all {len(FILES)})")
    p.add_argument("--modes", default="plain,draft")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--backend", default="reference")
    p.add_argument("--region-size", default=None, help="H,W tokens per draft region (default: the package's 8,16; "
                   "a small one, e.g. 2,4, makes the tiny upstream grids hold many regions, so calls really are sparse)")
    p.add_argument("-k", default=None, help="pytest -k expression, passed on")
    p.add_argument("--timeout", type=int, default=900, help="seconds per test file and mode")
    p.add_argument("--test-timeout", type=int, default=300, help="seconds per test (0: none)")
    p.add_argument("--unskip-accelerator", action="store_true",
                   help="run the tests upstream marks as needing an accelerator (compile, offloading, layerwise "
                        "casting) on the CPU anyway, in both runs")
    p.add_argument("--jobs", type=int, default=1, help="pytest processes at once (default 1)")
    p.add_argument("--json", type=Path, help="write every record here")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) and print its path")
    p.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    p.add_argument("--summarize", type=Path, help="only print the summary of a --json file written before")
    args = p.parse_args()
    if args.summarize:
        return summarize(json.loads(args.summarize.read_text())["results"])

    if args.diffusers_repo is None:
        p.error("--diffusers-repo is required (or --summarize)")
    t0 = time.time()
    print(f"draft run: enable_draft_attention(model, **{enable_kwargs(args)}) on every supported transformer")
    tmp = Path(tempfile.mkdtemp(prefix="diffusers-model-tests-"))
    try:
        extract_tests(args.diffusers_repo, args.ref, tmp)
        (tmp / f"{PLUGIN}.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
        modes = args.modes.split(",")
        names = args.files.split(",")
        results: dict[str, dict[str, dict]] = {name: {} for name in names}

        def one(job):
            name, mode = job
            res = results[name][mode] = run_file(tmp, name, mode, args)
            print(f"{name:14s} {mode:5s} {res['seconds']:6.1f} s  {res['status']}: {res['last_line']}", flush=True)

        # one pytest process per (file, mode); --jobs > 1 runs several at once (a GPU machine with many cores)
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            list(pool.map(one, [(name, mode) for name in names for mode in modes]))
        if args.json:
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                             "results": results}, indent=1))
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    return summarize(results, time.time() - t0)


def summarize(results: dict[str, dict[str, dict]], seconds: float | None = None) -> int:
    """The table, then the tests whose outcome differs between the runs. Returns 1 if any passes plain only, or if a
    draft run did not complete where the plain one did."""
    print(f"\n{'file':14s} {'plain p/f/s/e':>15s} {'draft p/f/s/e':>15s}  draft attention (xp: xpassed, xf: xfailed)")
    regressions, fixed, other, changed_error, broken = [], [], [], [], []
    for name, by_mode in results.items():
        plain, draft = by_mode.get("plain"), by_mode.get("draft")
        row = f"{name:14s} {counts(plain['records']) if plain else '-':>15s} " \
              f"{counts(draft['records']) if draft else '-':>15s}  "
        print(row + (sparse_evidence(draft["records"]) if draft else ""))
        for res, mode in ((plain, "plain"), (draft, "draft")):
            if res and res["status"] != "ok":
                print(f"{'':14s} {mode}: {res['status']}")
        if draft and draft["status"] != "ok" and (plain is None or plain["status"] == "ok"):
            broken.append((name, draft))  # a run that did not run (e.g. the plugin could not import us) is no pass
        if not (plain and draft):
            continue
        before = {r["nodeid"]: r for r in plain["records"]}
        for r in draft["records"]:
            b = before.get(r["nodeid"])
            if b is None or b["outcome"] == r["outcome"]:
                # failing in both runs: a different first error line may mean draft attention fails further on
                if b is not None and r["outcome"] in ("failed", "error") and b["message"] != r["message"]:
                    changed_error.append((b, r))
                continue
            ok_before, ok_now = b["outcome"] in ("passed", "xpassed"), r["outcome"] in ("passed", "xpassed")
            if ok_before and r["outcome"] in ("failed", "error"):
                regressions.append(r)
            elif ok_now and b["outcome"] in ("failed", "error"):
                fixed.append(r)
            else:  # e.g. passed -> skipped, xfailed -> xpassed
                other.append((b, r))
    short = lambda r: r["nodeid"].split("/")[-1]  # noqa: E731
    print(f"\n{len(regressions)} test(s) pass plain and fail with draft attention:")
    for r in regressions:
        print(f"  {short(r)}\n      {r['outcome']} ({r.get('when', '?')}): {r['message']}")
    if fixed:
        print(f"{len(fixed)} test(s) fail plain and pass with draft attention:")
        for r in fixed:
            print(f"  {short(r)}")
    if other:
        print(f"{len(other)} other outcome change(s):")
        for b, r in other:
            print(f"  {short(r)}: {b['outcome']} -> {r['outcome']}")
    if changed_error:
        print(f"{len(changed_error)} test(s) fail in both runs with a different first error line:")
        for b, r in changed_error:
            print(f"  {short(r)}\n      plain: {b['message'][:150]}\n      draft: {r['message'][:150]}")
    if broken:
        print(f"{len(broken)} file(s) whose draft run did not complete where the plain run did:")
        for name, res in broken:
            print(f"  {name}: {res['status']}: {res['last_line']}")
    if seconds is not None:
        print(f"\ntotal {seconds:.0f} s")
    return 1 if regressions or broken else 0


if __name__ == "__main__":
    sys.exit(main())

"""Test-session settings shared by every test module."""

import os

import pytest
import torch

# On a CPU-only machine, one intra-op thread unless the caller chose otherwise (OMP_NUM_THREADS=N pytest ...): the
# tiny pipelines' ops are too small to gain from more threads, and where the cores are shared (a 2-core CI runner
# with other jobs, the two gloo ranks of test_parallel, a CLI subprocess beside pytest) torch's spinning worker
# threads slow the suite several-fold. Set in the environment too, so that subprocesses and spawned ranks inherit it.
if not torch.cuda.is_available():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if os.environ["OMP_NUM_THREADS"].isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def never_load(monkeypatch):
    """Loading a model is an error that names itself; yields the load attempts (must stay empty). For the CLI tests
    of errors that must come before any model loads."""
    from draftattention_diffusers import runner

    calls = []

    def loader(*args, **kwargs):
        calls.append(args)
        raise runner.CLIError("the model was loaded")

    monkeypatch.setattr(runner, "load_pipeline", loader)  # the commands look it up on the runner
    return calls

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


@pytest.fixture
def float8_on_cpu(monkeypatch):
    """torchao's hardware check lifted: it refuses float8 without a GPU of compute capability >= 8.9, but its float8
    arithmetic runs on a CPU (torch's CPU ``_scaled_mm``), so the tests run the real quantized layers."""
    quant_api = pytest.importorskip("torchao.quantization.quant_api")
    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda *args, **kwargs: None)


@pytest.fixture
def cli_loads_bf16(monkeypatch):
    """The CLI's pipelines with their transformer in bfloat16, as it loads real models (tiny ones load float32);
    yields the pipelines it loaded."""
    from draftattention_diffusers import runner

    pipes = []
    load = runner.load_pipeline

    def load_bf16(*args, **kwargs):
        pipes.append(load(*args, **kwargs))
        pipes[-1].transformer.to(torch.bfloat16)
        return pipes[-1]

    monkeypatch.setattr(runner, "load_pipeline", load_bf16)
    return pipes

"""The benchmark scripts build their models as ``from_pretrained(torch_dtype=torch.bfloat16)`` does: a GPU run of
``scripts/benchmark_e2e.py`` at Kandinsky 5 Lite failed in every setting (``mat1 and mat2 must have the same dtype``)
because the whole model was cast to bf16, where diffusers keeps the class's ``_keep_in_fp32_modules`` (time
embeddings, modulation) in float32. Every tiny config is built and run once here in bf16 on the CPU."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import benchmark_e2e  # noqa: E402

TINY = sorted(n for n in benchmark_e2e.MODELS if n.startswith("tiny-"))


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_builds_and_runs_in_bf16_as_from_pretrained(name):
    cpu = torch.device("cpu")
    model = benchmark_e2e.build(name, cpu, torch.bfloat16)
    keep = list(getattr(model, "_keep_in_fp32_modules", None) or [])
    for full, p in model.named_parameters():
        expected = torch.float32 if any(k in full.split(".") for k in keep) else torch.bfloat16
        assert p.dtype == expected, f"{full}: {p.dtype}, from_pretrained gives {expected}"
    with torch.no_grad():
        out = model(**benchmark_e2e.inputs(name, cpu, torch.bfloat16))[0]
    assert torch.isfinite(out.float()).all()


def test_pipeline_benchmark_mild_setting_is_the_stack_with_the_milder_warm_up():
    import benchmark_pipeline as bp

    assert bp.parse_setting("stack+mild") == ("mild", "fbcache-mag", True, False)
    assert bp.without_draft("stack+mild") == "fbcache-mag+compile"  # its baseline: the same stack, no draft attention
    cfg = bp.Setting("stack+mild").draft_config(bench=None)
    assert cfg.warmup_sparsity == bp.MILD_WARMUP_SPARSITY == 0.75 and cfg.dense_steps_fraction == 0.25
    with pytest.raises(ValueError, match="at most one of draft"):
        bp.parse_setting("draft+mild")
    assert bp.parse_setting("stack+mild+fp8") == ("mild", "fbcache-mag", True, True)
    assert bp.without_draft("stack+mild+fp8") == "fbcache-mag+compile+fp8"


def test_pipeline_benchmark_draft_adds_against_the_faster_dense_stack():
    """"Draft adds" is against the faster of the same stack on the model's own attention and the same stack dense on
    flash-attn-4 (HunyuanVideo's own attention is masked SDPA, 1.5x slower than flash-attn-4 dense in section 17),
    matched by parts in any order."""
    import benchmark_pipeline as bp

    def run(step_s, classes, has_draft):
        return {"denoise_s": sum(step_s), "steps": len(step_s), "step_s": step_s, "classes": classes,
                "classes_50": classes, "has_draft": has_draft}

    stack = run([4.0, 1.0], ["dense", "sparse"], True)
    own = run([6.0, 6.0], ["dense", "sparse"], False)  # the stack without draft, on the model's own attention
    for fa4_step, expected in ((4.0, "compile+fa4-dense+fbcache-mag"), (7.0, "fbcache-mag+compile")):
        fa4 = run([fa4_step, fa4_step], ["dense", "dense"], True)  # the same stack dense on flash-attn-4
        rows = bp.summarize({"settings": {"stack": stack, "fbcache-mag+compile": own,
                                          "compile+fa4-dense+fbcache-mag": fa4}})
        row = next(r for r in rows if r["setting"] == "stack")
        assert row["without_draft"] == expected
        assert row["vs_without_draft"] == (min(fa4_step, 6.0) * 2) / 5.0
    # the dense stack itself is compared with the same parts without it only
    assert bp.dense_baselines("compile+fa4-dense+fbcache-mag") == [frozenset({"compile", "fbcache-mag"})]
    assert bp.dense_baselines("fbcache-mag+compile") == []


def test_pipeline_benchmark_fastest_dense_path_includes_compiled_flash_attn_4():
    """The fastest dense path is any measured setting made of fa4-dense and compile only (in any order), never one
    with a cache, float8 or draft attention."""
    import benchmark_pipeline as bp

    def run(seconds, has_draft=False):
        return {"denoise_s": seconds, "steps": 2, "step_s": [seconds / 2] * 2, "classes": ["dense"] * 2,
                "classes_50": ["dense"] * 2, "has_draft": has_draft}

    settings = {"default": run(10.0), "fa4-dense": run(9.0), "compile+fa4-dense": run(7.0),
                "fbcache-mag+compile": run(3.0), "compile+fp8": run(5.0), "compile+draft": run(4.0, True)}
    rows = {r["setting"]: r for r in bp.summarize({"settings": settings})}
    assert rows["compile+draft"]["fastest_dense"] == "compile+fa4-dense"
    assert rows["compile+draft"]["vs_fastest_dense"] == 7.0 / 4.0

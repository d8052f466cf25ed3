import pytest

from draftattention_diffusers import DraftAttentionConfig
from draftattention_diffusers.config import make_config


def test_defaults():
    c = DraftAttentionConfig()
    assert (c.sparsity, c.region_size, c.selection, c.dense_steps_fraction, c.backend) == \
        (0.9, (8, 16), "topk", 0.25, "auto")
    assert c.tile_size == 128


@pytest.mark.parametrize("field,value,needle", [
    ("sparsity", 1.0, r"sparsity=1.0: expected a number in \[0, 1\)"),
    ("sparsity", -0.1, "sparsity"), ("sparsity", float("nan"), "sparsity"), ("sparsity", "0.5", "sparsity"),
    ("region_size", (8,), "region_size"), ("region_size", (0, 16), "region_size"),
    ("selection", "best", "selection='best': expected one of"), ("pooling", "min", "pooling"),
    ("dense_steps_fraction", 1.5, r"dense_steps_fraction=1.5: expected a number in \[0, 1\]"),
    ("dense_layers", (-1,), "dense_layers"), ("backend", "cuda", "backend='cuda'"),
    ("dense_backend", "x", "dense_backend"),
])
def test_invalid_values_name_the_field(field, value, needle):
    with pytest.raises(ValueError, match=needle):
        DraftAttentionConfig(**{field: value})


def test_make_config_and_overrides():
    c = make_config({"sparsity": 0.5}, dense_layers=[0, 1])
    assert c.sparsity == 0.5 and c.dense_layers == (0, 1)
    with pytest.raises(ValueError, match="unknown DraftAttentionConfig field"):
        make_config(None, sparsty=0.5)
    with pytest.raises(ValueError, match="config"):
        make_config(0.5)

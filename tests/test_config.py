import dataclasses

import numpy as np
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
    # not a pair / not a sequence: ValueError, not the TypeError of tuple(0)
    ("region_size", 0, r"region_size=0: expected two positive integers"), ("region_size", 8, "region_size"),
    ("region_size", "816", "region_size"), ("region_size", {8, 16}, "region_size"),
    ("region_size", (8.0, 16), "region_size"), ("region_size", None, "region_size"),
    ("dense_layers", 0, r"dense_layers=0: expected a sequence of non-negative block indices"),
    ("dense_layers", "0", "dense_layers"), ("dense_layers", (0.5,), "dense_layers"),
    # bool is an int to Python, never a number here (numpy's bool neither)
    ("sparsity", True, "sparsity=True"), ("sparsity", np.bool_(False), "sparsity"),
    ("dense_steps_fraction", False, "dense_steps_fraction"), ("dense_layers", (True,), "dense_layers"),
    ("region_size", (True, 16), "region_size"),
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


def test_numpy_numbers_are_accepted_as_python_numbers():
    c = DraftAttentionConfig(sparsity=np.float64(0.9), dense_steps_fraction=np.float32(0.5),
                             region_size=np.array([8, 16]), dense_layers=[np.int64(1), np.int32(3)])
    assert c == DraftAttentionConfig(sparsity=0.9, dense_steps_fraction=0.5, dense_layers=(1, 3))
    assert type(c.sparsity) is float and type(c.dense_steps_fraction) is float
    assert [type(x) for x in c.region_size + c.dense_layers] == [int] * 4
    assert c.replace(region_size=(np.int64(4), np.int64(32))).region_size == (4, 32)
    with pytest.raises(ValueError, match="sparsity"):
        DraftAttentionConfig(sparsity=np.float64(1.0))


def test_lists_become_tuples():
    c = DraftAttentionConfig(region_size=[8, 16], dense_layers=[0, 1])
    assert c.region_size == (8, 16) and c.dense_layers == (0, 1)


def test_config_is_frozen():
    c = DraftAttentionConfig(sparsity=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.sparsity = 0.9
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.dense_layers = (0,)
    assert c.sparsity == 0.5
    d = c.replace(sparsity=0.75)  # the way to change a field: a validated copy
    assert (c.sparsity, d.sparsity) == (0.5, 0.75)
    with pytest.raises(ValueError, match="sparsity"):
        c.replace(sparsity=2.0)
    assert hash(c) == hash(DraftAttentionConfig(sparsity=0.5))  # frozen and equal: usable as a key

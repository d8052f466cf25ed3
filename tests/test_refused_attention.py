"""Transformers whose attention draft attention cannot make sparse are refused by enable with their reason
(models/__init__.py::REFUSED), checked on the real diffusers classes."""

import pytest

from draftattention_diffusers.models import require_family


@pytest.mark.parametrize("module, name, reason", [
    ("latte_transformer_3d", "LatteTransformer3DModel", "no 3D self-attention.*spatial.*temporal"),
    ("transformer_sana_video", "SanaVideoTransformer3DModel", "linear attention \\(SanaLinearAttnProcessor3_0"),
    ("transformer_sana_wm", "SanaWMTransformer3DModel", "linear \\(bidirectional gated delta-net"),
    ("transformer_sana_wm_refiner", "SanaWMLTX2RefinerTransformer3DModel", "chunk-causal.*KV cache"),
    ("transformer_kandinsky6_sr", "Kandinsky6SRTransformer3DModel", "already block-sparse.*NABLA"),
])
def test_refused_with_its_reason(module, name, reason):
    import importlib

    cls = getattr(importlib.import_module(f"diffusers.models.transformers.{module}"), name)
    transformer = cls.__new__(cls)  # the class is what is refused
    with pytest.raises(ValueError, match=f"does not support {name}: .*{reason}"):
        require_family(transformer)
    subclass = type("MyLatte", (cls,), {})  # subclasses too
    with pytest.raises(ValueError, match=f"does not support MyLatte: .*{reason}"):
        require_family(subclass.__new__(subclass))

"""Cosmos (models/cosmos.py) beyond the shared family checks (tests/test_family_conformance.py, on its Predict2.5
tiny pipeline): Predict2 Video2World with a conditioning image (its conditioned frame runs at another timestep, so the per-token
time embeddings must follow the tile order), and Cosmos 1.0's transformer (learnable positions, one timestep per item)
with Transfer2.5's controlnet residuals, each at sparsity 0 against dense through the tile order.
(CosmosTransformer3DModel has no AttentionMixin in diffusers 0.42.1: the integration walks its modules instead.)"""

import pytest
import torch
from pipeline_utils import max_diff

import draftattention_diffusers.models as models
from draftattention_diffusers import draft_attention_enabled, enable_draft_attention, get_draft_stats
from draftattention_diffusers import disable_draft_attention
from draftattention_diffusers.models.cosmos import tiny_cosmos_transformer
from draftattention_diffusers.tiny import tiny_prompt_kwargs


@pytest.fixture(scope="module")
def cosmos_family():
    return next(f for f in models.families() if f.name == "cosmos")


def test_video2world_with_an_image_at_sparsity_zero(cosmos_family):
    from PIL import Image

    pipe = cosmos_family.tiny_variants["tiny-cosmos2-v2w"]()
    # 8 x 36 tokens per frame: each frame's 8x4 right strip is an edge tile after every frame's full regions, so the
    # tile order mixes the frames, whose time embeddings differ (frame 0 is the image's)
    size = dict(height=128, width=576, num_frames=5)
    image = Image.new("RGB", (576, 128), (200, 40, 90))

    def go():
        return pipe(image=image, **tiny_prompt_kwargs(pipe), **size, num_inference_steps=2, output_type="latent",
                    generator=torch.Generator().manual_seed(0)).frames

    base = go()
    with draft_attention_enabled(pipe, sparsity=0.0, dense_steps_fraction=0.0, backend="reference"):
        zero = go()
        stats = get_draft_stats(pipe).summary()
    assert stats["sparse_calls"] > 0 and stats["fallbacks"] == {}
    assert max_diff(zero, base) <= 1e-4 * max(1.0, base.abs().max().item())
    with draft_attention_enabled(pipe, sparsity=0.5, dense_steps_fraction=0.0):
        assert not torch.equal(go(), base)


def test_cosmos10_transformer_with_controlnet_residuals(cosmos_family):
    # Cosmos 1.0 Text2World's shape (learnable positions, no condition channel), a timestep per item, and residuals
    # added after every block as Transfer2.5's controlnet hands them (controlnet_block_every_n=1)
    tr = tiny_cosmos_transformer(0, 2, 2, in_channels=16, extra_pos_embed_type="learnable", controlnet_block_every_n=1)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 16, 2, 16, 64, generator=g)  # 2 x 8 x 32 tokens
    kw = dict(hidden_states=latents, timestep=torch.tensor([0.7]), encoder_hidden_states=torch.randn(1, 7, 32,
              generator=g), block_controlnet_hidden_states=[torch.randn(1, 512, 64, generator=g) for _ in range(2)],
              fps=24, return_dict=False)
    with torch.no_grad():
        base = tr(**kw)[0]
        enable_draft_attention(tr, sparsity=0.0, dense_steps_fraction=0.0, backend="reference")
        zero = tr(**kw)[0]
        stats = get_draft_stats(tr).summary()
        disable_draft_attention(tr)
        again = tr(**kw)[0]
    assert stats["sparse_calls"] == 2 and stats["fallbacks"] == {}
    assert max_diff(zero, base) <= 1e-4 * max(1.0, base.abs().max().item())
    assert torch.equal(again, base)


def test_cosmos3_omni_is_refused_with_its_reason():
    from diffusers.models.transformers.transformer_cosmos3 import Cosmos3OmniTransformer

    from draftattention_diffusers.models import require_family

    transformer = Cosmos3OmniTransformer.__new__(Cosmos3OmniTransformer)  # the class is what is refused
    with pytest.raises(ValueError, match="does not support Cosmos3OmniTransformer: its packed dual-pathway"):
        require_family(transformer)

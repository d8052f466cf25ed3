"""ConsisID (``ConsisIDTransformer3DModel``): identity-preserving image-to-video on CogVideoX-5B-I2V. Its blocks are
CogVideoX's (``transformer_blocks.<i>.attn1``: joint self-attention over ``[text, video]`` with diffusers'
``CogVideoXAttnProcessor2_0``, which calls ``F.scaled_dot_product_attention`` directly), so the family is
CogVideoX's: the same ``self_attention`` (leading text), roles, tile-order hooks (``patch_embed`` output, the
``image_rotary_emb`` argument, back before ``proj_out``) and the step from the pipeline loop (its
``CogVideoXDPMScheduler`` keeps no ``step_index``).

What ConsisID adds runs unchanged: the local facial extractor (face embeddings to 32 identity tokens) and the
perceiver cross-attention from the video tokens to them after every ``cross_attn_interval``-th block, which is per
video token (queries) and so follows the tile order like every other per-token layer.

``ConsisIDPipeline`` needs face embeddings (``id_cond``, ``id_vit_hidden``) computed by the user with diffusers'
``consisid_utils`` (insightface, facexlib, EVA-CLIP): it is served through the Python API, not loaded by the command
line, and has no tiny command-line model (tests/test_consisid.py builds a tiny one).
"""

from __future__ import annotations

import torch

from .base import TINY_TEXT_DIM
from .cogvideox import CogVideoXFamily

TINY_FACE_DIM = 16
"""Width of the tiny face embeddings (``id_cond`` and each ``id_vit_hidden`` scale)."""


def build_tiny_consisid(seed: int = 0, num_layers: int = 2, heads: int = 2):
    """A tiny random-weight ``ConsisIDPipeline``, float32 on CPU, no text encoder: the tiny CogVideoX VAE and
    scheduler settings, a transformer taking noise and image latents (4 + 4 channels) with RoPE and the face modules (a
    perceiver cross-attention after every block, one extractor layer per face scale). Head dim 48 (the face
    cross-attention's key width is 2/3 of the model width); 128x512 pixels give 8x32 tokens per frame."""
    from diffusers import CogVideoXDPMScheduler, ConsisIDTransformer3DModel
    # the module itself: diffusers exports a placeholder under its top-level name without OpenCV, which the pipeline
    # uses only to draw face key points (is_kps=True)
    from diffusers.pipelines.consisid.pipeline_consisid import ConsisIDPipeline

    from .cogvideox import build_tiny_cogvideox

    vae = build_tiny_cogvideox(seed, 1, heads).vae
    inner = heads * 48
    torch.manual_seed(seed + 2)
    transformer = ConsisIDTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=48, in_channels=8, out_channels=4, time_embed_dim=32,
        text_embed_dim=TINY_TEXT_DIM, num_layers=num_layers, sample_height=16, sample_width=64, sample_frames=9,
        patch_size=2, max_text_seq_length=16, use_rotary_positional_embeddings=True, is_train_face=True,
        cross_attn_interval=1, cross_attn_dim_head=16, cross_attn_num_heads=2, LFE_id_dim=TINY_FACE_DIM,
        LFE_vit_dim=TINY_FACE_DIM, LFE_depth=2, LFE_dim_head=8, LFE_num_heads=2, LFE_num_id_token=2,
        LFE_num_querie=4, LFE_output_dim=inner * 2 // 3, LFE_ff_mult=1, LFE_num_scale=2).eval()
    # the scheduler class the pipeline declares, with the tiny CogVideoX pipelines' settings
    scheduler = CogVideoXDPMScheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True, clip_sample=False,
                                      timestep_spacing="trailing", snr_shift_scale=1.0)
    return ConsisIDPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)


class ConsisIDFamily(CogVideoXFamily):
    """ConsisID: CogVideoX's family (leading text, tile order per forward) on its own transformer class."""

    name = "consisid"
    title = "ConsisID"
    transformer_classes = ("ConsisIDTransformer3DModel",)
    pipelines = {}  # needs face embeddings the command line does not compute (module docstring)
    other_pipelines = ("ConsisIDPipeline",)
    default_fps = 8  # the pipeline's example exports at 8 fps
    tiny_variants = {}
    rope_argument_index = 4  # forward(hidden_states, encoder_hidden_states, timestep, timestep_cond, image_rotary_emb)

    def tiny_prompt_kwargs(self, pipe, emb, text_len, valid_len, negative):
        """CogVideoX's prompt embeddings plus fixed random face embeddings (``id_cond [1, D]`` and one
        ``[1, 8, D]`` ViT feature per face scale of the transformer's extractor)."""
        out = super().tiny_prompt_kwargs(pipe, emb, text_len, valid_len, negative)
        config = pipe.transformer.config
        out.update(id_cond=emb(1, config.LFE_id_dim),
                   id_vit_hidden=[emb(1, 8, config.LFE_vit_dim) for _ in range(config.LFE_num_scale)])
        return out

"""Tiny random-weight Wan / HunyuanVideo pipelines: no download, no text encoder, run on a CPU in seconds.

They exercise exactly the diffusers code paths of the real models (same classes, token layout, RoPE, masks), with
a handful of channels. Prompts are fixed random embeddings (:func:`tiny_prompt_kwargs`).

Example:
    >>> pipe = build_tiny_pipeline("wan")
    >>> video = pipe(**tiny_prompt_kwargs(pipe), height=64, width=128, num_frames=5, num_inference_steps=2,
    ...              output_type="latent").frames
"""

from __future__ import annotations

import torch

TINY_FAMILIES = ("wan", "wan22", "hunyuan")
_TEXT_DIM = 32


def _seeded(seed: int):
    torch.manual_seed(seed)


def build_tiny_pipeline(family: str = "wan", seed: int = 0, num_layers: int = 2, heads: int = 2):
    """A tiny pipeline of ``family``: ``"wan"`` (Wan2.1 T2V), ``"wan22"`` (Wan2.2 A14B-style, two transformers
    with a boundary) or ``"hunyuan"`` (HunyuanVideo). Weights are random (seeded), float32, on CPU.

    Head dim is 32; VAE compresses 8x spatially and 4x temporally like the real models, so ``height x width``
    pixels give ``height/16 x width/16`` tokens per frame.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    if family in ("wan", "wan22"):
        from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel

        def transformer(s):
            _seeded(s)
            return WanTransformer3DModel(
                patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=32, in_channels=16,
                out_channels=16, text_dim=_TEXT_DIM, freq_dim=32, ffn_dim=64, num_layers=num_layers,
                cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=64,
            ).eval()

        _seeded(seed)
        vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True]).eval()
        kwargs = dict(transformer=transformer(seed + 1))
        if family == "wan22":
            kwargs.update(transformer_2=transformer(seed + 2), boundary_ratio=0.5)
        return WanPipeline(tokenizer=None, text_encoder=None, vae=vae,
                           scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), **kwargs)
    if family == "hunyuan":
        from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoPipeline, HunyuanVideoTransformer3DModel

        _seeded(seed + 1)
        tr = HunyuanVideoTransformer3DModel(
            in_channels=4, out_channels=4, num_attention_heads=heads, attention_head_dim=32,
            num_layers=max(1, num_layers // 2), num_single_layers=max(1, num_layers - num_layers // 2),
            num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1, qk_norm="rms_norm",
            guidance_embeds=True, text_embed_dim=_TEXT_DIM, pooled_projection_dim=16, rope_theta=256.0,
            rope_axes_dim=(8, 12, 12),
        ).eval()
        _seeded(seed)
        vae = AutoencoderKLHunyuanVideo(
            in_channels=3, out_channels=3, latent_channels=4,
            down_block_types=("HunyuanVideoDownBlock3D",) * 4, up_block_types=("HunyuanVideoUpBlock3D",) * 4,
            block_out_channels=(8, 8, 8, 8), layers_per_block=1, act_fn="silu", norm_num_groups=4,
            scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=4,
            mid_block_add_attention=False,
        ).eval()
        return HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=tr, vae=vae,
                                    scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
                                    text_encoder_2=None, tokenizer_2=None)
    raise ValueError(f"family={family!r}: expected one of {TINY_FAMILIES}")


def tiny_prompt_kwargs(pipe, seed: int = 0, text_len: int = 16, valid_len: int | None = None,
                       negative: bool = True) -> dict:
    """Fixed random prompt embeddings for a tiny pipeline (what a text encoder would have produced).

    ``valid_len`` (HunyuanVideo) marks only the first ``valid_len`` of ``text_len`` text tokens as real, the rest
    as padding, as the tokenizer's ``max_length`` padding does.
    """
    g = torch.Generator().manual_seed(seed)
    emb = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    if type(pipe).__name__.startswith("HunyuanVideo"):
        mask = torch.zeros(1, text_len, dtype=torch.long)
        mask[:, : text_len if valid_len is None else valid_len] = 1
        return dict(prompt_embeds=emb(1, text_len, _TEXT_DIM), pooled_prompt_embeds=emb(1, 16),
                    prompt_attention_mask=mask)
    out = dict(prompt_embeds=emb(1, text_len, _TEXT_DIM))
    if negative:
        out["negative_prompt_embeds"] = emb(1, text_len, _TEXT_DIM)
    return out

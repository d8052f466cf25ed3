"""Draft attention in diffusers' modular pipelines (Modular Diffusers, diffusers 0.42.1), built from the denoise blocks
diffusers ships for Wan2.1, Wan2.2 (two experts), LTX-Video, LTX-2 (2.3 with STG; its condition blocks, a keyframe
appended behind the video), HunyuanVideo-1.5 and Helios (image-to-video too, with their encoder steps, for Wan2.2, LTX,
LTX-2, HunyuanVideo-1.5 and Helios; Wan2.2 VACE; Helios's video-to-video) with the tiny models' components. The step
comes from the modular pipeline on the call stack and its scheduler, as for a ``DiffusionPipeline``; Helios runs its
chunk loop (and, in the pyramid pipelines, its stage loop) in blocks, whose ``__call__`` holds the section index
(``ModelFamily.section_loops``). Grids of 2 x 2 regions per frame (256 x 512 pixels), so the tile order is not the
identity."""

import copy

import pytest
import torch
from diffusers.guiders import ClassifierFreeGuidance
from stack_utils import diff_footprints, footprint

from draftattention_diffusers import draft_attention_enabled, enable_draft_attention, get_draft_stats
from draftattention_diffusers.tiny import build_tiny_pipeline, tiny_prompt_kwargs

SIZE = dict(height=256, width=512, num_frames=9)
# Helios: two chunks of 2 latent frames (5 frames each) of 16 x 32 tokens (2 x 2 regions)
HELIOS_CHUNKS = dict(height=256, width=512, num_frames=10, num_latent_frames_per_chunk=2)


def _cfg(scale: float) -> ClassifierFreeGuidance:
    return ClassifierFreeGuidance(guidance_scale=scale)


def _image(height: int, width: int):
    import PIL.Image

    pixels = torch.Generator().manual_seed(0)
    return PIL.Image.fromarray((torch.rand(height, width, 3, generator=pixels) * 255).to(torch.uint8).numpy())


def _ltx2_prompt(base) -> dict:
    """LTX-2's denoise blocks take the text connectors' outputs (LTX2TextConnectorStep computes them from a
    tokenizer's padding side, which the tiny pipeline has not): computed here as that step does."""
    kw = tiny_prompt_kwargs(base)
    emb = torch.cat([kw["negative_prompt_embeds"], kw["prompt_embeds"]])
    mask = torch.cat([kw["negative_prompt_attention_mask"], kw["prompt_attention_mask"]])
    with torch.no_grad():
        video, audio, keep = base.connectors(emb, mask, padding_side="left")
    return dict(negative_connector_prompt_embeds=video[:1], negative_connector_audio_prompt_embeds=audio[:1],
                negative_connector_attention_mask=keep[:1], connector_prompt_embeds=video[1:],
                connector_audio_prompt_embeds=audio[1:], connector_attention_mask=keep[1:], batch_size=1,
                frame_rate=24.0, dtype=torch.float32)


def _ltx2_condition(latent_index: int):
    from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition

    return LTX2VideoCondition(frames=_image(512, 1024), index=latent_index, crf=0)  # (crf 0: no H.264 round trip)


def _ltx2_guider(scale: float):
    """The LTX-2 denoise block's default guider with STG on block 0 (its default, block 28, is past the tiny model)."""
    from diffusers import LTX2Guidance

    return LTX2Guidance(guidance_scale=scale, stg_scale=1.0, modality_scale=3.0, guidance_rescale=0.7,
                        spatio_temporal_guidance_blocks=[0])


def _without(blocks_class, *names):
    """diffusers' whole blocks for a task without the named sub-blocks (the text encoder: the tiny pipelines pass
    embeddings; the decoder where the test reads latents)."""
    def build():
        blocks = blocks_class()
        for name in names:
            blocks.sub_blocks.pop(name)
        return blocks
    return build


def _blocks(family: str) -> dict:
    """How to build ``family``'s modular pipeline: the tiny pipeline whose components it takes, diffusers' denoise
    blocks, the components beyond transformer and scheduler, the call's size and prompt, the components created
    from the blocks' own defaults, the transformer forwards per step (``passes``), the video self-attention calls per
    forward (``calls``, default 1) and the passes per step that compute no attention (``skipping_passes``)."""
    from diffusers import HeliosScheduler
    from diffusers.modular_pipelines import SequentialPipelineBlocks
    from diffusers.modular_pipelines.helios.modular_blocks_helios import HeliosAutoBlocks, HeliosCoreDenoiseStep
    from diffusers.modular_pipelines.helios.modular_blocks_helios_pyramid import HeliosPyramidCoreDenoiseStep
    from diffusers.modular_pipelines.hunyuan_video1_5.modular_blocks_hunyuan_video1_5 import (
        HunyuanVideo15CoreDenoiseStep, HunyuanVideo15Image2VideoBlocks, HunyuanVideo15VaeDecoderStep)
    from diffusers.modular_pipelines.ltx2.modular_blocks_ltx2 import (LTX2AutoVaeEncoderStep, LTX2ConditionBlocks,
                                                                      LTX2CoreDenoiseStep,
                                                                      LTX2Image2VideoCoreDenoiseStep)
    from diffusers.modular_pipelines.ltx.modular_blocks_ltx import LTXCoreDenoiseStep, LTXImage2VideoBlocks
    from diffusers.modular_pipelines.wan.modular_blocks_wan import WanCoreDenoiseStep
    from diffusers.modular_pipelines.wan.modular_blocks_wan22 import Wan22CoreDenoiseStep
    from diffusers.modular_pipelines.wan.modular_blocks_wan_vace import Wan22VaceBlocks
    from diffusers.modular_pipelines.wan.modular_blocks_wan22_i2v import (Wan22Image2VideoCoreDenoiseStep,
                                                                          WanImage2VideoVaeEncoderStep)

    plain = dict(prompt=tiny_prompt_kwargs, load=(), passes=2)  # classifier-free guidance: 2 forwards a step
    return {
        "wan": dict(plain, tiny="wan", blocks=WanCoreDenoiseStep, size=SIZE, components=lambda p: dict(guider=_cfg(4))),
        "wan22": dict(plain, tiny="wan22", blocks=Wan22CoreDenoiseStep, size=SIZE, components=lambda p: dict(
            transformer_2=p.transformer_2, guider=_cfg(4), guider_2=_cfg(3))),
        # image-to-video: the blocks' VAE encoder step encodes the image (36-channel transformer input)
        "wan22-i2v": dict(plain, tiny="wan22-i2v", load=("video_processor",), size=dict(SIZE, image=_image(256, 512)),
                          blocks=lambda: SequentialPipelineBlocks.from_blocks_dict(
                              {"vae_encoder": WanImage2VideoVaeEncoderStep(),
                               "denoise": Wan22Image2VideoCoreDenoiseStep()}),
                          components=lambda p: dict(transformer_2=p.transformer_2, vae=p.vae, guider=_cfg(4),
                                                    guider_2=_cfg(3))),
        # Wan2.2 VACE: both experts VACE transformers, a control video through the blocks' VACE encoder step
        "wan22-vace": dict(plain, tiny="wan-vace", blocks=_without(Wan22VaceBlocks, "text_encoder", "decode"),
                           load=("video_processor",), size=dict(SIZE, video=[_image(256, 512)] * 9),
                           components=lambda p: dict(transformer_2=copy.deepcopy(p.transformer), vae=p.vae,
                                                     guider=_cfg(4), guider_2=_cfg(3)), calls=2),
        # LTX's VAE compresses 32x in space (patch 1): 512 x 1024 pixels are 16 x 32 tokens a frame
        "ltx": dict(plain, tiny="ltx", blocks=LTXCoreDenoiseStep, size=dict(height=512, width=1024, num_frames=17),
                    components=lambda p: dict(guider=_cfg(3))),
        "ltx-i2v": dict(plain, tiny="ltx", blocks=_without(LTXImage2VideoBlocks, "text_encoder", "decode"),
                        load=("pachifier", "video_processor"),
                        size=dict(height=512, width=1024, num_frames=17, image=_image(512, 1024)),
                        components=lambda p: dict(vae=p.vae, guider=_cfg(3))),
        # LTX-2: its own guiders (LTX2Guidance: conditional, unconditional, STG and modality-isolated passes)
        "ltx2-i2v": dict(tiny="ltx2", blocks=lambda: SequentialPipelineBlocks.from_blocks_dict(
            {"vae_encoder": LTX2AutoVaeEncoderStep(), "denoise": LTX2Image2VideoCoreDenoiseStep()}),
            size=dict(height=512, width=1024, num_frames=17, image=_image(512, 1024)),
            components=lambda p: dict(audio_vae=p.audio_vae, vae=p.vae), prompt=_ltx2_prompt,
            load=("guider", "audio_guider", "video_processor"), passes=4),
        "ltx2": dict(tiny="ltx2", blocks=LTX2CoreDenoiseStep, size=dict(height=512, width=1024, num_frames=17),
                     components=lambda p: dict(audio_vae=p.audio_vae), prompt=_ltx2_prompt,
                     load=("guider", "audio_guider"), passes=4),
        # frame conditions at latent frames 0 (replaced tokens) and 1 (keyframe tokens appended behind the video grid)
        "ltx2-condition": dict(tiny="ltx2", blocks=_without(LTX2ConditionBlocks, "prompt_enhancer", "text_encoder",
                                                            "duration", "decode"),
                               size=dict(height=512, width=1024, num_frames=17, conditions=[
                                   _ltx2_condition(0), _ltx2_condition(1)]),
                               components=lambda p: dict(audio_vae=p.audio_vae, vae=p.vae), prompt=_ltx2_prompt,
                               load=("guider", "audio_guider", "video_processor"), passes=4),
        # LTX-2.3 (perturbed attention): STG on the tiny model's one block, so its STG pass computes no attention there
        "ltx2.3": dict(tiny="ltx2.3", blocks=LTX2CoreDenoiseStep, size=dict(height=512, width=1024, num_frames=17),
                       components=lambda p: dict(audio_vae=p.audio_vae, guider=_ltx2_guider(3.0),
                                                 audio_guider=_ltx2_guider(7.0)),
                       prompt=_ltx2_prompt, load=(), passes=4, skipping_passes=1),
        # with the VAE decoder, whose VAE gives the latent channel count; the decode is most of the time on a CPU,
        # so 2 latent frames of 8 x 32 tokens (two regions side by side)
        "hunyuan15": dict(plain, tiny="hunyuan15", blocks=lambda: SequentialPipelineBlocks.from_blocks_dict(
            {"denoise": HunyuanVideo15CoreDenoiseStep(), "decode": HunyuanVideo15VaeDecoderStep()}),
            size=dict(height=128, width=512, num_frames=5), components=lambda p: dict(guider=p.guider, vae=p.vae)),
        "hunyuan15-i2v": dict(plain, tiny="hunyuan15-i2v", blocks=_without(HunyuanVideo15Image2VideoBlocks,
                                                                            "text_encoder"),
                              load=("video_processor",),
                              size=dict(height=128, width=512, num_frames=5, image=_image(128, 512)),
                              components=lambda p: dict(vae=p.vae, guider=p.guider, image_encoder=p.image_encoder,
                                                        feature_extractor=p.feature_extractor)),
        "helios": dict(plain, tiny="helios", blocks=HeliosCoreDenoiseStep, size=HELIOS_CHUNKS,
                       components=lambda p: dict(guider=_cfg(4))),
        # the auto blocks with a video (nine frames): video-to-video's VAE encoder and denoise steps
        "helios-v2v": dict(plain, tiny="helios", blocks=_without(HeliosAutoBlocks, "text_encoder", "decode"),
                           load=("video_processor",), size=dict(HELIOS_CHUNKS, video=[_image(256, 512)] * 9),
                           components=lambda p: dict(vae=p.vae, guider=_cfg(4))),
        # the auto blocks with an image: image-to-video's VAE encoder and denoise steps
        "helios-i2v": dict(plain, tiny="helios", blocks=_without(HeliosAutoBlocks, "text_encoder", "decode"),
                           load=("video_processor",), size=dict(HELIOS_CHUNKS, image=_image(256, 512)),
                           components=lambda p: dict(vae=p.vae, guider=_cfg(4))),
        # each chunk in three stages (8 x 16, 16 x 32, 32 x 64 latents)
        "helios-pyramid": dict(plain, tiny="helios", blocks=HeliosPyramidCoreDenoiseStep,
                               size=dict(HELIOS_CHUNKS, pyramid_num_inference_steps_list=[2, 2, 2]),
                               components=lambda p: dict(scheduler=HeliosScheduler(stages=3), guider=_cfg(4))),
    }[family]


def modular(family: str):
    """A modular pipeline of ``family``'s denoise blocks on its tiny model, its call and a forward counter."""
    how = _blocks(family)
    base = build_tiny_pipeline(how["tiny"], num_layers=1)
    pipe = how["blocks"]().init_pipeline()
    pipe.update_components(**{"transformer": base.transformer, "scheduler": base.scheduler, **how["components"](base)})
    if how["load"]:
        pipe.load_components(names=list(how["load"]))  # from the blocks' default configs, no download
    forwards = []
    for name in ("transformer", "transformer_2"):  # Wan2.2: both experts
        if getattr(pipe, name, None) is not None:
            getattr(pipe, name).register_forward_pre_hook(lambda m, a: forwards.append(1))
    kwargs = dict(how["prompt"](base), **how["size"])

    def call(steps: int) -> torch.Tensor:  # (the pyramid's steps: its pyramid_num_inference_steps_list)
        count = {} if "pyramid_num_inference_steps_list" in kwargs else dict(num_inference_steps=steps)
        return pipe(**kwargs, **count, generator=torch.Generator().manual_seed(0), output="latents")
    return pipe, call, forwards


@pytest.mark.parametrize("family", ["wan", "wan22", "wan22-i2v", "ltx", "ltx2", "ltx2.3", "hunyuan15", "helios",
                                    *(pytest.param(f, marks=pytest.mark.slow)  # the same path, image-conditioned
                                      for f in ("wan22-vace", "ltx-i2v", "ltx2-i2v", "ltx2-condition", "hunyuan15-i2v",
                                                "helios-i2v", "helios-v2v"))])
def test_modular_pipeline_equals_dense_at_sparsity_0_and_runs_its_schedule(family):
    pipe, call, forwards = modular(family)
    before = footprint(pipe)
    dense = call(steps=4)
    with draft_attention_enabled(pipe, sparsity=0.0, dense_steps_fraction=0.0):
        every_tile = call(steps=4)
        stats = get_draft_stats(pipe).summary()
    assert stats["sparse_calls"] > 0 and stats["dense_calls"] == 0 and stats["fallbacks"] == {}
    assert (every_tile - dense).abs().max().item() <= 1e-5 * max(1.0, dense.abs().max().item())

    forwards.clear()
    with draft_attention_enabled(pipe, sparsity=0.75):  # 8 steps: 2 dense, 6 sparse (per chunk for Helios)
        sparse = call(steps=8)
        stats = get_draft_stats(pipe).summary()
    schedule = {0: "dense", 1: "dense", **{i: "sparse" for i in range(2, 8)}}
    chunks = max(1, len(stats["sections"]))
    assert stats["forwards"] == len(forwards)  # every forward of the call, all chunks
    helios = family.startswith("helios")
    assert [s["steps"] for s in stats["sections"]] == ([schedule] * 2 if helios else [])
    if not helios:
        assert stats["steps"] == schedule
    assert stats["sparse_calls"] == 3 * stats["dense_calls"] > 0
    assert len(forwards) == chunks * 8 * _blocks(family)["passes"]  # guidance passes a step
    # one block: its video self-attention calls a forward (VACE: the main and the VACE block), less the forwards per
    # step in which the model computes no attention there (LTX-2.3's STG pass: not counted)
    how = _blocks(family)
    counted = how.get("calls", 1) * (len(forwards) - chunks * 8 * how.get("skipping_passes", 0))
    assert stats["sparse_calls"] + stats["dense_calls"] == counted
    assert stats["mean_sparsity"] > 0.6 and torch.isfinite(sparse).all() and not torch.equal(sparse, dense)

    assert diff_footprints(before, footprint(pipe)) == []  # disabled: no hook or processor left
    assert torch.equal(call(steps=4), dense)


@pytest.mark.parametrize("pipeline", ["modular", "classic"])
def test_helios_pyramid_statistics_cover_every_chunk_and_stage(pipeline):
    # each stage of a pyramid chunk is a denoising loop with new timesteps and its own warm-up (1 of 2 steps dense);
    # the statistics cover the whole call, one section per chunk and stage, and the next call starts fresh
    if pipeline == "modular":
        pipe, call, forwards = modular("helios-pyramid")
    else:
        from diffusers import HeliosPyramidPipeline, HeliosScheduler
        base = build_tiny_pipeline("helios", num_layers=1)
        pipe = HeliosPyramidPipeline(tokenizer=None, text_encoder=None, vae=base.vae, transformer=base.transformer,
                                     scheduler=HeliosScheduler(stages=3))
        forwards = []
        pipe.transformer.register_forward_pre_hook(lambda m, a: forwards.append(1))

        def call(steps):
            return pipe(**tiny_prompt_kwargs(base), **HELIOS_CHUNKS,
                        pyramid_num_inference_steps_list=[steps] * 3, output_type="latent",
                        generator=torch.Generator().manual_seed(0)).frames
    enable_draft_attention(pipe, sparsity=0.75)
    for _ in range(2):  # the second call's statistics are its own
        forwards.clear()
        call(2)
        stats = get_draft_stats(pipe).summary()
        assert [s["section"] for s in stats["sections"]] == list(range(6))  # 2 chunks x 3 stages
        assert all(s["steps"] == {0: "dense", 1: "sparse"} for s in stats["sections"])
        assert stats["forwards"] == len(forwards) == 2 * 3 * 2 * 2  # chunks x stages x steps x CFG
        # stage 0's grid (2 frames of 4 x 8 tokens) is under one tile: dense, and said so; stages 1-2 sparse
        assert [(s["sparse_calls"], s["dense_calls"]) for s in stats["sections"]] == [(0, 4), (2, 2), (2, 2)] * 2
        assert list(stats["fallbacks"].values()) == [4] and "fewer than one 128-token tile" in str(stats["fallbacks"])


def test_fast_stack_on_a_modular_pipeline_refuses_what_cannot_run_and_runs_the_rest():
    pytest.importorskip("cache_dit")
    from draftattention_diffusers import disable_fast_stack, enable_fast_stack

    pipe, call, _ = modular("wan")
    before = footprint(pipe)
    dense = call(steps=4)
    # modular Wan's loop sets no cache_context (diffusers 0.42.1), and cache-dit takes DiffusionPipelines only
    for cache, why in (("first_block", "does not wrap its transformer calls in `transformer.cache_context"),
                       ("dbcache", "not a modular pipeline")):
        with pytest.raises(ValueError, match=why):
            enable_fast_stack(pipe, cache, compile=False)
        assert diff_footprints(before, footprint(pipe)) == []
    enable_fast_stack(pipe, None, compile=False, sparsity=0.0, dense_steps_fraction=0.0)
    try:
        assert (call(steps=4) - dense).abs().max().item() <= 1e-5 * max(1.0, dense.abs().max().item())
        assert get_draft_stats(pipe).summary()["sparse_calls"] > 0
    finally:
        disable_fast_stack(pipe)
    assert diff_footprints(before, footprint(pipe)) == []

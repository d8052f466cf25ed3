"""What a model family is (:class:`ModelFamily`): which attention modules are video self-attention, the token grid
of a forward call, the model's own dense processor, how to compute q, k, v around our attention call, the tile-order
hooks, its context-parallel plan, the pipelines it serves and how the command line loads them, and its tiny
random-weight pipelines."""

from __future__ import annotations

import copy
import functools
import re
import types
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from ..core.layout import VideoGrid

# attend(q, k, v, text_len, attention_mask) -> out [B, S, H, D] in the order of q
AttendFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, Any], torch.Tensor]


@dataclass(frozen=True)
class AttentionRole:
    """What one attention module of a transformer is.

    ``video_self``: video self-attention that draft attention may sparsify; ``block_index`` is what
    ``dense_layers`` refers to. Everything else (cross-attention, text refiner) always runs ``default_processor``:
    the processor the module had before draft attention (the user's, if they set one), which is also the dense
    path of video self-attention. ``custom``: that processor is not of the model's own class (a user's processor;
    sparse calls bypass it, which draft attention warns about).
    """

    name: str
    video_self: bool
    block_index: int | None
    default_processor: Any
    custom: bool = False
    routed_processor: Any = None
    """Set when draft attention attaches (families leave it None): the model's own processor instance whose
    ``__call__`` runs, with its attention call routed to draft attention (``integration/routing.py``), in the
    forwards draft attention computes (the default processor, or a new one where that is a user's)."""
    dense_reason: str | None = None
    """Set when draft attention attaches: why this video self-attention module always runs dense (its processor's
    attention call cannot be routed in this diffusers release)."""
    keywords: frozenset[str] | None = None
    """Set when draft attention attaches: the keyword names ``default_processor`` takes (None: any), which is what
    diffusers would pass it."""


TEXT_POSITIONS = ("none", "trailing", "leading")
"""Where text tokens sit in a family's video self-attention sequence: none (text only in cross-attention), after
the video tokens, before them (CogVideoX). ``attend`` always takes the video tokens first, then the text
(``core`` has one layout): a ``leading`` family's ``self_attention`` builds q, k, v as ``[video, text]`` and splits
the output back (attention is equivariant to the order of the tokens it is given)."""

TINY_TEXT_DIM = 32
"""Text-embedding width of every tiny random-weight pipeline (its fixed random prompts have this width)."""


INPUT_KINDS = ("image", "video")
"""Files the command line can pass to a pipeline call: ``--image PATH`` (one picture) and ``--video PATH`` (frames)."""


@dataclass(frozen=True)
class PipelineInput:
    """One file input a pipeline's ``__call__`` takes: ``kind`` (``"image"``: ``--image``, passed as one RGB PIL
    image; ``"video"``: ``--video``, passed as a list of RGB PIL frames) under the pipeline's own ``argument`` name.
    ``required``: the pipeline cannot run without it. ``same_frames`` (videos): diffusers needs the video to have
    exactly ``num_frames`` frames (the command line checks it, and takes ``num_frames`` from the video when
    ``--frames`` is not given)."""

    kind: str
    argument: str
    required: bool = False
    same_frames: bool = False

    def __post_init__(self) -> None:
        if self.kind not in INPUT_KINDS:
            raise ValueError(f"PipelineInput kind={self.kind!r}: expected one of {INPUT_KINDS}")
        if self.same_frames and self.kind != "video":
            raise ValueError("PipelineInput.same_frames applies to videos only")


IMAGE_TO_VIDEO = (PipelineInput("image", "image", required=True),)
"""The inputs of an image-to-video pipeline: ``--image``, required, as its ``image`` argument."""


@dataclass(frozen=True)
class LoadRecipe:
    """How the command line loads one pipeline class of a family from a hub id or a local folder, and what it
    passes to it.

    Loading: the dtypes of the transformer(s) (``transformer``, ``transformer_2``), the VAE, named other components
    (``component_dtypes``, e.g. ``(("image_encoder", torch.float32),)``) and every other component, and whether the
    VAE decodes in tiles. Inputs: the files its ``__call__`` takes (``inputs``, :class:`PipelineInput`).
    ``needs_one_of``: input kinds of which the pipeline needs at least one (Cosmos Predict2 Video2World: an image or a
    video), where no single input is required on its own.
    ``loads_as``: input kind -> another pipeline class of the family that the command line loads instead when
    that input is given (a text-to-video checkpoint whose model also does image-to-video, e.g. Wan2.2 TI2V-5B),
    only when the checkpoint's ``model_index.json`` sets ``loads_as_if`` to true (None: always).
    ``min_frames``: the fewest frames for which the pipeline returns a finite video, with why
    (``min_frames_why``); fewer are refused before loading.
    """

    transformer_dtype: torch.dtype
    vae_dtype: torch.dtype
    rest_dtype: torch.dtype
    vae_tiling: bool = False
    component_dtypes: tuple[tuple[str, torch.dtype], ...] = ()
    inputs: tuple[PipelineInput, ...] = ()
    needs_one_of: tuple[str, ...] = ()
    loads_as: dict[str, str] = field(default_factory=dict)
    loads_as_if: str | None = None
    min_frames: int = 1
    min_frames_why: str = ""

    def __post_init__(self) -> None:
        kinds = [i.kind for i in self.inputs]
        if len(set(kinds)) != len(kinds) or not set(self.loads_as) <= set(INPUT_KINDS):
            raise ValueError(f"LoadRecipe: one input per kind ({INPUT_KINDS}), and loads_as keyed by them")
        if not set(self.needs_one_of) <= set(kinds):
            raise ValueError(f"LoadRecipe: needs_one_of {self.needs_one_of} must name inputs it takes ({kinds})")

    @property
    def needs_input(self) -> bool:
        """True when the pipeline cannot run from a prompt alone (a required input, or one of ``needs_one_of``)."""
        return bool(self.needs_one_of) or any(i.required for i in self.inputs)

    def dtypes(self) -> dict[str, torch.dtype]:
        """The per-component ``dtype`` mapping of diffusers' ``DiffusionPipeline.from_pretrained``."""
        return {"transformer": self.transformer_dtype, "transformer_2": self.transformer_dtype,
                "vae": self.vae_dtype, **dict(self.component_dtypes), "default": self.rest_dtype}

    def takes(self, kind: str) -> PipelineInput | None:
        """The input of that kind (``"image"``, ``"video"``) the pipeline takes, or None."""
        return next((i for i in self.inputs if i.kind == kind), None)

    def loads_as_for(self, kinds, model_index: dict[str, Any]) -> str | None:
        """The class to load instead for the given input kinds and ``model_index.json`` entries, or None."""
        if self.loads_as_if is not None and not model_index.get(self.loads_as_if):
            return None
        return next((self.loads_as[k] for k in kinds if k in self.loads_as), None)

    def load(self, pipeline_class: str, model: str, **kwargs: Any):
        """``diffusers.<pipeline_class>.from_pretrained(model, dtype=..., **kwargs)`` with this recipe."""
        import diffusers

        pipe = getattr(diffusers, pipeline_class).from_pretrained(model, dtype=self.dtypes(), **kwargs)
        if self.vae_tiling:
            pipe.vae.enable_tiling()
        return pipe


TinyBuilder = Callable[[int, int, int], Any]  # (seed, num_layers, heads) -> a tiny random-weight pipeline


@dataclass(frozen=True)
class TinyPipeline:
    """A tiny pipeline's builder with what the command line must know before building it: its pipeline class
    (``pipeline``) and the ``model_index.json`` entries it has (``model_index``), so that ``--image`` / ``--video``
    are checked as for a real checkpoint. Called like the builder. (A bare builder in ``tiny_variants`` works too;
    its inputs are then checked once it is built.)"""

    build: TinyBuilder
    pipeline: str
    model_index: dict[str, Any] = field(default_factory=dict)

    def __call__(self, seed: int = 0, num_layers: int = 2, heads: int = 2):
        return self.build(seed, num_layers, heads)


class ModelFamily:
    """One supported model family (a plug-in): everything draft attention, the command line and the tests know
    about its models. A family is a module in ``models/`` with a subclass of this class, and one line in
    ``models/__init__.py::_FAMILIES``; nothing outside ``models/`` names a family.

    A family states facts and lets the model's own code run. Its video self-attention runs one of two ways:

    * **routed** (``routes_attention_call = True``, the default): the model's own processor runs unchanged and only
      its ``dispatch_attention_fn(q, k, v, ...)`` call becomes draft attention (``integration/routing.py``). The
      family then needs no attention math at all: classes, which modules are video self-attention (``roles``), the
      token grid (``grid``), where the video tokens sit in the sequence (``text_position``), how the model calls its
      processor (``call_default``), and optionally the tile-order hooks.
    * **its own** ``self_attention``: for models whose processors call ``F.scaled_dot_product_attention`` directly
      (CogVideoX) or build what draft attention does not need (HunyuanVideo-1.5's ``[B, 1, S, S]`` mask).

    The other methods have defaults that fit a family without text in self-attention and with diffusers' own
    context-parallel plan.
    """

    name: ClassVar[str] = ""
    """Internal name, the one vocabulary for families ("wan", "hunyuan_video")."""
    title: ClassVar[str] = ""
    """The models in messages ("Wan2.1 / Wan2.2")."""
    transformer_classes: ClassVar[tuple[str, ...]] = ()
    """diffusers transformer class names (subclasses are found too)."""
    text_position: ClassVar[str] = "none"
    """Text tokens in the video self-attention sequence: one of :data:`TEXT_POSITIONS`. For a routed family,
    ``leading`` means everything before the video tokens (text, keyframes, history) is a dense prefix and the video
    tokens are the sequence's tail; ``trailing`` that they are its head."""
    routes_attention_call: ClassVar[bool] = True
    """The model's own processor runs and its ``dispatch_attention_fn`` call becomes draft attention (see the class
    docstring); False: the family implements :meth:`self_attention`."""
    processor_class: ClassVar[type | None] = None
    """The model's own processor class for video self-attention where the attention module does not declare it
    (``_default_processor_cls``): what runs sparse steps when a user's processor sits on the module."""
    checked_diffusers: ClassVar[str] = "0.42"
    """The diffusers release (major.minor) whose model code this family was checked against; another release gets
    a warning at ``enable`` (the routing checks of each processor still apply, see ``integration/routing.py``)."""
    grid_locals: ClassVar[tuple[str, str, str] | None] = None
    """Names of the token-grid sizes (frames, height, width after patching) among the transformer forward's
    locals: the grid of a forward that began before draft attention's hooks existed."""

    pipelines: ClassVar[dict[str, LoadRecipe]] = {}
    """Pipeline class names the command line loads (text-to-video, image-to-video, ...), each with how it loads
    it and which files (``--image``, ``--video``) it passes to it (:class:`LoadRecipe`)."""
    other_pipelines: ClassVar[tuple[str, ...]] = ()
    """Further pipeline classes built on its transformers that the Python API serves (named in messages)."""
    section_loops: ClassVar[dict[str, str]] = {}
    """Pipelines (class names) that denoise a video in sections within one call, each section a whole denoising loop
    with new timesteps, and the blocks of modular pipelines that run such a loop -> the local variable of their
    ``__call__`` holding the index of the section being denoised (0 first), or that the family's
    :meth:`pipeline_section` derives it from (the innermost such frame above the transformer call is read). Each
    section runs its own schedule (its dense warm-up steps); the statistics cover the whole call, section by section
    (:meth:`pipeline_section`). Pipelines not named here run one loop per call."""
    sections_reset_after: ClassVar[tuple[str, ...]] = ()
    """Pipelines of :attr:`section_loops` that set new timesteps after every section (for the next one) rather than
    before it, so that a call ends on timesteps no forward ran under (Wan-Animate): ``get_draft_stats(pipe)`` takes
    those for the call's own when they equal its last section's (:meth:`pipeline_resets_after_sections`)."""
    default_fps: ClassVar[int] = 16
    frame_step: ClassVar[int] = 4
    """Its pipelines take ``frame_step * k + 1`` frames (the VAE's temporal compression); other counts are cut or
    padded by diffusers, so the command line refuses them."""
    pixel_step: ClassVar[int] = 16
    """Its pipelines take heights and widths that are multiples of this (VAE spatial compression x patch size)."""
    """Frames per second of a written video when neither a preset nor ``--fps`` says."""
    takes_negative_prompt: ClassVar[bool] = True
    """Whether its pipelines use ``negative_prompt`` as the command line calls them."""
    negative_prompt_note: ClassVar[str] = ""
    """Why not, when they do not (the command line warns with it and drops the negative prompt)."""
    tiny_variants: ClassVar[dict[str, TinyBuilder]] = {}
    """Embedded tiny random-weight pipelines: ``--model`` name ("tiny-wan") -> builder ``(seed, num_layers,
    heads)``, best a :class:`TinyPipeline` (which also names its pipeline class). The first is the family's default
    tiny pipeline."""

    tiny_call: ClassVar[dict[str, Any]] = dict(height=128, width=512, num_frames=5)
    """Size arguments of a call of its first tiny pipeline at which each frame holds several draft regions (a tile
    order that is not the identity): what the shared family checks (``tests/test_family_conformance.py``) use."""

    cp_splits_text: ClassVar[bool] = False
    """Context parallelism: the plan splits text tokens of the self-attention sequence over the ranks."""
    text_mask_argument: ClassVar[str | None] = None
    """The transformer forward's argument holding the prompt's key mask ``[B, S_text]`` (1 = real token)."""
    cp_plan_hint: ClassVar[str] = "enable_parallelism without cp_plan uses diffusers' own plan"
    """Which context-parallel plan to pass, for error messages."""
    cp_disable_warning: ClassVar[str | None] = None
    """Warning when draft attention is disabled under context parallelism (None: nothing to warn about)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.text_position not in TEXT_POSITIONS:
            raise ValueError(f"{cls.__name__}.text_position={cls.text_position!r}: expected one of {TEXT_POSITIONS}")
        if cls.cp_splits_text and (cls.text_mask_argument is None or cls.text_position == "none"):
            raise ValueError(f"{cls.__name__}.cp_splits_text needs text in self-attention (text_position) and the "
                             "forward argument of its key mask (text_mask_argument)")
        for name, recipe in cls.pipelines.items():
            for kind, other in recipe.loads_as.items():
                if other not in cls.pipelines or cls.pipelines[other].takes(kind) is None:
                    raise ValueError(f"{cls.__name__}.pipelines[{name!r}].loads_as[{kind!r}]={other!r}: expected a "
                                     f"pipeline of the family that takes that input")

    # ------------------------------------------------------------------------------------ model structure
    def grid(self, transformer: torch.nn.Module, latents: torch.Tensor) -> VideoGrid:
        """The token grid of a forward call, from its latent input ``[B, C, T, H, W]``."""
        raise NotImplementedError

    def forward_grid(self, transformer: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> VideoGrid:
        """The token grid of a forward call from its arguments (default: :meth:`grid` of the first one, the
        latents). Families whose latents arrive packed ``[B, S, C]`` read the grid from other arguments."""
        return self.grid(transformer, forward_latents(args, kwargs))

    def video_start(self, transformer: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> int | None:
        """Where the video tokens start in the video self-attention sequence of this forward, for a routed family
        whose video tokens are neither its head nor its tail (FramePack: after the history and clean latents; the
        tokens before and after them stay dense); None (the default): as :attr:`text_position` says."""
        return None

    def forward_layout(self, transformer: torch.nn.Module, args: tuple,
                       kwargs: dict[str, Any]) -> tuple[VideoGrid | None, int | None]:
        """:meth:`forward_grid` and :meth:`video_start` of one forward call; a family that reads both from the same
        argument (LTX-Video's ``video_coords``, a host sync) overrides it to read it once."""
        return self.forward_grid(transformer, args, kwargs), self.video_start(transformer, args, kwargs)

    def grid_from_locals(self, transformer: torch.nn.Module, frame_locals: dict[str, Any]) -> VideoGrid | None:
        """The token grid of a running forward from its local variables (:attr:`grid_locals`), or None."""
        if self.grid_locals is None:
            return None
        dims = [frame_locals.get(n) for n in self.grid_locals]
        return VideoGrid(*dims) if all(isinstance(d, int) and d > 0 for d in dims) else None

    def roles(self, transformer: torch.nn.Module, current: dict[str, Any]) -> dict[torch.nn.Module, AttentionRole]:
        """Role of every attention module; ``current`` maps ``"<module name>.processor"`` to its processor now
        (kept as the default where it is the model's own, else the model's default class is used)."""
        raise NotImplementedError

    def self_attention(self, attn, hidden_states, encoder_hidden_states, attention_mask, rope, attend: AttendFn):
        """Only where ``routes_attention_call`` is False: the model processor's computation with ``attend`` in place
        of its attention call. ``attend`` takes ``[B, S, H, D]`` with the video tokens first and ``text_len`` text
        tokens after them, whatever the model's own order (:data:`TEXT_POSITIONS`)."""
        raise NotImplementedError

    def head_dim(self, transformer: torch.nn.Module) -> int:
        """Per-head width of its video self-attention (what the kernels are chosen for)."""
        return transformer.config.attention_head_dim

    def own_processor(self, transformer: torch.nn.Module, module: torch.nn.Module) -> Any:
        """A new instance of the model's own processor for ``module`` of ``transformer`` (:attr:`processor_class`,
        else the module's ``_default_processor_cls``), or None where neither is known."""
        cls = self.processor_class or getattr(type(module), "_default_processor_cls", None)
        return None if cls is None else cls()

    def call_default(self, processor, attn, hidden_states, encoder_hidden_states, attention_mask, rope, **kwargs):
        """Call the model's own processor exactly as the model would."""
        raise NotImplementedError

    def skips_attention(self, kwargs: dict[str, Any]) -> bool:
        """Whether the model's processor, given these keyword arguments of a video self-attention call, computes no
        attention at all (LTX-2.3's STG pass): draft attention then runs that processor and counts no call."""
        return False

    def tile_order_hooks(self, transformer: torch.nn.Module, order: "TileOrder") -> bool:
        """Register (with :func:`register_hook`) the hooks that put the video tokens (and everything indexed by them:
        RoPE tables, per-token timesteps) in tile order once per forward while ``order.active``, and back before the
        output projection. Returns False (registering nothing) where the model cannot run reordered; every call
        then gathers instead."""
        return False

    # --------------------------------------------------------------------------------- context parallelism
    def cp_plan(self) -> dict[str, Any] | None:
        """The context-parallel plan to pass to ``enable_parallelism`` (None: diffusers' own plan of the model)."""
        return None

    # why the family cannot run under context parallelism at all (None: it can); worded by cp_refusal
    cp_unsupported_because: ClassVar[str | None] = None

    def cp_refusal(self, transformer: torch.nn.Module) -> str | None:
        """Why draft attention cannot run ``transformer`` under context parallelism, or None."""
        if self.cp_unsupported_because is None:
            return None
        return (f"draft attention under context parallelism is not supported for {self.title} yet: "
                f"{self.cp_unsupported_because}; run it on one GPU per pipeline")

    # ----------------------------------------------------------------------------- pipelines and the CLI
    def pipeline_kwargs(self, pipe, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The command line's keyword arguments of ``pipe(...)``, adjusted for this family (default: as given)."""
        return kwargs

    def pipeline_step(self, pipe, pipeline_locals: dict[str, Any]) -> tuple[int, int] | None:
        """``(step, num_steps)`` of a pipeline whose denoising step is not its scheduler's ``step_index``, read from
        the running pipeline call's locals; None (the default): ask the scheduler."""
        return None

    def pipeline_section(self, owner, owner_locals: dict[str, Any]) -> int | None:
        """The index of the section that a running call of one of :attr:`section_loops`' pipelines (or modular loop
        blocks: ``owner``) denoises (0 first), read from its ``__call__``'s locals at the first forward after new
        timesteps (where the section loop has just set it; the pipelines' step-callback loops reuse the name later);
        None for other pipelines (one denoising loop per call)."""
        name = next((self.section_loops[c.__name__] for c in type(owner).__mro__ if c.__name__ in self.section_loops),
                    None)
        index = None if name is None else owner_locals.get(name)
        return index if type(index) is int and index >= 0 else None

    def pipeline_resets_after_sections(self, pipe) -> bool:
        """Whether ``pipe`` sets new timesteps once more after its call's last section
        (:attr:`sections_reset_after`)."""
        return any(c.__name__ in self.sections_reset_after for c in type(pipe).__mro__)

    def tiny_prompt_kwargs(self, pipe, emb: Callable[..., torch.Tensor], text_len: int, valid_len: int | None,
                           negative: bool) -> dict[str, Any]:
        """Prompt keyword arguments of a tiny pipeline of this family: ``emb(*shape)`` draws fixed random
        embeddings; ``valid_len`` of ``text_len`` text tokens are real (where the family masks text); ``negative``
        adds negative-prompt embeddings where the pipeline takes them."""
        raise NotImplementedError


class TextKeyMask:
    """The boolean key mask ``[B, 1, 1, video + text]`` of a sequence ``[video, text]`` from the text's mask
    ``[B, S_text]``, one object for every block of a forward (they all get the same text mask), so the processor
    checks it on the host once per forward. Families whose processors expand the text mask themselves (Mochi,
    HunyuanVideo-1.5) hand draft attention this instead."""

    def __init__(self) -> None:
        self._last: tuple[Any, ...] | None = None  # (text mask, video tokens, key mask) of the last forward

    def __call__(self, text_mask: torch.Tensor, video_tokens: int) -> torch.Tensor:
        compiling = torch.compiler.is_compiling()
        last = self._last
        if not compiling and last is not None and last[0] is text_mask and last[1] == video_tokens:
            return last[2]
        b = text_mask.shape[0]
        key = torch.cat([text_mask.new_ones(b, video_tokens, dtype=torch.bool), text_mask.bool()], dim=1)
        key = key.view(b, 1, 1, -1)
        if not compiling:
            self._last = (text_mask, video_tokens, key)
        return key


def pipeline_loop_step(family: "ModelFamily", pipe, pipeline_locals: dict[str, Any]) -> tuple[int, int] | None:
    """``ModelFamily.pipeline_step`` of pipelines whose schedulers may keep no ``step_index`` (CogVideoX's DDIM /
    DPM, DDIM under Allegro or EasyAnimate): the step is the denoising loop's ``i`` of ``_num_timesteps``, for the
    family's own pipelines. Use as ``pipeline_step = pipeline_loop_step``."""
    served = {*family.pipelines, *family.other_pipelines}
    if not served.intersection(c.__name__ for c in type(pipe).__mro__):
        return None
    i, num = pipeline_locals.get("i"), getattr(pipe, "_num_timesteps", None)
    if isinstance(i, int) and isinstance(num, int) and 0 <= i < num:
        return i, num
    return None


def guidance_from_guider(pipe, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``ModelFamily.pipeline_kwargs`` of pipelines that take their guidance scale from a guider component
    (HunyuanVideo-1.5, Motif-Video), not from a call argument: the scale goes to a new guider."""
    scale = kwargs.pop("guidance_scale", None)
    if scale is not None:
        pipe.guider = pipe.guider.new(guidance_scale=scale)
    return kwargs


def register_sequence_tile_order_hooks(order: "TileOrder", tokens: torch.nn.Module, out: torch.nn.Module,
                                       rope: torch.nn.Module | None = None, rope_dim: int = 0) -> None:
    """The tile-order hooks of a model whose ``tokens`` module outputs the video tokens ``[B, S, C]`` and whose
    ``rope`` module outputs a tuple of tables with the tokens along ``rope_dim`` (HunyuanVideo and its kin: each
    ``[S, D]``); the tokens go back to diffusers' order before ``out``."""
    register_hook(tokens, "post", functools.partial(_output_to_tiles, order))
    if rope is not None:
        register_hook(rope, "post", functools.partial(_tables_to_tiles, order, rope_dim))
    register_tokens_back_hook(out, order)


SDPA_CP_UNSUPPORTED = ("diffusers has no context-parallel plan for it and its attention processor calls "
                       "F.scaled_dot_product_attention directly, outside diffusers' context-parallel dispatch")
"""``cp_unsupported_because`` of the families whose processors call SDPA themselves (CogVideoX, Mochi, ...)."""


def register_frame_patches_hook(module: torch.nn.Module, order: "TileOrder") -> None:
    """Tile order for a patch embedding that embeds frame by frame: its output ``[B*F, H*W, C]`` is the video tokens
    ``[B, F*H*W, C]`` that the forward flattens it to (Allegro, Mochi)."""
    register_hook(module, "post", functools.partial(_frame_patches_to_tiles, order))


def _frame_patches_to_tiles(order: "TileOrder", module, args, out):
    if not order.active:
        return None
    return order.to_tiles(out.reshape(-1, order.num_tokens, out.shape[-1]), 1).view(out.shape)


def tiny_prompt_mask(text_len: int, valid_len: int | None) -> torch.Tensor:
    """The attention mask ``[1, text_len]`` of a tiny padded prompt: 1 for its first ``valid_len`` tokens (all when
    None), 0 for the padding."""
    mask = torch.zeros(1, text_len, dtype=torch.long)
    mask[:, :text_len if valid_len is None else valid_len] = 1
    return mask


def _output_to_tiles(order: "TileOrder", module, args, out):
    return order.to_tiles(out, 1) if order.active else None


def _tables_to_tiles(order: "TileOrder", dim: int, module, args, out):
    return tuple(order.to_tiles(t, dim) for t in out) if order.active else None


def forward_latents(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    """The first argument of a transformer forward (``hidden_states``, the latents), positional or by name."""
    return args[0] if args else kwargs["hidden_states"]


class TileOrder:
    """The video-token permutation of the current forward, for the tile-order hooks of a model family."""

    def __init__(self) -> None:
        self.active = False
        self._perm: torch.Tensor | None = None
        self._inv: torch.Tensor | None = None

    def set(self, perm: torch.Tensor | None, inv: torch.Tensor | None) -> None:
        self.active = perm is not None
        self._perm, self._inv = perm, inv

    @property
    def num_tokens(self) -> int:
        """Video tokens of this forward (the permutation's length); only while :attr:`active`."""
        return self._perm.numel()

    def to_tiles(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """``x`` with its video tokens along ``dim`` in tile order. Tokens past the grid (an axis longer than the
        permutation: LTX-2's appended keyframe tokens) keep their place behind the video tokens."""
        return self._apply(x, dim, self._perm)

    def from_tiles(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return self._apply(x, dim, self._inv)

    @staticmethod
    def _apply(x: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
        n = index.numel()
        if x.shape[dim] == n:
            return x.index_select(dim, index.to(x.device))
        return torch.cat([x.narrow(dim, 0, n).index_select(dim, index.to(x.device)),
                          x.narrow(dim, n, x.shape[dim] - n)], dim=dim)


class DraftHook(functools.partial):
    """A torch module hook that belongs to draft attention. Hooks are found and removed by this type, not by
    handles: a handle of a deep-copied transformer would point at the original's hook table. (A ``partial``: under
    torch.compile each hook then runs its own code, not one shared ``__call__`` that dynamo would recompile.)

    A deep copy of the transformer copies its hooks with what they refer to: ``copy.deepcopy`` never copies a
    function, so a family's hook written as a closure over its ``TileOrder`` would go on reading the original's."""

    def __deepcopy__(self, memo):
        return type(self)(_copy_function(self.func, memo), *copy.deepcopy(self.args, memo),
                          **copy.deepcopy(self.keywords, memo))


def _copy_function(fn: Callable, memo: dict) -> Callable:
    """``fn`` with the variables it closes over deep-copied (through ``memo``, so a copied transformer's hooks share
    its copied objects); anything else as ``copy.deepcopy`` copies it."""
    if not isinstance(fn, types.FunctionType) or not fn.__closure__:
        return copy.deepcopy(fn, memo)
    if id(fn) in memo:
        return memo[id(fn)]
    cells = tuple(types.CellType() for _ in fn.__closure__)
    clone = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, cells)
    clone.__kwdefaults__, clone.__dict__ = fn.__kwdefaults__, dict(fn.__dict__)
    memo[id(fn)] = clone  # (before its cells: a closure may refer to itself)
    for new, old in zip(cells, fn.__closure__):
        try:
            new.cell_contents = _copy_function(old.cell_contents, memo)
        except ValueError:  # a variable not bound yet
            pass
    return clone


def register_hook(module: torch.nn.Module, kind: str, fn: Callable, with_kwargs: bool = False) -> None:
    """``module.register_forward_pre_hook`` (``kind="pre"``) or ``register_forward_hook`` (``"post"``) of ``fn``
    wrapped in a :class:`DraftHook`."""
    register = module.register_forward_pre_hook if kind == "pre" else module.register_forward_hook
    register(DraftHook(fn), with_kwargs=with_kwargs)


def register_tokens_back_hook(module: torch.nn.Module, order: TileOrder) -> None:
    """Pre-hook on ``module`` (the output projection, first input ``[B, S, C]`` video tokens) that puts the tokens
    back in diffusers' order while ``order.active``."""
    register_hook(module, "pre", functools.partial(_first_input_from_tiles, order))


def _first_input_from_tiles(order: TileOrder, module, args):
    return (order.from_tiles(args[0], 1),) + tuple(args[1:]) if order.active else None


def permute_forward_argument(args: tuple, kwargs: dict, index: int, name: str, order: TileOrder,
                             dims: tuple[int, ...], per_token_ndim: int = 2):
    """A forward pre-hook's result putting the per-video-token argument ``name`` (positional ``index``) in tile order
    along ``dims`` when it is per token (``per_token_ndim`` dims, more than one entry along ``dims[0]``); None
    (nothing to change) otherwise."""
    in_kwargs = name in kwargs
    value = kwargs.get(name) if in_kwargs else (args[index] if len(args) > index else None)
    if not isinstance(value, torch.Tensor) or value.ndim != per_token_ndim or value.shape[dims[0]] <= 1:
        return None
    for d in dims:
        value = order.to_tiles(value, d)
    if in_kwargs:
        return args, {**kwargs, name: value}
    return args[:index] + (value,) + args[index + 1:], kwargs


_HOOK_TABLES = ("_forward_pre_hooks", "_forward_hooks")
_HOOK_SETS = ("_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs", "_forward_hooks_always_called")


def remove_draft_hooks(root: torch.nn.Module) -> int:
    """Remove every :class:`DraftHook` from ``root`` and its submodules; returns how many were removed."""
    removed = 0
    for module in root.modules():
        for table in _HOOK_TABLES:
            hooks = getattr(module, table)
            for key in [k for k, h in hooks.items() if isinstance(h, DraftHook)]:
                del hooks[key]
                for extra in _HOOK_SETS:
                    getattr(module, extra, {}).pop(key, None)
                removed += 1
    return removed


def count_hooks(root: torch.nn.Module, draft_only: bool = False) -> int:
    """Forward (pre-)hooks on ``root`` and its submodules (only draft attention's with ``draft_only``)."""
    return sum(1 for m in root.modules() for t in _HOOK_TABLES for h in getattr(m, t).values()
               if not draft_only or isinstance(h, DraftHook))


def numbered_roles(transformer: torch.nn.Module, current: dict[str, Any], attention_class: type,
                   video_self: "re.Pattern[str]", default_class: type,
                   own_classes: type | tuple[type, ...] | None = None) -> dict[torch.nn.Module, AttentionRole]:
    """``ModelFamily.roles`` of a family whose video self-attention modules are the ``attention_class`` modules whose
    names match ``video_self`` (its first group: the block index, what ``dense_layers`` counts); every other
    ``attention_class`` module keeps its processor. ``own_classes``: the model's own processor classes (default:
    ``default_class``); any other processor is a user's (``custom``)."""
    own = default_class if own_classes is None else own_classes
    out = {}
    for name, module in transformer.named_modules():
        if isinstance(module, attention_class):
            m = video_self.match(name)
            default = keep_or_default(current.get(f"{name}.processor"), default_class)
            out[module] = AttentionRole(name, m is not None, None if m is None else int(m.group(1)), default,
                                        custom=not isinstance(default, own))
    return out


def keep_or_default(current: Any, default_cls: type) -> Any:
    """The module's current processor (the user's choice, kept as the dense path), or a new one of the model's own
    class where there is none or it is draft attention's own."""
    if current is None or getattr(current, "_is_draft_attention", False):
        return default_cls()
    return current

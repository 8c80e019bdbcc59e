"""``MetamerGenPipeline``: render what a viewer could believe they saw after some fixations.

Data flow (``docs/design.md``)::

    scene image ─► encode_scene ─► SceneEncoding (sharp + peripheral DINOv2 tokens, 2 passes)
    fixations ───► token mask ──► sharp ⊙ mask ─► foveal resampler ─────┐
                                  peripheral ────► peripheral resampler ─┤
    noise ─► DDIM loop (UNet with decoupled cross-attention, CFG++/CFG) ─┴─► VAE ─► images

The pipeline owns its denoising loop (diffusers' IP-Adapter path repeats per-sample embeddings
across a batch, diffusers issue #9813), so a batch may mix fixation lists and scenes freely.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import AutoModel, CLIPTextModel, CLIPTokenizer, PreTrainedModel

from metamergen import defaults
from metamergen.adapters.model import STREAMS, MetamerGenAdapters
from metamergen.encoders.dinov2 import BitImageProcessor, canvas_size, dinov2_processor
from metamergen.encoders.scene import SceneEncoding, encode_foveal_crops, encode_scenes
from metamergen.fixations.records import OffImagePolicy, Scanpath
from metamergen.foveation.fovea import mask_tokens, token_mask
from metamergen.foveation.frame import FitMode
from metamergen.foveation.periphery import PeripheralBlur
from metamergen.pipeline.guidance import GuidanceMethod, GuidanceRule, guidance_rule
from metamergen.utils.dtypes import dtype_kwargs
from metamergen.utils.images import ImageInput

FixationInput = Scanpath | np.ndarray | Sequence[Sequence[float]] | None
#: ``callback_on_step_end(pipe, step_index, timestep, callback_kwargs) -> dict`` (diffusers' form).
StepEndCallback = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]] | PipelineCallback | MultiPipelineCallbacks

#: Hub ids of the paper's frozen components.
DEFAULT_BASE_MODEL = defaults.BASE_MODEL
DEFAULT_IMAGE_ENCODER = defaults.IMAGE_ENCODER

# Written next to a saved pipeline: diffusers' custom-pipeline loader imports it to find the class.
_DIFFUSERS_SHIM = """\
# Lets diffusers load this folder: DiffusionPipeline.from_pretrained(folder, custom_pipeline=folder,
# trust_remote_code=True). Needs the metamergen package installed (pip install metamergen).
from diffusers import DiffusionPipeline  # noqa: F401
from metamergen.pipeline import MetamerGenPipeline  # noqa: F401
"""


def output_size(width: int, height: int, native_size: int, multiple: int) -> tuple[int, int]:
    """``(height, width)`` of a generation for a ``width`` x ``height`` region: the same aspect ratio
    at ``native_size**2`` pixels (512^2 for SD1.5), rounded to multiples of ``multiple``."""
    aspect = width / height
    w, h = native_size * aspect**0.5, native_size / aspect**0.5
    return max(multiple, round(h / multiple) * multiple), max(multiple, round(w / multiple) * multiple)


__all__ = [
    "DEFAULT_BASE_MODEL",
    "DEFAULT_IMAGE_ENCODER",
    "MetamerGenPipeline",
    "MetamerGenPipelineOutput",
    "StepEndCallback",
    "output_size",
]


@dataclass
class MetamerGenPipelineOutput(BaseOutput):
    """Output of :class:`MetamerGenPipeline`.

    Attributes
    ----------
    images
        The scene hypotheses: a list of PIL images, a ``(N, H, W, 3)`` array in [0, 1], or a
        ``(N, 3, H, W)`` tensor, as ``output_type`` asks. ``N = lists * num_images_per_prompt``,
        hypotheses of one fixation list consecutive.
    foveal_masks
        ``(N, grid, grid)`` bool: the patches each image's foveal stream kept.
    """

    images: list[Image.Image] | np.ndarray | torch.Tensor
    foveal_masks: torch.Tensor


class MetamerGenPipeline(DiffusionPipeline):
    """Stable Diffusion with foveal and peripheral DINOv2 adapters (Raina et al., ICLR 2026).

    Parameters
    ----------
    vae, text_encoder, tokenizer, unet
        Frozen Stable Diffusion components (SD1.5 in the paper).
    scheduler
        Noise scheduler; DDIM (the paper's) is required for CFG++.
    image_encoder
        Frozen DINOv2 (``facebook/dinov2-with-registers-base`` in the paper).
    feature_extractor
        DINOv2 image processor that squashes to the encoder canvas (448 px, no crop); see
        :func:`metamergen.encoders.dinov2_processor`.
    adapters
        The trained part: :class:`~metamergen.adapters.MetamerGenAdapters`. Installed into the
        UNet's cross-attention on construction.

    Any component may be ``None`` (as in diffusers' SD pipelines: ``from_pretrained(folder,
    vae=None, unet=None, ...)``) for partial use: :meth:`encode_prompt` needs only the tokenizer and
    text encoder, :meth:`encode_scene` only the image encoder and feature extractor. Rendering needs
    the UNet, scheduler and adapters; it also needs the VAE unless ``output_type="latent"``, the text
    components unless ``prompt_embeds`` and ``negative_prompt_embeds`` are given, and the image
    encoder unless ``scene=`` is given. The five that may be missing from a saved folder are listed
    in ``_optional_components``.
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    # the resamplers run outside any offloaded forward; the adapters are small, keep them on device
    _exclude_from_cpu_offload = ["adapters"]
    _optional_components = ["vae", "text_encoder", "tokenizer", "image_encoder", "feature_extractor"]
    #: Loop state a ``callback_on_step_end`` may read and replace (see :meth:`denoise`).
    _callback_tensor_inputs = [
        "latents",
        "prompt_embeds",
        "negative_prompt_embeds",
        "foveal_embeds",
        "peripheral_embeds",
    ]

    def __init__(
        self,
        vae: AutoencoderKL | None,
        text_encoder: CLIPTextModel | None,
        tokenizer: CLIPTokenizer | None,
        unet: UNet2DConditionModel | None,
        scheduler: DDIMScheduler | None,
        image_encoder: PreTrainedModel | None,
        feature_extractor: BitImageProcessor | None,
        adapters: MetamerGenAdapters | None,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            adapters=adapters,
        )
        # as diffusers' SD pipelines: without a VAE, assume SD's factor 8
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self._attention_backend = "sdpa"
        self._interrupt = False
        self._guidance_rule: GuidanceRule | None = None
        self._num_timesteps = 0
        if unet is not None and adapters is not None:
            adapters.install(unet)

    # ------------------------------------------------------------------ call state (diffusers' properties)

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` (e.g. in ``callback_on_step_end``) to skip the remaining
        denoising steps; the current latents are then decoded, as in diffusers."""
        return self._interrupt

    @property
    def guidance_rule(self) -> GuidanceRule | None:
        """The running (or last) call's guidance rule; a callback may change its ``scale``."""
        return self._guidance_rule

    @property
    def guidance_scale(self) -> float | None:
        """The running (or last) call's guidance strength (CFG++'s λ or CFG's w)."""
        return None if self._guidance_rule is None else self._guidance_rule.scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the UNet batch holds the unconditional half (always under CFG++)."""
        return self._guidance_rule is not None and self._guidance_rule.needs_unconditional

    @property
    def num_timesteps(self) -> int:
        """Denoising steps of the running (or last) call."""
        return self._num_timesteps

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_base_models(
        cls,
        base_model: str | os.PathLike = DEFAULT_BASE_MODEL,
        image_encoder: str | os.PathLike = DEFAULT_IMAGE_ENCODER,
        adapters: str | os.PathLike | MetamerGenAdapters | None = None,
        *,
        encoder_resolution: int = defaults.ENCODER_RESOLUTION,
        torch_dtype: torch.dtype | None = None,
        adapters_subfolder: str | None = None,
        adapter_config: dict[str, Any] | None = None,
        revision: str | None = None,
        image_encoder_revision: str | None = None,
        adapters_revision: str | None = None,
        variant: str | None = None,
        **hub_kwargs: Any,
    ) -> MetamerGenPipeline:
        """Assemble a pipeline from a Stable Diffusion model, a DINOv2 model and adapters.

        This is the path for real weights: hub ids or local folders in the usual layouts.

        Parameters
        ----------
        base_model
            Stable Diffusion repo id or folder (``vae/``, ``unet/``, ``text_encoder/``,
            ``tokenizer/``, ``scheduler/``). Its scheduler config is loaded into DDIM (the paper's sampler).
        image_encoder
            DINOv2 repo id or folder (loaded with ``transformers.AutoModel``).
        adapters
            Trained adapters: a folder or repo id holding ``config.json`` + weights (e.g. the
            ``adapters/`` folder of a saved pipeline: pass the pipeline folder and
            ``adapters_subfolder="adapters"``), or an instance. ``None`` builds fresh adapters
            whose K/V copy the text K/V (the paper's initialisation), for training.
        encoder_resolution
            Square canvas side fed to DINOv2, pixels (448 in the paper: 32 x 32 tokens).
        torch_dtype
            dtype for all weights (e.g. ``torch.float16`` on GPU).
        adapter_config
            Constructor arguments for fresh adapters (``num_tokens``, ``resampler_*``).
        revision, image_encoder_revision, adapters_revision
            Hub revisions of the three repos (each applies to its own repo only).
        variant
            Weight variant of the Stable Diffusion components (e.g. ``"fp16"``).
        hub_kwargs
            Passed to every ``from_pretrained`` (``cache_dir``, ``local_files_only``, ``token``...).
        """
        kw = dict(hub_kwargs, revision=revision)
        dtype_kw = dtype_kwargs(torch_dtype, "diffusers")
        variant_kw = {"variant": variant} if variant else {}
        vae = AutoencoderKL.from_pretrained(base_model, subfolder="vae", **kw, **dtype_kw, **variant_kw)
        unet = UNet2DConditionModel.from_pretrained(base_model, subfolder="unet", **kw, **dtype_kw, **variant_kw)
        text_encoder = CLIPTextModel.from_pretrained(
            base_model, subfolder="text_encoder", **kw, **dtype_kwargs(torch_dtype, "transformers"), **variant_kw
        )
        tokenizer = CLIPTokenizer.from_pretrained(base_model, subfolder="tokenizer", **kw)
        scheduler = DDIMScheduler.from_pretrained(base_model, subfolder="scheduler", **kw)
        encoder = AutoModel.from_pretrained(
            image_encoder, **dtype_kwargs(torch_dtype, "transformers"), **hub_kwargs, revision=image_encoder_revision
        )
        if isinstance(adapters, MetamerGenAdapters):
            adapter_module = adapters.to(unet.device)
            if adapter_module.dtype != unet.dtype:  # the K/V live inside the UNet's attention
                adapter_module = adapter_module.to(dtype=unet.dtype)
        elif adapters is None:
            adapter_module = MetamerGenAdapters.from_unet(
                unet, image_embed_dim=encoder.config.hidden_size, **(adapter_config or {})
            )
        else:
            sub = {"subfolder": adapters_subfolder} if adapters_subfolder else {}
            adapter_module = MetamerGenAdapters.from_pretrained(
                adapters, **sub, **dtype_kw, **hub_kwargs, revision=adapters_revision
            ).to(unet.device)
        return cls(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            image_encoder=encoder.eval(),
            feature_extractor=dinov2_processor(encoder_resolution),
            adapters=adapter_module,
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> MetamerGenPipeline:
        """Load a saved MetamerGen pipeline from a local folder or a hub repo id.

        A repo id is first downloaded whole with ``huggingface_hub.snapshot_download`` (diffusers'
        own download step looks for a code file for the third-party ``adapters`` component and
        fails), then loaded as a local folder. Other keyword arguments are diffusers' own.
        """
        path = pretrained_model_name_or_path
        if not os.path.isdir(path):
            from huggingface_hub import snapshot_download

            path = snapshot_download(
                str(path),
                revision=kwargs.pop("revision", None),
                cache_dir=kwargs.get("cache_dir"),
                token=kwargs.get("token"),
                local_files_only=kwargs.get("local_files_only", False),
            )
        return super().from_pretrained(path, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save every component; the UNet is saved without the adapter processors (the adapters
        are their own component and are reinstalled on load), so no orphan weights are written.

        The folder also gets a two-line ``pipeline.py`` that imports this class, so that plain
        diffusers can load it too: ``DiffusionPipeline.from_pretrained(folder, custom_pipeline=folder,
        trust_remote_code=True)`` (the ``metamergen`` package must be installed).
        """
        before = self.unet.attn_processors if self.unet is not None else None
        if before is not None and self.adapters is not None:
            self.adapters.uninstall(self.unet)
        try:
            super().save_pretrained(save_directory, **kwargs)
        finally:
            if before is not None:  # exactly the processors it had (the adapters', or the user's own)
                self.unet.set_attn_processor(dict(before))
        (Path(save_directory) / "pipeline.py").write_text(_DIFFUSERS_SHIM)

    def prepare_for_adapter_training(self) -> list[torch.nn.Parameter]:
        """Freeze everything except the adapters, as the paper trains: the two resamplers and the
        new K/V projections. Returns the trainable parameters (for the optimizer), in fp32.

        The K/V projections are shared with the UNet's processors, so the UNet is frozen first and
        the adapters unfrozen after. The frozen models keep their dtype (bf16 / fp16 for mixed
        precision) and the adapters are cast to fp32, as diffusers' ``cast_training_params``
        does; the adapters meet the UNet's dtype in their forward, so the training loss and
        ``pipe(...)`` need no autocast. Casting the UNet afterwards casts the shared K/V with it:
        cast the pipeline first, then call this.

        Returns
        -------
        list of torch.nn.Parameter
            Every adapter parameter, fp32, requiring gradients.
        """
        from diffusers.training_utils import cast_training_params

        for module in (self.vae, self.text_encoder, self.unet, self.image_encoder):
            module.requires_grad_(False)
            module.eval()
        self.adapters.requires_grad_(True)
        self.adapters.train()
        cast_training_params(self.adapters, dtype=torch.float32)  # fp32 weights for the optimiser's updates
        return list(self.adapters.parameters())

    # ------------------------------------------------------------------ attention backends

    def enable_xformers_memory_efficient_attention(self, attention_op: Any = None) -> None:
        """Use xformers attention; the adapter processors are rebuilt around the same K/V weights."""
        super().enable_xformers_memory_efficient_attention(attention_op)
        self._attention_backend = "xformers"
        self.adapters.install(self.unet, attention="xformers")

    def disable_xformers_memory_efficient_attention(self) -> None:
        """Back to PyTorch SDPA attention, keeping the adapters installed."""
        super().disable_xformers_memory_efficient_attention()
        self._attention_backend = "sdpa"
        self.adapters.install(self.unet, attention="sdpa")

    def enable_attention_slicing(self, slice_size: str | int | None = "auto") -> None:
        """Slice the UNet's self-attention (diffusers' ``SlicedAttnProcessor``) to save memory; the
        cross-attention layers keep the adapters' two-stream processor, unsliced.

        diffusers' own slicing would replace every processor, including the adapters'; here the
        adapters are reinstalled into the cross-attention layers afterwards (and every render
        installs them for its duration anyway, see :meth:`MetamerGenAdapters.applied`). Their
        attention matrix is ``queries x (77 + 2 x 32)`` keys against self-attention's
        ``queries x queries``, so slicing them would save little. With PyTorch 2's SDPA (the default)
        slicing is rarely needed and slows sampling; see ``docs/design.md`` ("Library pitfalls") for
        the memory alternatives. ``slice_size=None`` turns slicing off.
        """
        super().enable_attention_slicing(slice_size)
        if self.unet is not None and self.adapters is not None:
            self.adapters.install(self.unet, attention=self._attention_backend, keep_other_processors=True)

    def enable_sequential_cpu_offload(self, *args: Any, **kwargs: Any) -> None:
        """Refused: use :meth:`enable_model_cpu_offload` (whole components moved in turn).

        Sequential offload puts every UNet submodule's weights on the meta device between uses.
        The UNet's cross-attention processors hold the adapters' K/V projections (shared, not
        copied), so offloading the UNet would take the adapters' weights too and the first render
        fails with "Cannot copy out of meta tensor". Model offload keeps each component whole.
        """
        raise NotImplementedError(
            "MetamerGenPipeline does not support enable_sequential_cpu_offload(): the UNet's attention layers "
            "share the adapters' K/V weights, which it would move to the meta device. Use "
            "pipe.enable_model_cpu_offload() instead (or fp16 weights, a smaller batch; docs/design.md, "
            "'Attention slicing and memory')."
        )

    # ------------------------------------------------------------------ conditioning

    @property
    def grid_size(self) -> int:
        """Patches per side of the encoder canvas (32 in the paper)."""
        return canvas_size(self.feature_extractor) // int(self.image_encoder.config.patch_size)

    def encode_scene(
        self,
        image: ImageInput | Sequence[ImageInput],
        *,
        peripheral_blur: float | PeripheralBlur = defaults.PERIPHERAL_BLUR,
        fit: FitMode = "squash",
        box: tuple[int, int, int, int] | Sequence[tuple[int, int, int, int] | None] | None = None,
    ) -> SceneEncoding:
        """Encode one scene or a list of scenes once, for any number of renders.

        Exactly two DINOv2 forward passes (sharp, peripheral) per call, whatever is rendered from
        the result. See :func:`metamergen.encoders.encode_scenes` for the arguments.
        """
        if self.image_encoder is None or self.feature_extractor is None:
            raise ValueError(
                "This pipeline was built without an image encoder or feature extractor, so it cannot encode "
                "scenes: load one that has them, or pass scene= encoded by such a pipeline (pipe.encode_scene)."
            )
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        boxes = None
        if box is not None:
            boxes = list(box) if box and isinstance(box[0], (list, tuple, type(None))) else [box] * len(images)
        return encode_scenes(
            self.image_encoder, self.feature_extractor, images, peripheral_blur=peripheral_blur, fit=fit, boxes=boxes
        )

    @staticmethod
    def _split_fixation_lists(fixations: FixationInput | Sequence[FixationInput]) -> list[Any]:
        """Turn the ``fixations`` argument into a list of single fixation lists."""
        if fixations is None or isinstance(fixations, Scanpath):
            return [fixations]
        if isinstance(fixations, torch.Tensor):
            fixations = fixations.detach().cpu().numpy()
        if isinstance(fixations, np.ndarray):
            if fixations.ndim == 3:
                return list(fixations)
            return [fixations]
        if not isinstance(fixations, (list, tuple)):
            raise TypeError(
                f"fixations must be a Scanpath, an (N, 2) array of (x, y) image pixels, or a list of those; "
                f"got {type(fixations).__name__}."
            )
        if len(fixations) == 0:
            return [np.zeros((0, 2))]
        if all(isinstance(f, Scanpath) or f is None for f in fixations):
            return list(fixations)
        try:
            arr = np.asarray(fixations, dtype=np.float64)
        except (ValueError, TypeError):
            arr = None
        if arr is not None and arr.ndim == 2 and arr.shape[1] == 2:
            return [arr]
        return list(fixations)

    def _fixation_xy(self, item: Any, frame_width: int, frame_height: int, off_image: OffImagePolicy) -> np.ndarray:
        """One fixation list as ``(N, 2)`` image pixels, after the off-image policy."""
        if item is None:
            return np.zeros((0, 2))
        if isinstance(item, Scanpath):
            if (item.width, item.height) != (frame_width, frame_height):
                raise ValueError(
                    f"Scanpath {item.id or ''} refers to a {item.width}x{item.height} image but the scene is "
                    f"{frame_width}x{frame_height}; MetamerGen never rescales fixations silently. Convert the "
                    "scanpath to the image's pixels (or pass the image it was recorded on)."
                )
            return item.with_off_image(off_image).xy
        return Scanpath.from_points(item, width=frame_width, height=frame_height, off_image=off_image).xy

    def foveal_masks(
        self,
        scene: SceneEncoding,
        fixations: FixationInput | Sequence[FixationInput],
        *,
        scene_index: Sequence[int] | None = None,
        foveal_radius_px: float | None = None,
        foveal_radius_deg: float | None = None,
        pixels_per_degree: float | None = None,
        off_image: OffImagePolicy = "drop",
    ) -> tuple[torch.Tensor, list[np.ndarray], list[int]]:
        """Token masks for each fixation list.

        Returns
        -------
        masks
            ``(F, grid, grid)`` bool tensor.
        xy
            Per list, the fixations actually used (image pixels, after the off-image policy).
        scene_index
            Per list, the index of its scene in ``scene``.
        """
        lists = self._split_fixation_lists(fixations)
        if scene_index is None:
            if len(scene) == 1:
                scene_index = [0] * len(lists)
            elif len(scene) == len(lists):
                scene_index = list(range(len(lists)))
            else:
                raise ValueError(
                    f"Got {len(lists)} fixation lists for {len(scene)} scenes: give one list per scene, "
                    "or one scene for all lists."
                )
        if len(scene_index) != len(lists):
            raise ValueError(f"Got {len(scene_index)} scene indices for {len(lists)} fixation lists.")
        xys, masks = [], []
        for item, i in zip(lists, scene_index):
            frame = scene.frames[i]
            xy = self._fixation_xy(item, frame.image_width, frame.image_height, off_image)
            xys.append(xy)
            masks.append(
                token_mask(
                    xy,
                    frame,
                    radius_px=foveal_radius_px,
                    radius_deg=foveal_radius_deg,
                    pixels_per_degree=pixels_per_degree,
                )
            )
        return torch.from_numpy(np.stack(masks)), xys, list(scene_index)

    def encode_prompt(self, prompt: str | Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
        """CLIP text embeddings, one row per prompt (the paper uses ``""``).

        Needs only the tokenizer and the text encoder, so a text-only pipeline
        (``MetamerGenPipeline.from_pretrained(folder, unet=None, vae=None, image_encoder=None, adapters=None)``)
        can precompute ``prompt_embeds`` / ``negative_prompt_embeds`` for another.

        Parameters
        ----------
        prompt
            One string or a list of them.
        device
            Where to run the text encoder; default the pipeline's execution device.

        Returns
        -------
        torch.Tensor
            ``(len(prompt), tokenizer.model_max_length, cross_attention_dim)``, the text encoder's dtype.
        """
        if self.tokenizer is None or self.text_encoder is None:
            raise ValueError(
                "This pipeline was built without a tokenizer or text encoder, so it cannot encode prompts: "
                "pass prompt_embeds= and negative_prompt_embeds= (e.g. from pipe.encode_prompt of a pipeline that has them)."
            )
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompts must be strings, got {[type(p).__name__ for p in prompts]}.")
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        device = self._execution_device if device is None else device
        return self.text_encoder(ids.to(device))[0]

    def _default_size(self, frames: Sequence[Any]) -> tuple[int, int]:
        """Output ``(height, width)`` in pixels: the encoded region's aspect ratio at the UNet's
        native area (512^2 for SD1.5), rounded to multiples of the VAE factor."""
        base = int(self.unet.config.sample_size) * self.vae_scale_factor
        sizes = {output_size(f.box[2] - f.box[0], f.box[3] - f.box[1], base, self.vae_scale_factor) for f in frames}
        if len(sizes) > 1:
            raise ValueError(
                "The scenes in this batch have different aspect ratios, so they cannot share one latent "
                f"size ({sorted(sizes)}); pass height= and width=, or render them in separate calls."
            )
        return sizes.pop()

    # ------------------------------------------------------------------ rendering

    # ------------------------------------------------------------------ rendering: the steps

    def check_inputs(
        self,
        *,
        foveal_scale: float,
        peripheral_scale: float,
        guidance: GuidanceMethod | GuidanceRule,
        guidance_scale: float | None,
        num_images_per_prompt: int,
        num_inference_steps: int,
        prompt: str | Sequence[str] | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        drop_streams: Sequence[str] = (),
        output_type: str = "pil",
        callback_on_step_end_tensor_inputs: Sequence[str] | None = None,
    ) -> GuidanceRule:
        """Check the call's arguments that need no scene; returns the guidance rule to use."""
        missing = [n for n in ("unet", "scheduler", "adapters") if getattr(self, n, None) is None]
        if output_type != "latent" and self.vae is None:
            missing.append("vae (or pass output_type='latent')")
        if missing:
            raise ValueError(
                f"Rendering needs components this pipeline was built without: {', '.join(missing)}. "
                "Load the pipeline with them (a component set to None is for text-only or encoder-only use)."
            )
        if foveal_scale < 0 or peripheral_scale < 0:
            raise ValueError(
                f"Stream scales must be >= 0 (0 turns a stream off); got {foveal_scale}, {peripheral_scale}."
            )
        unknown = [s for s in drop_streams if s not in STREAMS]
        if isinstance(drop_streams, str) or unknown:
            raise ValueError(f"drop_streams must be a list of stream names from {list(STREAMS)}, got {drop_streams!r}.")
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("Pass prompt or prompt_embeds, not both.")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Pass negative_prompt or negative_prompt_embeds, not both.")
        if callback_on_step_end_tensor_inputs is not None:
            bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            if bad:
                raise ValueError(
                    f"callback_on_step_end_tensor_inputs may name only {self._callback_tensor_inputs}; got {bad}."
                )
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}.")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}.")
        return guidance_rule(guidance, guidance_scale)

    def prepare_scene(
        self,
        image: ImageInput | Sequence[ImageInput] | None,
        scene: SceneEncoding | None,
        peripheral_blur: float | PeripheralBlur | None,
        fit: FitMode | None,
    ) -> SceneEncoding:
        """The scene encoding to render from: ``scene`` as given, or ``image`` encoded now."""
        if scene is None:
            if image is None:
                raise ValueError("Pass the scene: image=... (encoded now) or scene=pipe.encode_scene(...) (cached).")
            blur = defaults.PERIPHERAL_BLUR if peripheral_blur is None else peripheral_blur
            return self.encode_scene(image, peripheral_blur=blur, fit=fit or "squash")
        if image is not None:
            raise ValueError("Pass either image= or scene=, not both.")
        if peripheral_blur is not None or fit is not None:
            raise ValueError(
                f"peripheral_blur and fit are fixed when a scene is encoded (this one: {scene.blur}); "
                "encode the scene again with pipe.encode_scene(..., peripheral_blur=..., fit=...)."
            )
        return scene

    def foveal_tokens(
        self,
        scene: SceneEncoding,
        masks: torch.Tensor,
        xys: Sequence[np.ndarray],
        scene_index: Sequence[int],
        *,
        foveal_mode: str = "tokens",
        foveal_radius_px: float | None = None,
        foveal_radius_deg: float | None = None,
        pixels_per_degree: float | None = None,
    ) -> torch.Tensor:
        """The foveal stream's encoder tokens, one row per fixation list: ``(F, T, D)``.

        ``"tokens"`` (paper) masks the scene's sharp tokens with ``masks``; ``"crop"`` encodes a view
        with sharp pixels only inside the foveal windows (one extra encoder pass, needs a radius).
        ``scene`` must already be on the execution device in the adapters' dtype.
        """
        idx = torch.tensor(list(scene_index), device=scene.sharp.device)
        if foveal_mode == "tokens":
            sharp = scene.sharp.index_select(0, idx)
        elif foveal_mode == "crop":
            if foveal_radius_px is None and foveal_radius_deg is None:
                raise ValueError("foveal_mode='crop' needs a window radius: foveal_radius_px or foveal_radius_deg.")
            radius = foveal_radius_px if foveal_radius_px is not None else foveal_radius_deg * pixels_per_degree
            sharp = encode_foveal_crops(self.image_encoder, scene, scene_index, xys, radius)
            sharp = sharp.to(device=scene.sharp.device, dtype=scene.sharp.dtype)
        else:
            raise ValueError(f"Unknown foveal_mode {foveal_mode!r}; choose 'tokens' or 'crop'.")
        return mask_tokens(sharp, masks)

    def prepare_conditioning(
        self,
        foveal_tokens: torch.Tensor,
        peripheral_tokens: torch.Tensor,
        *,
        prompt: str | Sequence[str] | None,
        negative_prompt: str | Sequence[str] | None,
        num_images_per_prompt: int,
        active: tuple[bool, bool],
        unconditional: bool,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The UNet's ``encoder_hidden_states``: ``(text, [foveal, peripheral])`` for every image.

        The resamplers run here, once per call rather than once per step. With ``unconditional``
        the batch is ``[unconditional; conditional]``: the unconditional half drops both streams
        the way training drops them (zero tokens into each resampler) and uses ``negative_prompt``
        (or ``negative_prompt_embeds``). Prompts and embeddings are given once for every fixation
        list or once per list (``None``: the empty prompt, the paper's), then repeated
        ``num_images_per_prompt`` times.
        """
        device, unet_dtype = foveal_tokens.device, self.unet.dtype
        k = num_images_per_prompt
        n_lists = foveal_tokens.shape[0]
        n = n_lists * k
        cond = self.adapters.project(foveal_tokens, peripheral_tokens, active=active)
        cond = [t.repeat_interleave(k, dim=0).to(unet_dtype) for t in cond]
        text = self._text_embeds(prompt, prompt_embeds, n_lists, k, device, "prompt")
        if not unconditional:
            return text, cond
        zeros = torch.zeros_like(foveal_tokens[:1])
        uncond = self.adapters.project(zeros, zeros, active=active)
        uncond = [t.to(unet_dtype).expand(n, -1, -1) for t in uncond]
        text_u = self._text_embeds(negative_prompt, negative_prompt_embeds, n_lists, k, device, "negative_prompt")
        if text_u.shape[1:] != text.shape[1:]:
            raise ValueError(
                f"negative_prompt_embeds {tuple(text_u.shape)} and prompt_embeds {tuple(text.shape)} must have the "
                "same tokens and width (they are batched together); encode both with the same text encoder."
            )
        return torch.cat([text_u, text]), [torch.cat([u, c]) for u, c in zip(uncond, cond)]

    def _text_embeds(
        self,
        prompt: str | Sequence[str] | None,
        embeds: torch.Tensor | None,
        n_lists: int,
        k: int,
        device: torch.device,
        what: str,
    ) -> torch.Tensor:
        """``(n_lists * k, L, D)`` text embeddings in the UNet's dtype from a prompt (one for all
        lists or one per list) or precomputed embeddings (one row, or one per list)."""
        n = n_lists * k
        if embeds is None:
            if prompt is None or isinstance(prompt, str):
                return self.encode_prompt([prompt or ""], device).to(self.unet.dtype).expand(n, -1, -1)
            prompts = list(prompt)
            if len(prompts) != n_lists:
                raise ValueError(
                    f"Got {len(prompts)} {what}s for {n_lists} fixation lists: pass one string for all, or one per list."
                )
            return self.encode_prompt(prompts, device).to(self.unet.dtype).repeat_interleave(k, dim=0)
        name = f"{what}_embeds"
        width = self.unet.config.cross_attention_dim
        if embeds.ndim != 3 or embeds.shape[0] not in (1, n_lists) or embeds.shape[-1] != width:
            raise ValueError(
                f"{name} must be (1 or {n_lists} fixation lists, tokens, {width}), got {tuple(embeds.shape)}; "
                "make them with pipe.encode_prompt(...) of this model."
            )
        embeds = embeds.to(device=device, dtype=self.unet.dtype)
        return embeds.expand(n, -1, -1) if embeds.shape[0] == 1 else embeds.repeat_interleave(k, dim=0)

    def prepare_latents(
        self,
        n: int,
        height: int,
        width: int,
        *,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None,
        device: torch.device,
    ) -> torch.Tensor:
        """Initial noise ``(n, C, height / f, width / f)`` for ``n`` images, scaled for the scheduler."""
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ValueError(f"height and width must be multiples of {self.vae_scale_factor}, got {height}x{width}.")
        if isinstance(generator, list) and len(generator) != n:
            raise ValueError(f"Got {len(generator)} generators for {n} images.")
        shape = (n, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}.")
        return latents.to(device=device, dtype=self.unet.dtype) * self.scheduler.init_noise_sigma

    def denoise(
        self,
        latents: torch.Tensor,
        hidden: tuple[torch.Tensor, list[torch.Tensor]],
        rule: GuidanceRule,
        *,
        num_inference_steps: int,
        foveal_scale: float,
        peripheral_scale: float,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        callback_on_step_end: StepEndCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        foveal_region: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The DDIM loop: UNet with the adapters at (λ_f, λ_p), one guidance ``rule`` step per timestep.

        ``hidden`` is :meth:`prepare_conditioning`'s output (doubled when ``rule`` needs the
        unconditional prediction). The loop runs inside :meth:`MetamerGenAdapters.applied`: the
        stream scales, and the UNet's own attention processors if the adapters' had been swapped
        out, are restored afterwards.

        After each step ``callback_on_step_end(self, i, t, callback_kwargs)`` (diffusers' contract)
        gets the tensors named in ``callback_on_step_end_tensor_inputs``: ``latents`` (x_{t-1}, just
        computed), ``prompt_embeds`` and ``negative_prompt_embeds`` (the text of the conditional and
        unconditional halves, ``(N, L, D)``; the latter ``None`` without an unconditional pass),
        ``foveal_embeds`` and ``peripheral_embeds`` (the conditional resampler outputs,
        ``(N, tokens, D)``). It must return a dict; tensors it returns under those names replace the
        loop's (same shapes), from the next step on. Setting ``pipe._interrupt = True`` skips the
        remaining steps.

        ``foveal_region`` (``(N, 1, G, G)``, one row per image, from
        :meth:`MetamerGenAdapters.foveal_region`) is needed by adapters with ``foveal_gate`` only;
        the unconditional half gets an empty region, its fovea being dropped.
        """
        self.scheduler.set_timesteps(num_inference_steps, device=latents.device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        doubled = rule.needs_unconditional
        if foveal_region is not None and doubled:
            foveal_region = torch.cat([torch.zeros_like(foveal_region), foveal_region])
        with (
            self.adapters.applied(self.unet, foveal_scale, peripheral_scale),
            self.adapters.gating(self.unet, foveal_region, tuple(latents.shape[-2:])),
        ):
            for i, t in enumerate(self.progress_bar(timesteps)):
                if self.interrupt:
                    continue
                model_in = torch.cat([latents, latents]) if doubled else latents
                model_in = self.scheduler.scale_model_input(model_in, t)
                eps = self.unet(model_in, t, encoder_hidden_states=hidden).sample
                eps_u, eps_c = eps.chunk(2) if doubled else (None, eps)
                latents = rule.step(self.scheduler, eps_u, eps_c, t, latents, eta=eta, generator=generator)
                if callback_on_step_end is not None:
                    latents, hidden = self._step_end(
                        callback_on_step_end, callback_on_step_end_tensor_inputs, i, t, latents, hidden, doubled
                    )
        return latents

    def _step_end(
        self,
        callback: StepEndCallback,
        names: Sequence[str],
        i: int,
        t: torch.Tensor,
        latents: torch.Tensor,
        hidden: tuple[torch.Tensor, list[torch.Tensor]],
        doubled: bool,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, list[torch.Tensor]]]:
        """Run ``callback`` on the loop state and take back what it returns (see :meth:`denoise`)."""
        n = latents.shape[0]
        text, (fov, per) = hidden
        cond = slice(n, None) if doubled else slice(None)
        state = {
            "latents": latents,
            "prompt_embeds": text[cond],
            "negative_prompt_embeds": text[:n] if doubled else None,
            "foveal_embeds": fov[cond],
            "peripheral_embeds": per[cond],
        }
        out = callback(self, i, t, {k: state[k] for k in names})
        if not isinstance(out, dict):
            raise TypeError(
                f"callback_on_step_end must return a dict (the callback_kwargs it was given, possibly changed); "
                f"got {type(out).__name__}."
            )
        for key, value in out.items():
            if key in state and state[key] is not None and value is not None and value.shape != state[key].shape:
                raise ValueError(
                    f"callback_on_step_end returned {key} of shape {tuple(value.shape)}; it must keep "
                    f"{tuple(state[key].shape)}."
                )
        latents = out.get("latents", latents)
        if not any(k in out for k in ("prompt_embeds", "negative_prompt_embeds", "foveal_embeds", "peripheral_embeds")):
            return latents, hidden
        new = {k: (state[k] if out.get(k) is None else out[k].to(text.dtype)) for k in state if k != "latents"}
        if not doubled:
            return latents, (new["prompt_embeds"], [new["foveal_embeds"], new["peripheral_embeds"]])
        return latents, (
            torch.cat([new["negative_prompt_embeds"], new["prompt_embeds"]]),
            [torch.cat([fov[:n], new["foveal_embeds"]]), torch.cat([per[:n], new["peripheral_embeds"]])],
        )

    def decode_latents(self, latents: torch.Tensor, output_type: str) -> Any:
        """Latents to images of ``output_type`` (``"latent"`` returns them as they are)."""
        if output_type == "latent":
            return latents
        decoded = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return self.image_processor.postprocess(decoded, output_type=output_type)

    # ------------------------------------------------------------------ rendering

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput | Sequence[ImageInput] | None = None,
        fixations: FixationInput | Sequence[FixationInput] = None,
        *,
        scene: SceneEncoding | None = None,
        prompt: str | Sequence[str] | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = defaults.NUM_INFERENCE_STEPS,
        guidance: GuidanceMethod | GuidanceRule = defaults.GUIDANCE,
        guidance_scale: float | None = None,
        foveal_scale: float = defaults.FOVEAL_SCALE,
        peripheral_scale: float = defaults.PERIPHERAL_SCALE,
        drop_streams: Sequence[str] = (),
        peripheral_blur: float | PeripheralBlur | None = None,
        fit: FitMode | None = None,
        foveal_mode: str = "tokens",
        foveal_radius_px: float | None = None,
        foveal_radius_deg: float | None = None,
        pixels_per_degree: float | None = None,
        off_image: OffImagePolicy = "drop",
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepEndCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> MetamerGenPipelineOutput | tuple:
        """Render scene hypotheses from fixation lists.

        The call runs the named steps in order, each overridable in a subclass:
        :meth:`check_inputs`, :meth:`prepare_scene`, :meth:`foveal_masks`, :meth:`foveal_tokens`,
        :meth:`prepare_conditioning`, :meth:`prepare_latents`, :meth:`denoise`, :meth:`decode_latents`.

        Parameters
        ----------
        image
            The scene(s), when no cached ``scene`` is given: PIL, ``(H, W, 3)`` uint8 array or
            ``(3, H, W)`` tensor in [0, 1], or a list of them.
        fixations
            One fixation list or a list of them. A list is a :class:`~metamergen.fixations.Scanpath`
            (its width/height must equal the scene's), an ``(N, 2)`` array / nested list of ``(x, y)``
            in pixels of the scene image, or ``None``/empty (no foveal information: peripheral only).
            With one scene every list refers to it; otherwise give one list per scene.
        scene
            A cached :meth:`encode_scene` result; reusing it costs no encoder pass.
        prompt, negative_prompt
            Text for the (frozen) text branch of the conditional and the unconditional half: one
            string for every fixation list or one per list. ``None`` (default) is the empty prompt,
            the paper's choice for both.
        prompt_embeds, negative_prompt_embeds
            Precomputed text embeddings instead of ``prompt`` / ``negative_prompt`` (e.g. from
            :meth:`encode_prompt`; then no text encoder is needed): ``(1, L, D)`` for every list or
            ``(lists, L, D)``, ``D`` the UNet's cross-attention width.
        num_images_per_prompt
            Hypotheses per fixation list.
        num_inference_steps
            DDIM steps (50 in the paper).
        guidance, guidance_scale
            ``"cfg++"`` (default, the paper's sampler): ``guidance_scale`` is CFG++'s λ in [0, 1],
            default 0.6 (about as strong as CFG 7.5). ``"cfg"``: Stable Diffusion's classifier-free
            guidance, ``guidance_scale`` w >= 0, default 7.5 (1 disables the unconditional pass), so
            SD code's ``guidance_scale=7.5`` becomes ``guidance="cfg", guidance_scale=7.5``. Or a
            :class:`~metamergen.pipeline.guidance.GuidanceRule` instance. The unconditional branch
            drops both adapter streams the way training does (zero tokens into each resampler)
            and uses ``negative_prompt``.
        foveal_scale, peripheral_scale
            λ_f and λ_p (paper: 1.2 and 0.7). 0 switches a stream off (the processor skips it), a
            state training never produced; ``drop_streams`` is training's way of removing one.
        drop_streams
            Streams whose condition is dropped as training drops it: zero tokens through that
            stream's resampler, the stream staying on at its scale (``["foveal"]``: peripheral only;
            ``["peripheral"]``: foveal only). A dropped fovea is what an empty fixation list gives;
            the returned ``foveal_masks`` are then empty.
        peripheral_blur, fit
            Encoding options when ``image`` is given (default 0.25 and ``"squash"``; see
            :meth:`encode_scene`). With ``scene=`` they were fixed at encoding time: passing them is an error.
        foveal_mode
            ``"tokens"`` (paper: mask the sharp tokens) or ``"crop"`` (encode a view with sharp pixels
            only inside the foveal windows; one extra encoder pass per call, needs a radius).
        foveal_radius_px, foveal_radius_deg, pixels_per_degree
            Optional foveal radius (image pixels, or degrees with the display's pixels per degree).
            Without one, each fixation keeps its single patch (paper).
        off_image
            Policy for fixations outside the image: ``"drop"`` (warns with the count), ``"clip"``, ``"error"``.
        height, width
            Output size in pixels (multiples of the VAE factor). Default: the scene's aspect ratio
            at the UNet's native area (512 x 512 for SD1.5 square scenes).
        generator
            A generator, or one per output image for per-image reproducibility (the same seed then
            gives the same image whatever the batch).
        latents
            Optional initial noise ``(N, 4, height / 8, width / 8)``.
        eta
            DDIM eta for ``guidance="cfg"`` (CFG++ is deterministic, eta = 0).
        output_type
            ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
        return_dict
            False returns ``(images, foveal_masks)``.
        callback_on_step_end, callback_on_step_end_tensor_inputs
            diffusers' step-end callback ``f(pipe, step_index, timestep, callback_kwargs) -> dict``
            (or a :class:`~diffusers.callbacks.PipelineCallback`), called after every denoising step
            with the tensors named in ``callback_on_step_end_tensor_inputs`` (a subset of
            ``pipe._callback_tensor_inputs``; default ``["latents"]``). Tensors it returns replace
            the loop's; ``pipe._interrupt = True`` stops the loop early. See :meth:`denoise`.

        Returns
        -------
        MetamerGenPipelineOutput or tuple
            The images and the foveal masks.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        rule = self.check_inputs(
            foveal_scale=foveal_scale,
            peripheral_scale=peripheral_scale,
            guidance=guidance,
            guidance_scale=guidance_scale,
            num_images_per_prompt=num_images_per_prompt,
            num_inference_steps=num_inference_steps,
            prompt=prompt,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            drop_streams=drop_streams,
            output_type=output_type,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        self._guidance_rule = rule
        self._interrupt = False
        scene = self.prepare_scene(image, scene, peripheral_blur, fit)
        device = self._execution_device

        masks, xys, scene_index = self.foveal_masks(
            scene,
            fixations,
            foveal_radius_px=foveal_radius_px,
            foveal_radius_deg=foveal_radius_deg,
            pixels_per_degree=pixels_per_degree,
            off_image=off_image,
        )
        scene_on_device = scene.to(device=device, dtype=self.adapters.dtype)
        foveal = self.foveal_tokens(
            scene_on_device,
            masks,
            xys,
            scene_index,
            foveal_mode=foveal_mode,
            foveal_radius_px=foveal_radius_px,
            foveal_radius_deg=foveal_radius_deg,
            pixels_per_degree=pixels_per_degree,
        )
        peripheral = scene_on_device.peripheral.index_select(0, torch.tensor(scene_index, device=device))
        if "foveal" in drop_streams:  # training's dropout: zero tokens, the stream stays on
            foveal, masks = torch.zeros_like(foveal), torch.zeros_like(masks)
        if "peripheral" in drop_streams:
            peripheral = torch.zeros_like(peripheral)
        hidden = self.prepare_conditioning(
            foveal,
            peripheral,
            prompt=prompt,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            num_images_per_prompt=num_images_per_prompt,
            active=(bool(foveal_scale), bool(peripheral_scale)),
            unconditional=rule.needs_unconditional,
        )

        n = len(scene_index) * num_images_per_prompt
        if height is None or width is None:
            h0, w0 = self._default_size([scene.frames[i] for i in scene_index])
            height, width = height or h0, width or w0
        latents = self.prepare_latents(n, height, width, generator=generator, latents=latents, device=device)
        region = self.adapters.foveal_region(foveal)  # None unless the adapters gate the fovea
        if region is not None:
            region = region.repeat_interleave(num_images_per_prompt, dim=0)
        latents = self.denoise(
            latents,
            hidden,
            rule,
            num_inference_steps=num_inference_steps,
            foveal_scale=foveal_scale,
            peripheral_scale=peripheral_scale,
            eta=eta,
            generator=generator,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            foveal_region=region,
        )
        images = self.decode_latents(latents, output_type)
        self.maybe_free_model_hooks()
        out_masks = masks.repeat_interleave(num_images_per_prompt, dim=0)
        if not return_dict:
            return images, out_masks
        return MetamerGenPipelineOutput(images=images, foveal_masks=out_masks)

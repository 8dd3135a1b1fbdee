"""What every extractor does, whatever its backbone: images -> VAE latent -> noise at timestep
t -> one recorded pass of the denoising network -> features.

:class:`BaseFeatureExtractor` holds the steps that do not depend on the network (the VAE
encode and decode, the noise, prompts, ``vae-out``, the call); each backbone's extractor
(:class:`diffeat.FeatureExtractor` for U-Nets, :class:`diffeat.DiTFeatureExtractor` for
PixArt transformers) builds the network's catalogue, loads its components
(:mod:`diffeat.backbones`) and runs its pass (``_run_models``).

Besides the network's catalogue the extractor returns ``vae-out``: the clean latent the image
encodes to, exactly what is then noised (the posterior sample, or its mean with
``latent="mean"``, shifted by the VAE's ``shift_factor`` and multiplied by its
``scaling_factor``). With ``latents=`` given to a call, ``vae-out`` is those latents.
With ``faithful=True`` it is the official code's ``vae-out`` instead: the latents after one
scheduler step of the extraction pass, divided by ``scaling_factor`` and decoded by the VAE,
raw (a (B, 3, H, W) image, roughly in [-1, 1], not clipped).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from common_kernels.runtime.errors import InvalidValue, shown
from common_kernels.runtime.quiet import quiet_loading
from diffeat.backbones import Backbone
from diffeat.catalogue import LayerInfo, LayerSpec, check_names
from diffeat.checks import VAE_SPEC
from diffeat.features import Features
from diffeat.inversion import check_inversion, ddim_invert
from diffeat.io import check_pixel_tensor, parse_size, to_pixel_batch
from diffeat.loading import LOAD_KEYS
from diffeat.offload import ModelOffload
from diffeat.plan import (
    ExtractorConfig,
    LoadPlan,
    adapterless_config,
    check_from_pretrained,
    names_or_all,
)
from diffeat.presets import ALL, default_preset, get_preset
from diffeat.prompts import PromptEmbeddings
from diffeat.schedule import NoisePlan, noisy_latents, official_step, plan_noise

VAE_OUT = VAE_SPEC.name


def check_text_stack(tokenizers: Any, text_encoders: Any, arguments: str) -> None:
    """Tokenizers and text encoders come together (prompts are encoded) or not at all.

    Args:
        tokenizers: the tokenizer(s) given, or None.
        text_encoders: the text encoder(s) given, or None.
        arguments: how the constructor names them (``"tokenizer/text_encoder"``).
    """
    if (tokenizers is None) != (text_encoders is None):
        raise ValueError(
            f"{arguments}: give both (prompts are encoded) or neither (calls pass precomputed "
            "embeddings=)"
        )


class BaseFeatureExtractor(abc.ABC):
    """The steps of an extraction shared by every backbone (see the module).

    A subclass sets :attr:`backbone`, builds ``unet`` (the denoising network: a U-Net or a
    transformer), ``vae``, ``scheduler``, ``prompt_encoder`` and ``catalogue``, then calls
    :meth:`_configure`; it implements ``_text_width`` and ``_run_models``; a network with
    LoRA/ControlNet support also ``_from_components``, ``load_lora`` and ``set_controlnet``.
    """

    backbone: ClassVar[Backbone]
    # from_pretrained/from_plan of this class load any backbone (the U-Net extractor's do)
    picks_backbone: ClassVar[bool] = False
    # the extractor of each backbone (by name): the first subclass that names it
    extractors: ClassVar[dict[str, type[BaseFeatureExtractor]]] = {}
    unet: nn.Module
    controlnet: nn.Module | None = None
    control_scale: float = 1.0
    control_image: Any = None
    prompt_encoder: Any = None
    _text_time: bool = False
    _offload: ModelOffload | None = None  # set with config.offload="model" (see to())

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        backbone = getattr(cls, "backbone", None)  # None: a shared base of extractors
        if backbone is not None:
            BaseFeatureExtractor.extractors.setdefault(backbone.name, cls)

    def _configure(self, config: ExtractorConfig | None) -> None:
        """Set ``config`` (None: the paper's preset for the network's family), its layers
        checked against :attr:`activations`, and the noise plan."""
        if config is None:
            preset = default_preset(self.unet.config)
            config = ExtractorConfig(layers=get_preset(preset).layers, preset=preset)
        self._all_layers = config.layers == (ALL,)
        config = replace(config, layers=self.expand_all(config.layers))
        check_names(config.layers, self.activations)
        self.config = config
        self.plan: NoisePlan = plan_noise(
            self.scheduler, config.timestep, config.faithful, config.sigma
        )
        if config.noising == "ddim-inversion":
            check_inversion(
                self.scheduler, config.timestep, config.inversion_steps, config.faithful
            )
        if config.offload is not None:  # execution device: where the network is now
            self.to(next(self.unet.parameters()).device)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model_id_or_dir: str | Path,
        layers: Sequence[str] | str | None = None,
        preset: str | None = None,
        timestep: int = 50,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str = "cpu",
        text_stack: bool = True,
        **options,
    ) -> BaseFeatureExtractor:
        """Load a diffusers repository (hub id or local folder) as an extractor, the backbone
        picked from the network its ``model_index.json`` names.

        A U-Net folder needs ``unet/``, ``vae/``, ``scheduler/``, ``text_encoder/`` +
        ``tokenizer/`` and, for SDXL-style models, ``text_encoder_2/`` + ``tokenizer_2/``; a
        PixArt folder ``transformer/`` in place of ``unet/`` and a T5 ``text_encoder/`` (the
        real PixArt tokenizer needs ``diffeat[t5]``). The text stack is not read with
        ``text_stack=False``. :meth:`diffeat.FeatureExtractor.from_pretrained` loads either
        (a PixArt model gives a :class:`diffeat.DiTFeatureExtractor`); a backbone's own class
        loads its own kind only.

        Args:
            model_id_or_dir: e.g. ``stabilityai/stable-diffusion-xl-base-1.0`` or a folder.
            layers: activation names, ``"all"`` or a preset name; None with no preset: the
                paper's selection for the model's family (``ours-v1.5``, ``ours-xl``,
                ``diffeat-pixart-sigma``).
            preset: a name from :data:`diffeat.PRESETS`.
            timestep: diffusion timestep (paper: 50).
            dtype: ``torch.float32`` / ``float16`` / ``bfloat16``, or ``"fp32"`` / ``"fp16"`` /
                ``"bf16"``.
            device: where the models run.
            text_stack: load the tokenizers and text encoders; False gives an extractor that
                takes precomputed ``embeddings=`` only (saves their memory).
            **options: other :class:`ExtractorConfig` fields (``latent``, ``faithful``,
                ``early_exit``, ``image_size``, ``seed``, ``output_device``, ``requires_grad``;
                without ``image_size``, a preset given by name, ``preset=`` or
                ``layers=PRESET``, resizes every image to its resolution, e.g. 1024 x 1024);
                U-Nets: ``controlnet`` (a hub id, folder or ``ControlNetModel``),
                ``control_scale`` and ``control_image`` (the default conditioning image);
                ``lora`` (a file, folder, hub id or state dict, or a list of them),
                ``lora_scale`` and ``fuse_lora`` (see :meth:`FeatureExtractor.load_lora`);
                DiTs: ``max_sequence_length`` (T5 tokens per prompt, default 300); loading
                options passed to every ``from_pretrained`` (``revision``, ``variant``,
                ``cache_dir``, ``local_files_only``, ``token``).
        """
        plan = check_from_pretrained(
            model_id_or_dir, layers, preset, timestep, dtype, device, text_stack, **options
        )
        return cls.from_plan(plan)

    @classmethod
    def from_plan(cls, plan: LoadPlan, control_image=None) -> BaseFeatureExtractor:
        """Load the extractor of a :func:`~diffeat.plan.check_from_pretrained` plan: its checks
        are not run again (the config files are not read twice).

        Args:
            plan: the checked model and options.
            control_image: the default conditioning image, in place of the plan's (a caller
                that checked a file reads it now).
        """
        target = BaseFeatureExtractor.extractors[plan.backbone.name]
        if issubclass(cls, target):
            target = cls  # a subclass loads as itself
        elif not cls.picks_backbone:
            raise InvalidValue(
                "model_id_or_dir",
                f"{shown('model_id_or_dir', plan.source)} has no {cls.backbone.subfolder}/"
                f"config.json, so it is no {cls.backbone.title} folder; it holds a "
                f"{plan.backbone.title}: use {target.__name__}.from_pretrained",
            )
        options = dict(plan.options)
        if control_image is not None:
            options["control_image"] = control_image
        load = {k: options.pop(k) for k in LOAD_KEYS if k in options}
        if plan.size_from in ("preset", "layers"):
            options["image_size"] = plan.size  # the preset's resolution
        with quiet_loading():
            components = plan.backbone.load(str(plan.source), plan.dtype, plan.text_stack, **load)
        return target._from_components(plan, components, options).to(plan.device)

    @classmethod
    def _from_components(
        cls, plan: LoadPlan, components: dict[str, Any], options: dict[str, Any]
    ) -> BaseFeatureExtractor:
        """The extractor of loaded ``components`` and the plan's remaining ``options``; here,
        of a network without LoRA/ControlNet support (the adapter options, checked to be unset,
        left out)."""
        return cls(config=adapterless_config(plan, options), **components)

    def load_lora(self, source, *args, **kwargs) -> str:
        """Refused: LoRA loading is the U-Net extractor's (:class:`diffeat.FeatureExtractor`)."""
        title = self.backbone.title
        raise ValueError(f"lora: LoRA loading is supported for U-Nets only, not {title}")

    def set_controlnet(self, controlnet, scale: float = 1.0, image=None) -> None:
        """Refused but for None: ControlNets are the U-Net extractor's."""
        if controlnet is not None:
            raise ValueError(
                f"controlnet: ControlNets are supported for U-Nets only, not {self.backbone.title}"
            )

    def layer_infos(
        self, image_size: int | tuple[int, int] | None = None, text_tokens: int | None = None
    ) -> list[LayerInfo]:
        """``vae-out`` and the network's catalogue with feature shapes (shape-only ``meta``
        pass).

        Args:
            image_size: input size in pixels; default: ``config.image_size``, else the native
                size (``sample_size * vae_scale``).
            text_tokens: prompt length; default: the extractor's.
        """
        scale = self.vae_scale
        size = parse_size(image_size) or self.config.image_size
        size = size or self.backbone.native_size(self.unet.config, scale)
        tokens = text_tokens or self.text_tokens
        infos = self.backbone.layer_infos(self.unet.config, size, tokens, scale)
        return [LayerInfo(VAE_SPEC, self.vae_out_shape(size)), *infos]

    @abc.abstractmethod
    def _text_width(self) -> tuple[int, str]:
        """The width this network's prompt embeddings have, and where it comes from (for the
        messages: ``"the U-Net's cross_attention_dim"``)."""

    def _check_embeddings(self, embeddings: PromptEmbeddings) -> None:
        """Refuse ``embeddings`` that are not this network's: the type, an empty tensor, a
        shape other than (B, L, :meth:`_text_width`), a mask other than (B, L)."""
        if not isinstance(embeddings, PromptEmbeddings):
            raise TypeError(
                f"embeddings: expected PromptEmbeddings; got {type(embeddings).__name__}"
            )
        width, source = self._text_width()
        embeds = embeddings.embeds
        if embeds.numel() == 0:
            raise ValueError(f"embeddings: empty tensor {tuple(embeds.shape)}")
        if embeds.ndim != 3 or embeds.shape[-1] != width:
            raise ValueError(
                f"embeddings: embeds must be (B, L, {width}) ({source}); got {tuple(embeds.shape)}"
            )
        mask = embeddings.mask
        if mask is not None and tuple(mask.shape) != tuple(embeds.shape[:2]):
            raise ValueError(
                f"embeddings: mask must be (B, L) = {tuple(embeds.shape[:2])}; got "
                f"{tuple(mask.shape)}"
            )

    @abc.abstractmethod
    def _run_models(
        self, sample, embeddings, image_size, names, original_size, target_size, full_output,
        control,
    ) -> tuple[Features, Tensor | None]:  # fmt: skip
        """Run the networks on ``sample`` and capture the layers ``names``: the features and,
        with ``full_output``, the network output."""

    # -- properties --------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> BaseFeatureExtractor:
        """Move every model to ``device`` (in place; IF has no VAE); returns self. With
        ``config.offload="model"``, ``device`` becomes the execution device and every model
        moves to the CPU instead (each goes to ``device`` only for its stage)."""
        everything = (self.unet, self.vae, *self.text_encoders, self.controlnet)
        modules = [module for module in everything if module is not None]
        if self.config.offload is not None:
            self._offload = ModelOffload(torch.device(device))
            self._offload.park(modules)
            return self
        for module in modules:
            module.to(device)
        return self

    def _stage(self, *modules: nn.Module | None) -> contextlib.AbstractContextManager:
        """With offload, ``modules`` on the execution device for the block; else nothing."""
        if self._offload is None:
            return contextlib.nullcontext()
        return self._offload.stage(*modules)

    @property
    def layers(self) -> tuple[str, ...]:
        return self.config.layers

    @property
    def activations(self) -> list[LayerSpec]:
        """Every name this extractor returns: ``vae-out``, the U-Net catalogue, then the
        ControlNet's (``control-...``, when one is set)."""
        return [VAE_SPEC, *self.catalogue, *self.control_catalogue]

    @property
    def text_encoders(self) -> list[nn.Module]:
        """The text encoders ([] for an extractor without a text stack)."""
        return [] if self.prompt_encoder is None else list(self.prompt_encoder.text_encoders)

    @property
    def device(self) -> torch.device:
        """Where the models run (with offload: the execution device, not the weights')."""
        if self._offload is not None:
            return self._offload.execution_device
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def latent_channels(self) -> int:
        """Channels of the clean latents the network is fed (its ``in_channels``)."""
        return int(self.unet.config.in_channels)

    @property
    def vae_scale(self) -> int:
        """Pixels per latent cell (8 for the SD VAEs)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Image height and width must be multiples of this (VAE x the network's
        downsampling: a U-Net's down blocks, a DiT's patch size)."""
        return self.backbone.size_multiple(self.unet.config, self.vae_scale)

    def vae_out_shape(self, image_size: tuple[int, int]) -> tuple[int, int, int]:
        """(C, h, w) of ``vae-out`` for (H, W) images: the latent, or with ``faithful=True``
        the decoded image (``out_channels`` of the VAE, H, W)."""
        if self.config.faithful:
            return (self.vae.config.out_channels, *image_size)
        scale = self.vae_scale
        return (self.vae.config.latent_channels, image_size[0] // scale, image_size[1] // scale)

    # -- pipeline steps ----------------------------------------------------------------------
    def preprocess(self, images) -> Tensor:
        """Images -> (B, 3, H, W) fp32 pixels in [0, 1] on the model device, size-checked."""
        pixels = to_pixel_batch(images, self.config.image_size)
        height, width = pixels.shape[-2:]
        multiple = self.size_multiple
        if height % multiple or width % multiple:
            raise ValueError(
                f"images: height and width must be multiples of {multiple} for this model "
                f"({self.backbone.factors(self.unet.config, self.vae_scale)}); got "
                f"{height}x{width}; pass image_size=(H, W) to resize"
            )
        return pixels.to(self.device)

    def _vae_dtype(self) -> torch.dtype:
        dtype = self.dtype
        if dtype == torch.float16 and self.vae.config.get("force_upcast", False):
            return torch.float32
        return dtype

    @torch.no_grad()
    def encode_images(self, pixels: Tensor, generator: torch.Generator) -> Tensor:
        """(B, 3, H, W) pixels in [0, 1] -> scaled fp32 latents (B, 4, H/8, W/8) (``vae-out``).

        ``(posterior sample or mean - shift_factor) * scaling_factor``; the sample draws from
        ``generator`` (the mean draws nothing).
        """
        check_pixel_tensor(pixels, "pixels")
        vae_dtype = self._vae_dtype()
        if next(self.vae.parameters()).dtype != vae_dtype:
            self.vae.to(vae_dtype)
        with self._stage(self.vae):
            posterior = self.vae.encode((pixels * 2 - 1).to(vae_dtype)).latent_dist
        latents = posterior.sample(generator) if self.config.latent == "sample" else posterior.mean
        shift = self.vae.config.get("shift_factor") or 0.0
        return (latents.float() - shift) * self.vae.config.scaling_factor

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Scaled latents (B, C, h, w) -> the VAE's raw decoding (B, 3, H, W) (not clipped).

        ``vae.decode(latents / scaling_factor + shift_factor)``, as the diffusers pipelines
        decode (SD/SDXL VAEs have no shift factor).
        """
        vae_dtype = self._vae_dtype()
        if next(self.vae.parameters()).dtype != vae_dtype:
            self.vae.to(vae_dtype)
        shift = self.vae.config.get("shift_factor") or 0.0
        latents = latents.float() / self.vae.config.scaling_factor + shift
        with torch.set_grad_enabled(self.config.requires_grad), self._stage(self.vae):
            return self.vae.decode(latents.to(vae_dtype), return_dict=False)[0]

    def official_vae_out(self, latents: Tensor, noise: Tensor, model_output: Tensor) -> Tensor:
        """The official ``vae-out``: ``latents`` noised as planned (faithful), one scheduler
        step with the U-Net's ``model_output``, then :meth:`decode_latents` (B, 3, H, W)."""
        stepped = official_step(self.scheduler, self.plan, latents, noise, model_output)
        return self.decode_latents(stepped)

    def check_latents(self, latents) -> Tensor:
        """Clean VAE latents (B, C, h, w) for a call, checked; fp32 on the model device."""
        if not isinstance(latents, Tensor):
            raise TypeError(
                f"latents: expected a (B, C, h, w) tensor; got {type(latents).__name__}"
            )
        channels = self.latent_channels
        if latents.numel() == 0:
            raise ValueError(f"latents: empty tensor {tuple(latents.shape)}")
        if latents.ndim != 4 or latents.shape[1] != channels:
            raise ValueError(
                f"latents: expected a (B, {channels}, h, w) tensor (the {self.backbone.title}'s "
                f"{'in_channels' if self.backbone.name != 'flux' else 'latent channels'}); "
                f"got {tuple(latents.shape)}"
            )
        if not latents.is_floating_point():
            raise ValueError(f"latents: tensors must be float; got {latents.dtype}")
        bad = int((~torch.isfinite(latents)).sum())
        if bad:
            raise ValueError(f"latents: values must be finite; got {bad} NaN/Inf value(s)")
        height, width = latents.shape[-2:]
        multiple = self.size_multiple // self.vae_scale
        if height % multiple or width % multiple:
            raise ValueError(
                f"latents: height and width must be multiples of {multiple} for this "
                f"{self.backbone.title} (x{multiple} downsampling); got {height}x{width}"
            )
        return latents.to(self.device, torch.float32)

    def encode_prompts(self, prompts: str | Sequence[str]) -> PromptEmbeddings:
        """Prompt embeddings (computed once per distinct prompt and cached)."""
        if self.prompt_encoder is None:
            raise ValueError(
                "prompts: this extractor has no tokenizers/text encoders (built with None); "
                "pass precomputed embeddings=PromptEmbeddings(...)"
            )
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if self.prompt_encoder.cached(prompts):  # no encoder runs: none moves (offload)
            return self.prompt_encoder(prompts)
        with self._stage(*self.text_encoders):
            return self.prompt_encoder(prompts)

    def sample_noise(self, latents: Tensor, generator: torch.Generator) -> Tensor:
        """Standard-normal fp32 noise shaped like ``latents``, drawn from ``generator``."""
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(latents.shape, generator=generator, device=latents.device)

    def unet_input(self, latents: Tensor, noise: Tensor) -> Tensor:
        """The U-Net input at the configured timestep (fp32)."""
        return noisy_latents(self.scheduler, self.plan, latents, noise)

    def forward_unet(
        self,
        sample: Tensor,
        embeddings: PromptEmbeddings,
        image_size: tuple[int, int],
        layers: Sequence[str] | str | None = None,
        *,
        original_size: int | tuple[int, int] | None = None,
        target_size: int | tuple[int, int] | None = None,
        control: Tensor | None = None,
    ) -> Features:
        """One U-Net pass on ``sample`` (B, 4, h, w) recording U-Net (and ControlNet)
        activations; gradients only with ``config.requires_grad``.

        Args:
            sample: the (noised) latent.
            embeddings: prompt embeddings (batch 1 or B).
            image_size: (H, W) in pixels (SDXL-style size conditioning).
            layers: U-Net names to record, ``"all"`` (the U-Net catalogue) or a preset name
                (default: the configured names, without ``vae-out``).
            original_size: SDXL-style ``original_size`` (H, W) conditioning (default:
                ``image_size``); crop coordinates are always (0, 0).
            target_size: SDXL-style ``target_size`` (H, W) conditioning (default:
                ``image_size``).
            control: the ControlNet's conditioning image (B or 1, 3, H, W) in [0, 1] (an
                extractor with a ControlNet needs it; see :meth:`control_pixels`).
        """
        if sample.numel() == 0:
            raise ValueError(f"sample: empty tensor {tuple(sample.shape)}")
        if layers is None:
            names = [n for n in self.layers if n != VAE_OUT]
            if not names:
                raise ValueError(
                    f"layers: the configured layers hold only {VAE_OUT!r}, which no U-Net pass "
                    "records; call the extractor or pass layers=[...]"
                )
        else:
            selection = names_or_all(layers)
            names = [s.name for s in self.catalogue] if selection == (ALL,) else list(selection)
            if VAE_OUT in names:
                raise ValueError(
                    f"layers: {VAE_OUT!r} is the VAE latent, not a U-Net activation; it is "
                    "returned by extractor(...) (or computed by encode_images)"
                )
        if control is not None:
            control = self.control_pixels(control, tuple(image_size), sample.shape[0])
        features, _ = self._run_unet(
            sample, embeddings, image_size, names, original_size, target_size, control=control
        )
        return features

    def control_pixels(self, control_image, image_size: tuple[int, int], batch: int) -> Tensor:
        """The ControlNet's conditioning images as (B, 3, H, W) in [0, 1] on the model device.

        Args:
            control_image: a PIL image, a list of them or a (B, 3, H, W) tensor in [0, 1]; one
                image for the batch or one per image; resized to ``image_size`` (bicubic,
                antialiased, as images are) when its size differs.
            image_size: (H, W) of the images fed to the VAE.
            batch: the batch size.
        """
        if self.controlnet is None:
            raise ValueError(
                "control_image: this extractor has no ControlNet (pass controlnet= or call "
                "set_controlnet first)"
            )
        try:
            pixels = to_pixel_batch(control_image, tuple(image_size))
        except (TypeError, ValueError) as error:
            raise type(error)(f"control_image: {error}") from None
        if pixels.shape[0] not in (1, batch):
            raise ValueError(f"control_image: {pixels.shape[0]} images for a batch of {batch}")
        return pixels.expand(batch, -1, -1, -1).to(self.device)

    def _run_unet(
        self,
        sample: Tensor,
        embeddings: PromptEmbeddings,
        image_size: tuple[int, int],
        names: Sequence[str],
        original_size=None,
        target_size=None,
        full_output: bool = False,
        control: Tensor | None = None,
    ) -> tuple[Features, Tensor | None]:
        """One ControlNet + U-Net pass recording ``names`` (may be empty); with ``full_output``
        the pass is never cut short and the U-Net output is returned too (else None)."""
        if self.controlnet is not None and control is None and self.control_image is not None:
            control = self.control_pixels(self.control_image, tuple(image_size), sample.shape[0])
        if self.controlnet is not None and control is None:
            raise ValueError(
                "control_image: this extractor has a ControlNet; pass control_image=... (the "
                "conditioning image)"
            )
        with torch.set_grad_enabled(self.config.requires_grad), self._network_stage():
            return self._run_models(
                sample, embeddings, image_size, names, original_size, target_size, full_output,
                control,
            )  # fmt: skip

    def _network_stage(self) -> contextlib.AbstractContextManager:
        """The network's (and ControlNet's) offload stage."""
        return self._stage(self.unet, self.controlnet)

    def _size_conditioning(self, original_size, target_size):
        """Parsed (H, W) sizes; SD-style U-Nets (no size conditioning) refuse them."""
        original_size = parse_size(original_size, "original_size")
        target_size = parse_size(target_size, "target_size")
        if not self._text_time:
            for argument, value in (("original_size", original_size), ("target_size", target_size)):
                if value is not None:
                    raise ValueError(
                        f"{argument}: only SDXL-style U-Nets (text_time conditioning) take size "
                        "conditioning; this U-Net has none"
                    )
        return original_size, target_size

    def expand_all(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """``names``, with ``("all",)`` replaced by ``vae-out`` and every catalogue name."""
        return tuple(s.name for s in self.activations) if names == (ALL,) else names

    def generator(self) -> torch.Generator:
        """A CPU generator seeded with ``config.seed`` (used when a call passes none)."""
        return torch.Generator(device="cpu").manual_seed(self.config.seed)

    def __call__(
        self,
        images=None,
        prompts: str | Sequence[str] = "",
        generator: torch.Generator | None = None,
        *,
        latents: Tensor | None = None,
        embeddings: PromptEmbeddings | None = None,
        layers: Sequence[str] | str | None = None,
        original_size: int | tuple[int, int] | None = None,
        target_size: int | tuple[int, int] | None = None,
        control_image=None,
    ) -> Features:
        """Features of a batch of images, or of their clean VAE latents.

        Args:
            images: PIL image, list of PIL images, or float tensor (B, 3, H, W) in [0, 1]
                (finite); None when ``latents`` are given.
            prompts: one prompt for all images or one per image (ignored with ``embeddings``).
            generator: draws the VAE posterior sample (``latent="sample"``, images only) and
                then the noise; None uses a fresh generator seeded with ``config.seed``.
            latents: clean, scaled VAE latents (B, C, h, w) instead of images (what
                :meth:`encode_images` returns): the VAE encode is skipped, everything after it
                is identical (``vae-out`` returns them; ``config.image_size`` does not apply).
                With ``latent="sample"``, pass the generator in the state the encode left it
                to reproduce an image call exactly.
            embeddings: precomputed :class:`PromptEmbeddings` (batch 1 or B).
            layers: record these names, ``"all"`` or a preset name instead of the configured
                ones (this call only).
            original_size: SDXL-style U-Nets only: the ``original_size`` (H, W) conditioning.
                Default: the image size fed to the VAE, or with ``latents`` the latent size x
                ``vae_scale`` (e.g. 128 x 128 latents -> 1024 x 1024).
            target_size: SDXL-style U-Nets only: the ``target_size`` (H, W); same default.
            control_image: the ControlNet's conditioning image(s) (an extractor with a
                ControlNet needs them; see :meth:`control_pixels`).

        Returns:
            :class:`~diffeat.Features`: ``{name: (B, C, h, w)}`` in the requested order, with
            the attention head counts in ``.heads``.
        """
        if layers is None:
            names = self.layers
        else:
            names = self.expand_all(names_or_all(layers))
            check_names(names, self.activations)
        if (images is None) == (latents is None):
            raise ValueError("images/latents: pass images or latents=..., exactly one of them")
        original_size, target_size = self._size_conditioning(original_size, target_size)
        unet_names = [n for n in names if n != VAE_OUT]
        official = VAE_OUT in names and self.config.faithful  # needs the U-Net's output
        if latents is None:
            pixels = self.preprocess(images)
            batch, what = pixels.shape[0], "images"
            size = tuple(pixels.shape[-2:])
        else:
            latents = self.check_latents(latents)
            batch, what = latents.shape[0], "latents"
            size = tuple(v * self.vae_scale for v in latents.shape[-2:])
        control = None
        if control_image is None and self.controlnet is not None:
            control_image = self.control_image
        if control_image is not None or (self.controlnet is not None and (unet_names or official)):
            if control_image is None:
                raise ValueError(
                    "control_image: this extractor has a ControlNet; pass control_image=... "
                    "(the conditioning image)"
                )
            control = self.control_pixels(control_image, size, batch)
        if embeddings is None and (unet_names or official):
            prompts = [prompts] * batch if isinstance(prompts, str) else list(prompts)
            if len(prompts) != batch:
                raise ValueError(f"prompts: {len(prompts)} prompts for {batch} {what}")
            embeddings = self.encode_prompts(prompts)
        generator = generator if generator is not None else self.generator()
        if latents is None:
            latents = self.encode_images(pixels, generator)
        recorded = Features()
        if unet_names or official:
            noise = self.sample_noise(latents, generator)
            with self._network_stage():  # one offload stage for the inversion and the pass
                if self.config.noising == "ddim-inversion":  # deterministic: noise unused
                    sample = ddim_invert(
                        self, latents, embeddings, size, original_size, target_size, control
                    )
                else:
                    sample = self.unet_input(latents, noise)
                recorded, output = self._run_unet(
                    sample, embeddings, size, unet_names, original_size, target_size, official,
                    control,
                )  # fmt: skip
        if official:
            with torch.set_grad_enabled(self.config.requires_grad):
                out = self.official_vae_out(latents, noise, output)  # (B, 3, H, W), raw
            if self.config.output_device is not None:
                out = out.to(self.config.output_device)
            recorded[VAE_OUT] = out
        elif VAE_OUT in names:
            out = latents.to(self.dtype, copy=True)  # (B, C, h, w), never the caller's tensor
            if self.config.output_device is not None:
                out = out.to(self.config.output_device)
            recorded[VAE_OUT] = out
        return Features({n: recorded[n] for n in names}, recorded.heads)
